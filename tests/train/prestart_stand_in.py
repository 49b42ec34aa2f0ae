"""A stand-in for a training worker, named as one (it trains nothing): it waits for its spec as a prestarted
worker does (smoltune.train.worker.spec_path), then reports its process id and spec path as one step line."""

from __future__ import annotations

import json
import os
import sys
import time

from smoltune.train.worker import STEP_PREFIX, spec_path

if __name__ == "__main__":

    def load() -> None:
        """Its "imports": they set a variable of their own (as scikit-learn's set KMP_DUPLICATE_LIB_OK) and,
        when asked, write more warnings than a pipe holds (64 KiB)."""
        os.environ.setdefault("STAND_IN_IMPORTED", "1")
        time.sleep(float(os.environ.get("STAND_IN_IMPORT_SECONDS", "0")))
        for _ in range(int(os.environ.get("STAND_IN_WARNINGS", "0"))):
            print("warning: " + "x" * 1000, file=sys.stderr)

    spec = spec_path(sys.argv[1], load)
    if spec is not None:
        print(STEP_PREFIX + json.dumps({"pid": os.getpid(), "spec": str(spec)}), flush=True)
    sys.exit(0)
