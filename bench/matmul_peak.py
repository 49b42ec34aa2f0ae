"""The machine's fp32 matmul peak with torch's threads, the denominator of MFU.

    python bench/matmul_peak.py            # prints GFLOP/s as JSON

Square fp32 GEMMs of a few sizes; the best sustained rate (median of repeats) counts as the peak.
"""

from __future__ import annotations

import json
import statistics
import time

import torch

SIZES = (1024, 2048, 3072)


def gemm_gflops(size: int, repeats: int = 7) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):  # warm up threads and caches
        a @ b
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        timings.append(time.perf_counter() - started)
    return 2 * size**3 / statistics.median(timings) / 1e9


def main() -> None:
    rates = {size: round(gemm_gflops(size), 1) for size in SIZES}
    print(json.dumps({"threads": torch.get_num_threads(), "gflops_by_size": rates, "peak_gflops": max(rates.values())}))


if __name__ == "__main__":
    main()
