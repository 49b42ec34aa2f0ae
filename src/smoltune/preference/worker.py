"""The preference process: `python -m smoltune.preference.worker SPEC.json` (phase 'reference' or 'train'; `-`:
the path comes on stdin later, smoltune.train.prestart).

Prints one `SMOLTUNE_STEP {json}` line per logged step, like the SFT worker (smoltune.train.worker), whose
parent side (`smoltune.train.runner.run_worker`) relays them and turns a failure into one error.
"""

from __future__ import annotations

import faulthandler
import json
import sys

from smoltune.train.worker import print_step, run_reporting, spec_path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m smoltune.preference.worker SPEC.json", file=sys.stderr)
        return 2
    faulthandler.enable()
    from smoltune.preference.spec import PreferenceSpec
    from smoltune.preference.train import load_libraries, score_reference, train_preference

    if (spec_file := spec_path(args[0], load_libraries)) is None:
        return 0
    spec = PreferenceSpec(**json.loads(spec_file.read_text()))

    if spec.phase == "reference":
        return run_reporting(lambda: score_reference(spec))
    return run_reporting(lambda: train_preference(spec, print_step))


if __name__ == "__main__":
    sys.exit(main())
