"""Scalar transforms and distributions used by TD-MPC2.

Rewards and values are regressed as discrete distributions: a scalar x is
squashed by ``symlog``, clamped to ``[vmin, vmax]`` and spread over two
neighbouring bins (``two_hot``); heads predict logits and are trained with
``soft_ce``; ``two_hot_inv`` maps logits back to a scalar. ``policy_sample``
turns the policy head's output into a squashed-Gaussian action.

Every function here computes in float32 whatever precision its inputs come in
(:func:`tdmpc2.precision.fp32`): these are the numerically delicate parts.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tdmpc2.precision import fp32

_LOG_SQRT_2PI = 0.9189385175704956


@fp32
def symlog(x: torch.Tensor) -> torch.Tensor:
    """Return sign(x) * log(1 + |x|)."""
    return torch.sign(x) * torch.log1p(x.abs())


@fp32
def symexp(x: torch.Tensor) -> torch.Tensor:
    """Return sign(x) * (exp(|x|) - 1), the inverse of :func:`symlog`."""
    return torch.sign(x) * torch.expm1(x.abs())


@dataclass(frozen=True)
class Bins:
    """Discrete-regression support: ``num_bins`` equal bins on ``[vmin, vmax]`` in symlog space."""

    num_bins: int = 101
    vmin: float = -10.0
    vmax: float = 10.0

    def __post_init__(self):
        if self.num_bins < 2:
            raise ValueError(f"num_bins must be >= 2, got {self.num_bins}")
        if not self.vmax > self.vmin:
            raise ValueError(f"vmax must exceed vmin, got vmin={self.vmin}, vmax={self.vmax}")

    @property
    def bin_size(self) -> float:
        """Return the width of one bin."""
        return (self.vmax - self.vmin) / (self.num_bins - 1)

    def centres(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """Return the ``num_bins`` bin centres (symlog space)."""
        return torch.linspace(self.vmin, self.vmax, self.num_bins, device=device, dtype=dtype)


@fp32
def two_hot(x: torch.Tensor, bins: Bins) -> torch.Tensor:
    """Return the two-hot encoding of scalars ``x`` (shape ``(..., 1)``) as ``(..., num_bins)``.

    The weight of the two bins around symlog(x) is proportional to closeness;
    the encoding sums to one and its expectation over the centres is symlog(x)
    (clamped to the support). A NaN scalar gives a row of NaNs.
    """
    y = symlog(x).clamp(bins.vmin, bins.vmax)
    nan = torch.isnan(y)
    pos = (y.nan_to_num(0.0) - bins.vmin) / bins.bin_size
    low = pos.floor().clamp(max=bins.num_bins - 1)
    frac = pos - low
    low_idx = low.long()
    high_idx = (low_idx + 1).clamp(max=bins.num_bins - 1)
    out = torch.zeros(*x.shape[:-1], bins.num_bins, device=x.device, dtype=x.dtype)
    out.scatter_add_(-1, low_idx, 1.0 - frac)
    out.scatter_add_(-1, high_idx, frac)
    # A NaN scalar encodes as NaN (so the loss is non-finite and reported), never as a bad index.
    return torch.where(nan, torch.full_like(out, float("nan")), out)


@fp32
def two_hot_inv(logits: torch.Tensor, bins: Bins) -> torch.Tensor:
    """Return the scalar (shape ``(..., 1)``) encoded by ``logits`` (shape ``(..., num_bins)``)."""
    probs = F.softmax(logits, dim=-1)
    y = (probs * bins.centres(logits.device, logits.dtype)).sum(-1, keepdim=True)
    return symexp(y)


@fp32
def soft_ce(logits: torch.Tensor, target: torch.Tensor, bins: Bins) -> torch.Tensor:
    """Return the cross-entropy (shape ``(..., 1)``) of ``logits`` against the two-hot of ``target``."""
    log_probs = F.log_softmax(logits, dim=-1)
    return -(two_hot(target, bins) * log_probs).sum(-1, keepdim=True)


@fp32
def log_std(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Return ``x`` squashed into ``[low, high]`` with tanh (the policy's log-std)."""
    return low + 0.5 * (high - low) * (torch.tanh(x) + 1)


@fp32
def gaussian_logprob(eps: torch.Tensor, log_std_: torch.Tensor) -> torch.Tensor:
    """Return log N(eps; 0, 1) of a reparameterised sample, summed over the last dim (keepdim)."""
    return (-0.5 * eps.pow(2) - log_std_ - _LOG_SQRT_2PI).sum(-1, keepdim=True)


@fp32
def squash(mean: torch.Tensor, sample: torch.Tensor, log_prob: torch.Tensor):
    """Return ``(tanh(mean), tanh(sample), log_prob)`` with the tanh change-of-variables correction."""
    mean = torch.tanh(mean)
    sample = torch.tanh(sample)
    log_prob = log_prob - torch.log(F.relu(1 - sample.pow(2)) + 1e-6).sum(-1, keepdim=True)
    return mean, sample, log_prob


@fp32
def policy_sample(head_out: torch.Tensor, log_std_min: float, log_std_max: float):
    """Return ``(action, info)``: a reparameterised tanh-squashed Gaussian sample from the policy head's output.

    ``head_out`` ``(..., 2A)`` holds the mean and the raw log-std. ``info``
    holds ``mean`` (squashed), ``log_std``, ``entropy`` (minus the log-density
    of the squashed action) and ``scaled_entropy``, the term of the policy
    objective: ``-A * log N(u; mean, std)`` of the pre-tanh sample ``u``, with
    no tanh correction, which is what the public TD-MPC2 computes in effect
    (its rescaling of the squashed log-probability cancels the correction).
    """
    mean, raw_log_std = head_out.chunk(2, dim=-1)
    log_std_ = log_std(raw_log_std, log_std_min, log_std_max)
    eps = torch.randn_like(mean)
    gaussian = gaussian_logprob(eps, log_std_)
    sample = mean + eps * log_std_.exp()
    mean, action, log_prob = squash(mean, sample, gaussian)
    info = {"mean": mean, "log_std": log_std_, "entropy": -log_prob, "scaled_entropy": -gaussian * mean.shape[-1]}
    return action, info


def discount_from_episode_length(episode_length: int, low: float = 0.95, high: float = 0.995) -> float:
    """Return TD-MPC2's heuristic discount: clip((L/5 - 1) / (L/5), low, high)."""
    frac = episode_length / 5
    return float(min(max((frac - 1) / frac, low), high))
