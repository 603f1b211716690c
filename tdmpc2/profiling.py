"""Measuring the agent for the benchmark scripts: the machine, FLOPs of a call, timings, step floors."""
from __future__ import annotations

import os
import statistics
import time
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from tdmpc2 import precision

#: The CPU flags that decide how fast bf16 runs.
BF16_FLAGS = ("avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def machine_summary() -> str:
    """Return one line naming the CPU, its bf16-related flags, the torch version and the load average."""
    flags = precision.cpu_flags()
    present = ", ".join(f for f in BF16_FLAGS if f in flags) or "none of " + ", ".join(BF16_FLAGS)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"CPU: {precision.cpu_model()} ({os.cpu_count()} CPUs; bf16 flags: {present}); torch {torch.__version__}; "
            f"load average {load:.2f}")


def count_flops(fn: Callable[[], object]) -> int:
    """Return the floating-point operations of matrix products and convolutions in one call of ``fn``
    (forward and, if ``fn`` runs it, backward), as ``torch.utils.flop_counter`` counts them."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_rates(dtypes: dict[str, torch.dtype], size: tuple[int, int, int] = (1024, 512, 512)) -> dict[str, float]:
    """Return ``{name: GFLOP/s}`` of an ``(m, k) @ (k, n)`` product on the CPU for each dtype, at the current threads."""
    return {name: precision.matmul_gflops(dtype, size, repeats=21) for name, dtype in dtypes.items()}


def interleaved_median_ms(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Return ``{name: median wall-clock ms}`` of each ``fns[name]()``, the calls alternating between the names
    so that every function sees the same machine load."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t)
    return {name: 1000 * statistics.median(ts) for name, ts in times.items()}


def first_call_s(fn: Callable[[], object]) -> float:
    """Return the seconds one call of ``fn`` takes (the compilation, for a compiled agent)."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
