"""What each switch buys: smoltune's training stage on the seed job with every switch on, then with each one off in
turn (`train.speed` and `train.precision=fp32` against `auto`), and with all off (TRL's padded batches, fp32).

    make bench-ablation                 # = python bench/ablation.py (about 6 minutes on 2 cores)
    python bench/ablation.py --steps 5 --out runs/bench/ablation.json

Each run is its own process, one after the other; the losses show that no switch changes what is learned.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import run

from smoltune.config import SpeedConfig

SWITCHES = tuple(SpeedConfig.switches())


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per run (default 10)")
    parser.add_argument("--model", default="embedded", help="model.source: 'embedded' or a local model folder")
    parser.add_argument("--out", default="runs/bench/ablation.json", help="where the figures go (JSON)")
    return parser.parse_args()


def variants() -> list[tuple[str, tuple[str, ...]]]:
    """(label, train overrides): everything on, each switch off alone, everything off."""
    table = [("all switches on (default)", ())]
    table += [(f"{switch} off", (f"speed.{switch}=false",)) for switch in SWITCHES]
    table.append(("precision fp32 (not auto)", ("precision=fp32",)))
    table.append(("all switches off", (*(f"speed.{switch}=false" for switch in SWITCHES), "precision=fp32")))
    return table


def markdown(results: list[dict], header: str) -> str:
    reference = results[0]["tokens_per_second"]
    lines = [header, "", "| run | precision | real tokens/s | vs default | peak RSS | final loss |"]
    lines.append("|---|---|---|---|---|---|")
    for r in results:
        lines.append(
            f"| {r['label']} | {r['precision']} | {r['tokens_per_second']:.1f} | "
            f"{r['tokens_per_second'] / reference:.2f}x | {r['peak_rss_mb']:,.0f} MiB | {r['losses'][-1]:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    from smoltune.model import resolve_model

    out = Path(args.out)
    work = out.parent / (out.stem + "-work")
    work.mkdir(parents=True, exist_ok=True)
    model = resolve_model(args.model).path
    rows = run.prepare_rows("seed", 100, work)
    results = []
    for index, (label, overrides) in enumerate(variants()):
        print(f"--- {label}", flush=True)
        figures = run.run_contender("smoltune", model, rows, args.steps, work, overrides, tag=f"-{index}")
        results.append({"label": label, "overrides": list(overrides), **figures})
    header = f"{dt.date.today().isoformat()}, {run.verdicts.machine_label()}, seed job, {args.steps} steps per run"
    out.write_text(json.dumps({"header": header, "runs": results}, indent=2))
    print(markdown(results, header))
    print(f"figures written to {out}")


if __name__ == "__main__":
    main()
