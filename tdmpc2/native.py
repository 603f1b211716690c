"""Native CPU kernels (``tdmpc2/csrc``), compiled on first use with the machine's C++ compiler.

:func:`available` builds them and says whether the fused LayerNorm + affine +
Mish and LayerNorm + affine + SimNorm kernels (``torch.ops.tdmpc2_native``:
``norm_mish*``, ``norm_simnorm*``) can be used; when they cannot be built (no
compiler, no ninja, a CPU without AVX2) callers use the ``torch.compile``
kernels instead. The build takes about 10 s once per machine and instruction
set; ``torch.utils.cpp_extension`` caches it (``$TORCH_EXTENSIONS_DIR``, by
default ``~/.cache/torch_extensions``) and serialises concurrent builds with a
lock file. ``TDMPC2_NATIVE=0`` disables the native kernels.
"""
from __future__ import annotations

import os
import platform
import warnings
from pathlib import Path

import torch

_SOURCE = Path(__file__).with_name("csrc") / "fused_norm.cpp"
#: Compiler flags per ATen CPU capability: the binary only uses instructions the running CPU has.
_ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512vl", "-mavx512dq", "-mavx512bw", "-mavx2", "-mfma"],
    "AVX2": ["-mavx2", "-mfma"],
}
_state: dict = {}


def _build() -> bool:
    capability = torch.backends.cpu.get_cpu_capability()
    if platform.machine() not in ("x86_64", "AMD64") or capability not in _ISA_FLAGS:
        return False
    try:
        import ninja  # the pip package puts a ninja binary beside itself; make sure the build finds it

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    except ImportError:
        pass
    from torch.utils.cpp_extension import load

    load(
        name=f"tdmpc2_native_{capability.lower()}",
        sources=[str(_SOURCE)],
        extra_cflags=["-O3", "-fopenmp-simd", "-fno-trapping-math", *_ISA_FLAGS[capability]],
        is_python_module=False,
        verbose=False,
    )
    _register_fake_kernels()
    _register_autograd()
    return True


def _register_fake_kernels() -> None:
    """Tell ``torch.compile`` the output shapes, so compiled code can call the kernels."""

    @torch.library.register_fake("tdmpc2_native::norm_mish")
    def _(x, weight, bias, eps):
        return torch.empty_like(x)

    @torch.library.register_fake("tdmpc2_native::norm_mish_train")
    def _(x, weight, bias, eps):
        return torch.empty_like(x), torch.empty_like(x), x.new_empty((x.shape[0], x.shape[1], 2))

    @torch.library.register_fake("tdmpc2_native::norm_mish_backward")
    def _(grad, derivative, x, stats, weight, param_grads):
        return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(weight)

    @torch.library.register_fake("tdmpc2_native::norm_simnorm")
    def _(x, weight, bias, eps, group):
        return torch.empty_like(x)

    @torch.library.register_fake("tdmpc2_native::norm_simnorm_train")
    def _(x, weight, bias, eps, group):
        return torch.empty_like(x), torch.empty_like(x), x.new_empty((x.shape[0], 1))

    @torch.library.register_fake("tdmpc2_native::norm_simnorm_backward")
    def _(grad, y, xhat, rstd, weight, group, param_grads):
        return torch.empty_like(xhat), torch.empty_like(weight), torch.empty_like(weight)


def _register_autograd() -> None:
    """Make ``norm_mish_train`` and ``norm_simnorm_train`` differentiable (through their first output),
    in eager code and in compiled code alike; the backward kernels need the saved outputs."""
    ops = torch.ops.tdmpc2_native

    def save_norm_mish(ctx, inputs, output):
        _, derivative, stats = output
        ctx.save_for_backward(derivative, inputs[0], stats, inputs[1])

    def norm_mish_backward(ctx, grad, *_):
        derivative, x, stats, weight = ctx.saved_tensors
        param_grads = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        grad_x, grad_w, grad_b = ops.norm_mish_backward(grad.contiguous(), derivative, x, stats, weight, param_grads)
        return grad_x, grad_w if param_grads else None, grad_b if param_grads else None, None

    def save_norm_simnorm(ctx, inputs, output):
        y, xhat, rstd = output
        ctx.group = inputs[4]
        ctx.save_for_backward(y, xhat, rstd, inputs[1])

    def norm_simnorm_backward(ctx, grad, *_):
        y, xhat, rstd, weight = ctx.saved_tensors
        param_grads = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        grad_x, grad_w, grad_b = ops.norm_simnorm_backward(grad.contiguous(), y, xhat, rstd, weight, ctx.group, param_grads)
        return grad_x, grad_w if param_grads else None, grad_b if param_grads else None, None, None

    torch.library.register_autograd("tdmpc2_native::norm_mish_train", norm_mish_backward, setup_context=save_norm_mish)
    torch.library.register_autograd("tdmpc2_native::norm_simnorm_train", norm_simnorm_backward,
                                    setup_context=save_norm_simnorm)


@torch.compiler.assume_constant_result
def available() -> bool:
    """Return whether the native kernels are loaded, building them on the first call.

    A failed build warns once, naming the error; the answer is remembered for
    the process (and is a constant to ``torch.compile``).
    """
    if "available" not in _state:
        _state["available"] = False
        if os.environ.get("TDMPC2_NATIVE", "1") != "0":
            try:
                _state["available"] = _build()
            except Exception as err:  # any build failure means: use the compiled kernels instead
                warnings.warn(f"the native CPU kernels could not be built ({type(err).__name__}: {str(err)[:300]}); "
                              "using the torch.compile kernels", RuntimeWarning, stacklevel=2)
    return _state["available"]
