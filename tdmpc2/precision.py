"""Numeric precision of a run: which work runs in bfloat16 and what always stays float32.

``precision=fp32`` runs everything in float32. ``precision=bf16`` runs the
agent's forward passes (the model losses, the policy objective, MPPI and the
policy prior acting) under ``torch.autocast`` with bfloat16, so matrix products
and convolutions take bfloat16 operands and accumulate in float32, while:

* weights, gradients, optimiser state and loss values stay float32 (autocast
  casts a weight once per region and the gradient flows back to the float32
  parameter);
* the numerically delicate functions run in float32 whatever they are given:
  they are marked with :func:`fp32`, which upcasts their bfloat16/float16
  inputs. They are two-hot encoding and its inverse, the soft cross-entropy and
  its log-softmax, symlog/symexp, the policy's log-std, Gaussian log-density
  and tanh squash (``log(1 - tanh(u)^2)`` rounds ``tanh(u)`` to exactly 1 in
  bfloat16 for ``|u|`` above ~3.5), and the LayerNorm + Mish / SimNorm blocks
  (``tdmpc2.kernels``: statistics, softmax and activation in float32);
* everything computed from those stays float32 by type promotion: the TD
  target, the running Q scale, MPPI's values, softmax weights and elite
  statistics.

``precision=auto`` (:func:`choose`) picks bfloat16 where the device multiplies
bfloat16 matrices natively and faster: a CUDA device with bfloat16 support, an
x86 CPU with AMX, or another CPU where a start-up measurement shows bfloat16
matrix products at least :data:`MIN_SPEEDUP` times faster than float32; else
float32. The reason for the choice is printed at start.
"""
from __future__ import annotations

import contextlib
import functools
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

#: The allowed values of ``precision``.
CHOICES = ("auto", "fp32", "bf16")
#: ``auto`` takes bfloat16 on a CPU without AMX only if its matrix products measure at least this much faster.
MIN_SPEEDUP = 1.3
#: The dtype of matrix products for each explicit precision name.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_LOW = (torch.bfloat16, torch.float16)


def _upcast(x):
    return x.float() if isinstance(x, torch.Tensor) and x.dtype in _LOW else x


def fp32(fn: Callable) -> Callable:
    """Return ``fn`` computing in float32: its bfloat16/float16 tensor arguments are upcast first.

    For elementwise work and reductions (no matrix products), whose float32
    inputs autocast leaves in float32; outputs are float32.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*(_upcast(a) for a in args), **{k: _upcast(v) for k, v in kwargs.items()})

    return wrapper


@dataclass(frozen=True)
class Precision:
    """The precision a run computes in: ``name`` is ``fp32`` or ``bf16``, on ``device_type`` (cpu, cuda)."""

    name: str = "fp32"
    device_type: str = "cpu"

    def __post_init__(self):
        if self.name not in DTYPES:
            raise ValueError(f"precision={self.name!r}; allowed values: {', '.join(DTYPES)} (auto is resolved at start)")

    @property
    def dtype(self) -> torch.dtype:
        """Return the dtype of matrix products: float32 or bfloat16."""
        return DTYPES[self.name]

    def region(self):
        """Return a context manager under which forward passes compute in this precision."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def wrap(self, fn: Callable) -> Callable:
        """Return ``fn`` run inside :meth:`region` (``fn`` itself for fp32), ready for ``torch.compile``."""
        if self.name == "fp32":
            return fn

        @functools.wraps(fn)
        def in_region(*args, **kwargs):
            with torch.autocast(self.device_type, dtype=self.dtype):
                return fn(*args, **kwargs)

        return in_region


# -- choosing ---------------------------------------------------------------------
def cpu_flags() -> set[str]:
    """Return the CPU feature flags of this machine (``/proc/cpuinfo``; empty where it does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model() -> str:
    """Return the CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def matmul_gflops(dtype: torch.dtype, size: tuple[int, int, int] = (256, 512, 512), repeats: int = 15,
                  device: str = "cpu") -> float:
    """Return the median GFLOP/s of an ``(m, k) @ (k, n)`` matrix product in ``dtype`` on ``device``."""
    m, k, n = size
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return 2 * m * k * n / statistics.median(times) / 1e9


@functools.lru_cache(maxsize=None)
def _cpu_choice() -> tuple[str, str]:
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "bf16", "the CPU has AMX (amx_bf16)"
    fp = matmul_gflops(torch.float32)
    bf = matmul_gflops(torch.bfloat16)
    isa = "avx512_bf16" if "avx512_bf16" in flags else "no AMX or avx512_bf16"
    measured = f"a 256x512x512 matmul measured {bf:.0f} GFLOP/s in bf16 against {fp:.0f} in fp32 ({isa})"
    if bf >= MIN_SPEEDUP * fp:
        return "bf16", measured
    return "fp32", f"{measured}, under the {MIN_SPEEDUP}x that bf16 must gain"


def choose(requested: str, device: torch.device) -> tuple[str, str]:
    """Return ``(precision, reason)``: ``requested`` resolved on ``device`` (see the module docstring for auto)."""
    if requested not in CHOICES:
        raise ValueError(f"precision={requested!r}; allowed values: {', '.join(CHOICES)}")
    if requested != "auto":
        return requested, "set in the config"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", f"{torch.cuda.get_device_name(device)} has bf16 tensor cores"
        return "fp32", f"{torch.cuda.get_device_name(device)} has no native bf16"
    if device.type == "cpu":
        return _cpu_choice()
    return "fp32", f"no bf16 choice is made for device type {device.type}"
