"""The machine's matmul peak with torch's threads, per precision: the denominators of MFU.

    python bench/matmul_peak.py            # prints GFLOP/s as JSON
    python bench/matmul_peak.py --budget-s 10

Square GEMMs of a few sizes in fp32 and bf16 (on the GPU when there is one); the best sustained rate (median of
repeats) counts as that precision's peak. `peak_gflops` stays the fp32 peak (the earlier denominator).

Bounded on every machine: a precision a CPU only emulates (bf16 without AVX512-BF16 or AMX units runs about 30x
slower than fp32) would take many minutes at the largest size. So a small probe GEMM estimates each size's time
first, and a size whose repeats would not fit the precision's time budget is skipped, said so in the output.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

SIZES = (1024, 2048, 3072)
GPU_SIZES = (4096, 8192)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PROBE_SIZE = 256
REPEATS = 7
WARMUPS = 2
BUDGET_S = 30.0  # per precision
# A small GEMM runs faster per FLOP than a large one where a precision is emulated: estimates get this margin.
MARGIN = 2.0


def sizes_within(probe_gflops: float, sizes: tuple[int, ...], budget_s: float) -> tuple[list[int], dict[int, float]]:
    """(sizes to time, {skipped size: estimated seconds}): each size's warm-ups and repeats estimated at the
    probe's rate, taken smallest first while their sum fits `budget_s`. Pure: the rule is tested directly."""
    run, skipped, spent = [], {}, 0.0
    for size in sorted(sizes):
        seconds = MARGIN * (WARMUPS + REPEATS) * 2 * size**3 / (probe_gflops * 1e9)
        if spent + seconds <= budget_s:
            run.append(size)
            spent += seconds
        else:
            skipped[size] = round(seconds, 1)
    return run, skipped


def gemm_gflops(size: int, dtype: torch.dtype, device: str = "cpu", repeats: int = REPEATS) -> float:
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(WARMUPS):  # warm up threads and caches
        a @ b
    timings = []
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        a @ b
        sync()
        timings.append(time.perf_counter() - started)
    return 2 * size**3 / statistics.median(timings) / 1e9


def measure(dtype: torch.dtype, device: str, sizes: tuple[int, ...], budget_s: float) -> tuple[dict, dict]:
    """({size: GFLOP/s}, {skipped size: estimated s}) of one precision within its budget; the probe's own rate
    stands when no listed size fits."""
    probe = gemm_gflops(PROBE_SIZE, dtype, device, repeats=3)
    run, skipped = sizes_within(probe, sizes, budget_s)
    rates = {n: round(gemm_gflops(n, dtype, device), 1) for n in run}
    return rates or {PROBE_SIZE: round(probe, 1)}, skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="seconds per precision, at most")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sizes = GPU_SIZES if device == "cuda" else SIZES
    rates, skipped = {}, {}
    for name, dtype in DTYPES.items():
        rates[name], skipped[name] = measure(dtype, device, sizes, args.budget_s)
    peaks = {name: max(by_size.values()) for name, by_size in rates.items()}
    report = {
        "device": device,
        "threads": torch.get_num_threads(),
        "gflops_by_size": rates,
        "skipped_sizes_estimated_s": {name: s for name, s in skipped.items() if s},
        "budget_s_per_precision": args.budget_s,
        "peaks": peaks,
        "peak_gflops": peaks["fp32"],
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
