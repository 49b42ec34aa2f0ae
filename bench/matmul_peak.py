"""The machine's matmul peak with torch's threads, per precision: the denominators of MFU.

    python bench/matmul_peak.py            # prints GFLOP/s as JSON

Square GEMMs of a few sizes in fp32 and bf16 (on the GPU when there is one); the best sustained rate (median of
repeats) counts as that precision's peak. `peak_gflops` stays the fp32 peak (the earlier denominator).
"""

from __future__ import annotations

import json
import statistics
import time

import torch

SIZES = (1024, 2048, 3072)
GPU_SIZES = (4096, 8192)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def gemm_gflops(size: int, dtype: torch.dtype, device: str = "cpu", repeats: int = 7) -> float:
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(2):  # warm up threads and caches
        a @ b
    timings = []
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        a @ b
        sync()
        timings.append(time.perf_counter() - started)
    return 2 * size**3 / statistics.median(timings) / 1e9


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sizes = GPU_SIZES if device == "cuda" else SIZES
    rates = {name: {n: round(gemm_gflops(n, dtype, device), 1) for n in sizes} for name, dtype in DTYPES.items()}
    peaks = {name: max(by_size.values()) for name, by_size in rates.items()}
    print(
        json.dumps(
            {
                "device": device,
                "threads": torch.get_num_threads(),
                "gflops_by_size": rates,
                "peaks": peaks,
                "peak_gflops": peaks["fp32"],
            }
        )
    )


if __name__ == "__main__":
    main()
