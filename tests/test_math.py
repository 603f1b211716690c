"""Facts about tdmpc2.math (symlog, two-hot regression, policy math, discount) and tdmpc2.scale."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal, TanhTransform, TransformedDistribution

from tdmpc2 import math as tmath
from tdmpc2.scale import RunningScale

BINS = tmath.Bins(101, -10.0, 10.0)
# Spans zero, both signs, tiny and huge magnitudes (beyond the support: symlog(1e6) = 13.8 > vmax).
WIDE = torch.tensor([-1e6, -2e4, -37.5, -1.0, -1e-3, 0.0, 1e-3, 0.5, 1.0, 3.0, 250.0, 2e4, 1e6])


def in_support(x: torch.Tensor) -> torch.Tensor:
    """Return the values of ``x`` whose symlog lies inside [vmin, vmax]."""
    return x[tmath.symlog(x).abs() <= BINS.vmax]


# ---------------------------------------------------------------- symlog


def test_symlog_symexp_round_trip():
    x = torch.cat([WIDE, torch.randn(1000) * 50])
    torch.testing.assert_close(tmath.symexp(tmath.symlog(x)), x, rtol=1e-5, atol=1e-6)
    y = torch.linspace(-12, 12, 241)
    torch.testing.assert_close(tmath.symlog(tmath.symexp(y)), y, rtol=1e-5, atol=1e-5)


def test_symlog_values_and_symmetry():
    assert tmath.symlog(torch.tensor(math.e - 1)).item() == pytest.approx(1.0)
    assert tmath.symlog(torch.tensor(0.0)).item() == 0.0
    torch.testing.assert_close(tmath.symlog(-WIDE), -tmath.symlog(WIDE))
    assert (tmath.symlog(WIDE).diff() > 0).all()


# ---------------------------------------------------------------- two-hot


def test_two_hot_is_a_distribution_on_two_adjacent_bins():
    x = torch.cat([WIDE, torch.randn(500) * 20]).unsqueeze(-1)
    enc = tmath.two_hot(x, BINS)
    assert enc.shape == (len(x), BINS.num_bins)
    assert (enc >= 0).all()
    torch.testing.assert_close(enc.sum(-1), torch.ones(len(x)))
    for row in enc:
        nonzero = row.nonzero().flatten()
        assert 1 <= len(nonzero) <= 2
        if len(nonzero) == 2:
            assert nonzero[1] - nonzero[0] == 1


def test_two_hot_expectation_is_clamped_symlog():
    x = torch.cat([WIDE, torch.randn(500) * 20]).unsqueeze(-1)
    expectation = (tmath.two_hot(x, BINS) * BINS.centres()).sum(-1)
    expected = tmath.symlog(x).clamp(BINS.vmin, BINS.vmax).squeeze(-1)
    torch.testing.assert_close(expectation, expected, rtol=0, atol=1e-5)
    # Beyond the support all weight sits on the end bins.
    ends = tmath.two_hot(torch.tensor([[1e6], [-1e6]]), BINS)
    assert ends[0, -1] == 1 and ends[1, 0] == 1


def test_two_hot_of_a_bin_centre_is_one_hot():
    k = torch.tensor([0, 1, 37, 50, 99, 100])
    x = tmath.symexp(BINS.centres()[k].double()).float().unsqueeze(-1)
    enc = tmath.two_hot(x, BINS)
    assert torch.allclose(enc.max(-1).values, torch.ones(len(k)), atol=1e-4)
    assert (enc.argmax(-1) == k).all()


def test_two_hot_inv_recovers_the_encoded_scalar():
    x = in_support(torch.cat([WIDE, torch.randn(500) * 20])).unsqueeze(-1)
    logits = tmath.two_hot(x, BINS).clamp_min(1e-30).log()
    back = tmath.two_hot_inv(logits, BINS)
    assert back.shape == x.shape
    # Within bin precision in symlog space (the expectation is exact up to rounding).
    assert (tmath.symlog(back) - tmath.symlog(x)).abs().max() < 1e-3 * BINS.bin_size


def test_two_hot_inv_of_uniform_logits_is_zero_and_of_extreme_logits_the_end_bins():
    assert tmath.two_hot_inv(torch.zeros(4, BINS.num_bins), BINS).abs().max() < 1e-5
    top = torch.full((1, BINS.num_bins), -1e4)
    top[0, -1] = 0
    assert tmath.two_hot_inv(top, BINS).item() == pytest.approx(math.expm1(BINS.vmax), rel=1e-4)


def test_bins_reject_bad_support():
    with pytest.raises(ValueError, match="num_bins"):
        tmath.Bins(1, -1.0, 1.0)
    with pytest.raises(ValueError, match="vmax"):
        tmath.Bins(11, 1.0, 1.0)


# ---------------------------------------------------------------- soft cross-entropy


def test_soft_ce_is_the_cross_entropy_against_the_two_hot():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, BINS.num_bins, generator=g)
    target = torch.randn(6, 1, generator=g) * 5
    expected = -(tmath.two_hot(target, BINS) * torch.log_softmax(logits, -1)).sum(-1, keepdim=True)
    torch.testing.assert_close(tmath.soft_ce(logits, target, BINS), expected)


def test_soft_ce_is_minimal_at_the_target():
    g = torch.Generator().manual_seed(1)
    target = torch.tensor([[-3.0], [0.05], [0.7], [12.0]])  # none on a bin centre
    best = tmath.two_hot(target, BINS).clamp_min(1e-12).log()
    at_best = tmath.soft_ce(best, target, BINS)
    for _ in range(20):
        perturbed = best + 0.5 * torch.randn(best.shape, generator=g)
        assert (tmath.soft_ce(perturbed, target, BINS) > at_best).all()
    # Stationary there: d CE / d logits = softmax(logits) - two_hot(target) = 0.
    logits = best.clone().requires_grad_(True)
    tmath.soft_ce(logits, target, BINS).sum().backward()
    assert logits.grad.abs().max() < 1e-6


# ---------------------------------------------------------------- policy math


def test_log_std_squashes_into_bounds():
    x = torch.tensor([-1e4, -3.0, 0.0, 3.0, 1e4])
    y = tmath.log_std(x, -10.0, 2.0)
    assert y[0] == pytest.approx(-10.0) and y[-1] == pytest.approx(2.0)
    assert y[2] == pytest.approx(-4.0)
    assert (y.diff() > 0).all()


def test_gaussian_logprob_matches_torch_normal():
    g = torch.Generator().manual_seed(2)
    mean, log_std = torch.randn(7, 3, generator=g), torch.randn(7, 3, generator=g) * 0.5
    eps = torch.randn(7, 3, generator=g)
    sample = mean + eps * log_std.exp()
    expected = Normal(mean, log_std.exp()).log_prob(sample).sum(-1, keepdim=True)
    torch.testing.assert_close(tmath.gaussian_logprob(eps, log_std), expected, rtol=1e-5, atol=1e-5)


def test_squash_applies_the_tanh_change_of_variables():
    g = torch.Generator().manual_seed(3)
    mean, log_std = torch.randn(7, 3, generator=g) * 0.5, torch.full((7, 3), -0.5)
    eps = torch.randn(7, 3, generator=g).clamp(-2, 2)
    sample = mean + eps * log_std.exp()
    squashed_mean, action, log_prob = tmath.squash(mean, sample, tmath.gaussian_logprob(eps, log_std))
    torch.testing.assert_close(squashed_mean, torch.tanh(mean))
    torch.testing.assert_close(action, torch.tanh(sample))
    dist = TransformedDistribution(Normal(mean, log_std.exp()), [TanhTransform()])
    expected = dist.log_prob(torch.tanh(sample)).sum(-1, keepdim=True)
    torch.testing.assert_close(log_prob, expected, rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------- discount heuristic


@pytest.mark.parametrize(
    "episode_length, discount",
    [(4, 0.95), (100, 0.95), (200, 0.975), (250, 0.98), (500, 0.99), (1000, 0.995), (10_000, 0.995)],
)
def test_discount_from_episode_length(episode_length, discount):
    assert tmath.discount_from_episode_length(episode_length) == pytest.approx(discount, abs=1e-12)


def test_discount_respects_other_bounds():
    assert tmath.discount_from_episode_length(200, 0.5, 0.9) == pytest.approx(0.9)
    assert tmath.discount_from_episode_length(10, 0.5, 0.9) == pytest.approx(0.5)


# ---------------------------------------------------------------- running scale


def test_running_scale_starts_at_one_and_divides():
    scale = RunningScale(0.01)
    assert scale.value.item() == 1.0
    q = torch.tensor([[3.0], [-6.0]])
    torch.testing.assert_close(scale(q), q)


def test_running_scale_moves_by_tau_toward_the_percentile_range():
    tau = 0.25
    scale = RunningScale(tau)
    g = torch.Generator().manual_seed(4)
    q1 = torch.randn(64, 1, generator=g) * 30
    q2 = torch.randn(16, 3, generator=g) * 7 + 100
    expected = 1.0
    for q in (q1, q2):
        lo, hi = np.percentile(q.numpy().ravel(), [5, 95])
        expected = expected + tau * (max(hi - lo, 1.0) - expected)
        scale.update(q)
        assert scale.value.item() == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(scale(q2), q2 / expected)


def test_running_scale_range_is_clamped_at_one():
    scale = RunningScale(0.5)
    scale.value.fill_(3.0)
    scale.update(torch.full((32, 1), 7.0) + 0.01 * torch.arange(32.0).unsqueeze(1))  # range 0.3 -> 1
    assert scale.value.item() == pytest.approx(2.0)


def test_running_scale_is_saved_in_its_state_dict():
    scale = RunningScale(1.0)
    scale.update(torch.linspace(0, 100, 101).unsqueeze(1))
    restored = RunningScale(1.0)
    restored.load_state_dict(scale.state_dict())
    assert restored.value.item() == pytest.approx(90.0)
