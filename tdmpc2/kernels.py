"""Fast elementwise pieces of the world model: LayerNorm + Mish, SimNorm's grouped softmax, sparse dropout.

Each computes what its plain PyTorch counterpart computes, up to float32
rounding; they exist because the plain versions dominate CPU time once the
matrix products are as fast as they go.

* :func:`norm_mish` (``Mish(LayerNorm(x) * w + b)``, the hidden block of every
  MLP and of the Q ensemble) and :func:`mish` run plain PyTorch ops, or, with
  ``compiled=True``, fused kernels: Mish as ``x * n / (n + 2)`` with
  ``n = e^x (e^x + 2)`` (a single ``exp``), fused with the LayerNorm; the
  forward kernel also writes the derivative, so the backward kernel needs no
  ``exp``. On CPU the fused LayerNorm + Mish is the native C++ kernel of
  :mod:`tdmpc2.native` (one pass per row, measured 1.2-2x faster than the
  generated code and with far less call overhead); elsewhere, or if it cannot
  be built, ``torch.compile``-d kernels with dynamic sizes, compiled on first
  use (once per process and shape rank; inductor caches them on disk). If
  compiling fails, a warning is printed and the same formulas run eagerly.
* :func:`simnorm` is ``softmax`` over consecutive groups of features, written
  out because ATen's softmax over a last dim of 8 is slow on CPU;
  :func:`norm_simnorm` fuses it with the LayerNorm before it (native on CPU).
* :func:`dropout` draws only the dropped positions when the rate is small.
* :class:`CompileWithFallback` is ``torch.compile`` that falls back to eager
  code when compiling fails (used for the kernels and by ``TDMPC2.compile``).

The normalisation blocks compute in float32 whatever precision their input
comes in (:func:`tdmpc2.precision.fp32`): under bfloat16 autocast the matrix
product before them is bfloat16, their statistics, softmax and activation are
not, and the native kernels serve both precisions.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable

import torch
import torch.nn.functional as F

from tdmpc2 import native
from tdmpc2.precision import fp32

#: Above this input Mish is the identity in float32; clamping keeps exp finite.
_MISH_CLAMP = 20.0
#: Dropout rates up to this draw the dropped positions only; above it a full mask is cheaper.
_SPARSE_DROPOUT_MAX_RATE = 0.1


def _mish_forward(x: torch.Tensor) -> torch.Tensor:
    e = torch.exp(torch.clamp(x, max=_MISH_CLAMP))
    n = e * (e + 2)
    return x * n / (n + 2)


def _mish_and_derivative(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # d/dx x tanh(softplus(x)) = n / d + 4 x e (e + 1) / d^2 with d = n + 2; one division for both.
    e = torch.exp(torch.clamp(x, max=_MISH_CLAMP))
    n = e * (e + 2)
    d = n + 2
    r = 1 / d
    return x * n * r, (n * d + 4 * x * e * (e + 1)) * (r * r)


class CompileWithFallback:
    """``fn`` compiled with ``torch.compile(fn, **options)``; if compiling fails, a warning and ``fn`` eagerly from then on.

    Only compiler failures fall back; errors raised by ``fn`` itself propagate.
    """

    def __init__(self, fn: Callable, **options):
        self.fn = fn
        self.name = getattr(fn, "__qualname__", repr(fn))
        self._options = options
        self._compiled: Callable | None = None
        self._failed = False

    def __call__(self, *args, **kwargs):
        if self._failed:
            return self.fn(*args, **kwargs)
        if self._compiled is None:  # created on first use: importing the compiler is slow
            self._compiled = torch.compile(self.fn, **self._options)
        try:
            return self._compiled(*args, **kwargs)
        except torch._dynamo.exc.TorchDynamoException as err:
            self._failed = True
            warnings.warn(f"torch.compile of {self.name} failed ({type(err).__name__}: {str(err)[:300]}); "
                          "running it eagerly", RuntimeWarning, stacklevel=2)
            return self.fn(*args, **kwargs)

    @property
    def failed(self) -> bool:
        """Return whether compiling failed, so that the eager function runs."""
        return self._failed


_MISH_FORWARD = CompileWithFallback(_mish_forward, dynamic=True, fullgraph=True)
_MISH_AND_DERIVATIVE = CompileWithFallback(_mish_and_derivative, dynamic=True, fullgraph=True)


def _flat(x: torch.Tensor) -> torch.Tensor:
    # A 1-D, non-view, grad-free alias: one compiled graph then serves every shape.
    return x.contiguous().view(-1).detach()


class _CompiledMish(torch.autograd.Function):
    """Mish whose forward kernel also writes the derivative, so the backward pass is one product."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y, derivative = _MISH_AND_DERIVATIVE(_flat(x))
        ctx.save_for_backward(derivative.view(x.shape))
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (derivative,) = ctx.saved_tensors
        return grad * derivative


@fp32
def mish(x: torch.Tensor, compiled: bool = False) -> torch.Tensor:
    """Return Mish(x) = x * tanh(softplus(x)); ``compiled`` uses the compiled single-exp kernels."""
    if compiled and x.dtype == torch.float32:
        if torch.compiler.is_compiling():
            return _mish_forward(x)  # inside a compiled region: the compiler fuses and differentiates it
        if torch.is_grad_enabled() and x.requires_grad:
            return _CompiledMish.apply(x)
        return _MISH_FORWARD(_flat(x)).view(x.shape)
    return F.mish(x)


def _normalize(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x.mean(-1, keepdim=True)
    centred = x - mean
    rstd = torch.rsqrt((centred * centred).mean(-1, keepdim=True) + eps)
    return centred * rstd, rstd


def _norm_mish(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    xhat, _ = _normalize(x, eps)
    return _mish_forward(xhat * weight + bias)


def _norm_mish_train(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float):
    xhat, rstd = _normalize(x, eps)
    y, derivative = _mish_and_derivative(xhat * weight + bias)
    return y, derivative, xhat, rstd


def _norm_mish_backward_input(grad, derivative, xhat, rstd, weight):
    # LayerNorm backward: rstd * (g - mean(g) - xhat * mean(g * xhat)) with g the gradient at xhat.
    grad_pre = grad * derivative
    grad_xhat = grad_pre * weight
    centred = grad_xhat - grad_xhat.mean(-1, keepdim=True)
    return rstd * (centred - xhat * (grad_xhat * xhat).mean(-1, keepdim=True)), grad_pre


def _norm_mish_input_gradient(grad, derivative, xhat, rstd, weight):
    return _norm_mish_backward_input(grad, derivative, xhat, rstd, weight)[0]


def _norm_mish_backward(grad, derivative, xhat, rstd, weight):
    grad_x, grad_pre = _norm_mish_backward_input(grad, derivative, xhat, rstd, weight)
    return grad_x, (grad_pre * xhat).sum(-2, keepdim=True), grad_pre.sum(-2, keepdim=True)


_NORM_MISH = CompileWithFallback(_norm_mish, dynamic=True, fullgraph=True)
_NORM_MISH_TRAIN = CompileWithFallback(_norm_mish_train, dynamic=True, fullgraph=True)
_NORM_MISH_BACKWARD = CompileWithFallback(_norm_mish_backward, dynamic=True, fullgraph=True)
_NORM_MISH_BACKWARD_INPUT = CompileWithFallback(_norm_mish_input_gradient, dynamic=True, fullgraph=True)


class _CompiledNormMish(torch.autograd.Function):
    """LayerNorm, affine and Mish in one compiled forward and one backward kernel over ``(G, M, H)`` inputs."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
        y, derivative, xhat, rstd = _NORM_MISH_TRAIN(x.detach(), weight.detach(), bias.detach(), eps)
        ctx.save_for_backward(derivative, xhat, rstd, weight.detach())
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        derivative, xhat, rstd, weight = ctx.saved_tensors
        grad = grad.contiguous()
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            grad_x, grad_w, grad_b = _NORM_MISH_BACKWARD(grad, derivative, xhat, rstd, weight)
            return grad_x, grad_w, grad_b, None
        return _NORM_MISH_BACKWARD_INPUT(grad, derivative, xhat, rstd, weight), None, None, None


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


@fp32
def norm_mish(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5,
              compiled: bool = False) -> torch.Tensor:
    """Return ``Mish(LayerNorm(x) * weight + bias)`` (LayerNorm over the last dim, without its own affine).

    ``x`` is ``(..., H)`` with ``weight``/``bias`` of shape ``(H,)``, or an
    ensemble ``(E, B, H)`` with per-member ``(E, 1, H)``. ``compiled`` runs
    one fused kernel forward and one backward: the native kernels on CPU
    (``tdmpc2.native``, in eager and compiled code), else ``torch.compile``-d ones.
    """
    if not compiled or x.dtype != torch.float32:
        if weight.dim() == 1:
            return mish(F.layer_norm(x, x.shape[-1:], weight, bias, eps), compiled)
        return mish(torch.addcmul(bias, F.layer_norm(x, x.shape[-1:], eps=eps), weight), compiled)
    shape = x.shape
    if weight.dim() == 1:
        weight, bias = weight.view(1, 1, -1), bias.view(1, 1, -1)
    x3 = x.reshape(weight.shape[0], -1, shape[-1]).contiguous()
    if x.device.type == "cpu" and native.available():
        weight, bias = weight.contiguous(), bias.contiguous()
        if _needs_grad(x, weight, bias):
            return torch.ops.tdmpc2_native.norm_mish_train(x3, weight, bias, eps)[0].view(shape)
        return torch.ops.tdmpc2_native.norm_mish(x3, weight, bias, eps).view(shape)
    if torch.compiler.is_compiling():
        return _norm_mish(x3, weight, bias, eps).view(shape)  # the compiler fuses and differentiates it
    if _needs_grad(x, weight, bias):
        return _CompiledNormMish.apply(x3, weight, bias, eps).view(shape)
    return _NORM_MISH(x3.detach(), weight.detach(), bias.detach(), eps).view(shape)


class _GroupSoftmax(torch.autograd.Function):
    """Softmax over the last dim of a ``(..., group)`` tensor with cheap reductions for small groups."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        e = (x - x.amax(-1, keepdim=True)).exp_()
        y = e.div_(e.sum(-1, keepdim=True))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return (grad - (grad * y).sum(-1, keepdim=True)).mul_(y)


@fp32
def simnorm(x: torch.Tensor, group: int) -> torch.Tensor:
    """Return ``x`` with a softmax applied inside each consecutive group of ``group`` features."""
    shape = x.shape
    return _GroupSoftmax.apply(x.reshape(*shape[:-1], -1, group)).reshape(shape)


@fp32
def norm_simnorm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, group: int,
                 fused: bool = False) -> torch.Tensor:
    """Return ``SimNorm(LayerNorm(x) * weight + bias)`` over the last dim, with softmax groups of ``group``.

    ``fused`` runs the native CPU kernel (float32, :mod:`tdmpc2.native`) when
    it is available; otherwise LayerNorm then :func:`simnorm`.
    """
    if fused and x.dtype == torch.float32 and x.device.type == "cpu" and native.available():
        shape = x.shape
        x2, weight, bias = x.reshape(-1, shape[-1]).contiguous(), weight.contiguous(), bias.contiguous()
        if _needs_grad(x, weight, bias):
            return torch.ops.tdmpc2_native.norm_simnorm_train(x2, weight, bias, eps, group)[0].view(shape)
        return torch.ops.tdmpc2_native.norm_simnorm(x2, weight, bias, eps, group).view(shape)
    return simnorm(F.layer_norm(x, x.shape[-1:], weight, bias, eps), group)


def _dropped_positions(n: int, p: float, device: torch.device) -> torch.Tensor:
    """Return the sorted flat indices dropped by ``n`` independent Bernoulli(``p``) draws.

    The gaps between successes of a Bernoulli process are Geometric(p), so
    summing geometric draws gives exactly the same distribution as drawing all
    ``n`` coins, at ~``n * p`` draws.
    """
    expected = n * p
    chunk = int(expected + 6 * math.sqrt(expected) + 16)
    gaps = torch.empty(chunk, dtype=torch.float64, device=device).geometric_(p)
    positions = gaps.cumsum_(0).sub_(1)
    while positions[-1] < n:
        more = torch.empty(chunk, dtype=torch.float64, device=device).geometric_(p).cumsum_(0)
        positions = torch.cat([positions, more.add_(positions[-1])])
    return positions[positions < n].long()


class _SparseDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        dropped = _dropped_positions(x.numel(), p, x.device)
        ctx.scale, ctx.dropped = 1.0 / (1.0 - p), dropped
        out = x.contiguous() * ctx.scale
        out.view(-1).index_fill_(0, dropped, 0.0)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous() * ctx.scale
        grad.view(-1).index_fill_(0, ctx.dropped, 0.0)
        return grad, None


@torch.library.custom_op("tdmpc2::dropout_mask", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,))
def _dropout_mask(like: torch.Tensor, p: float) -> torch.Tensor:
    """Return a dropout mask shaped like ``like``: 0 at dropped positions, ``1 / (1 - p)`` elsewhere.

    Opaque to the compiler, whose per-element random draws in generated CPU
    code measured 10x slower than drawing the dropped positions only.
    """
    mask = torch.full_like(like, 1.0 / (1.0 - p))
    mask.view(-1).index_fill_(0, _dropped_positions(like.numel(), p, like.device), 0.0)
    return mask


@_dropout_mask.register_fake
def _(like, p):
    return torch.empty_like(like)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Return ``F.dropout(x, p, training)``: each element zeroed with probability ``p``, the rest scaled by 1/(1-p)."""
    if not training or p == 0:
        return x
    if p > _SPARSE_DROPOUT_MAX_RATE or x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    if torch.compiler.is_compiling():
        return x * _dropout_mask(x.detach(), p)
    return _SparseDropout.apply(x, p)
