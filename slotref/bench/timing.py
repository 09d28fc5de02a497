"""Timing helpers of every benchmark: best wall time, the matmul peak, peak memory."""

from __future__ import annotations

import resource
import time

import numpy as np

from slotref.backend import host_rng


def sync(xp) -> None:
    """Wait for the device (CuPy's null stream); nothing on NumPy."""
    if xp is not np:
        xp.cuda.Stream.null.synchronize()


def best_seconds(fn, xp, repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call."""
    fn()
    sync(xp)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(xp)
        best = min(best, time.perf_counter() - t0)
    return best


def best_seconds_of_ranks(fn, xp, repeats: int, w) -> float:
    """Best over ``repeats`` of the slowest rank's wall time, the ranks starting together (a barrier)."""
    fn()
    sync(xp)
    times = []
    for _ in range(repeats):
        w.barrier()
        t0 = time.perf_counter()
        fn()
        sync(xp)
        times.append(time.perf_counter() - t0)
    return min(max(column) for column in zip(*w.allgather(times)))


def matmul_peak(be, n: int = 2048, repeats: int = 5) -> float:
    """Measured float32 matrix-multiply throughput in GFLOP/s."""
    a = be.asarray(host_rng(0).standard_normal((n, n)), dtype=np.float32)
    b = be.asarray(host_rng(1).standard_normal((n, n)), dtype=np.float32)
    return 2 * n ** 3 / best_seconds(lambda: a @ b, be.xp, repeats) / 1e9


def peak_memory_gb(be) -> float:
    """Peak resident memory of this process (CPU) or of CuPy's pool (GPU), in GB."""
    if be.xp is np:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux
    return be.xp.get_default_memory_pool().total_bytes() / 1e9


def blas_threads() -> int | None:
    """Threads of the BLAS libraries NumPy loaded (None without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return sum(p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas") or None
