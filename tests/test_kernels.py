"""Facts about the fast elementwise kernels and part-wise linear layers (tdmpc2/kernels.py, tdmpc2/layers.py).

The fast paths must compute what the plain PyTorch code computes, up to float32 rounding.
"""
from __future__ import annotations

import functools
import shutil

import pytest
import torch
import torch.nn.functional as F

from tdmpc2 import kernels, layers, native


def plain_norm_mish(x, weight, bias):
    """LayerNorm without affine, the given affine, then Mish, in plain PyTorch."""
    return F.mish(F.layer_norm(x, x.shape[-1:]) * weight + bias)


def gradients(fn, inputs, grad):
    return torch.autograd.grad(fn(*inputs), inputs, grad)


# ---------------------------------------------------------------- Mish


def test_single_exp_mish_formulas_match_mish_and_its_derivative():
    x = torch.cat([torch.linspace(-90, 60, 3001), torch.tensor([0.0, 19.99, 20.0, 20.01, 1e4])]).requires_grad_()
    y, derivative = kernels._mish_and_derivative(x.detach())
    torch.testing.assert_close(y, F.mish(x.detach()), rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(kernels._mish_forward(x.detach()), F.mish(x.detach()), rtol=2e-6, atol=1e-6)
    expected, = torch.autograd.grad(F.mish(x).sum(), x)
    torch.testing.assert_close(derivative, expected, rtol=1e-5, atol=1e-6)


def test_compiled_mish_matches_mish_forward_and_backward():
    x = (torch.randn(64, 48) * 4).requires_grad_()
    g = torch.randn(64, 48)
    torch.testing.assert_close(kernels.mish(x, compiled=True), F.mish(x), rtol=2e-6, atol=1e-6)
    got, = gradients(lambda t: kernels.mish(t, compiled=True), (x,), g)
    expected, = gradients(F.mish, (x,), g)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(kernels.mish(x[:5], compiled=True), F.mish(x[:5]), rtol=2e-6, atol=1e-6)


# ---------------------------------------------------------------- LayerNorm + affine + Mish


@pytest.fixture(params=["native", "inductor"])
def fused_backend(request, monkeypatch):
    """Run a test with the native CPU kernels, then with the torch.compile ones."""
    if request.param == "native":
        if not native.available():
            pytest.skip("the native kernels are not built on this machine")
    else:
        monkeypatch.setitem(native._state, "available", False)
    return request.param


def test_native_kernels_build_where_there_is_a_compiler():
    if shutil.which("c++") is None or torch.backends.cpu.get_cpu_capability() not in native._ISA_FLAGS:
        pytest.skip("no C++ compiler or no AVX2")
    assert native.available()


@pytest.mark.parametrize("x_shape, affine_shape", [((3, 10, 48), (48,)), ((2, 30, 48), (2, 1, 48))])
@pytest.mark.parametrize("compiled", [False, True])
def test_norm_mish_matches_layer_norm_then_mish(x_shape, affine_shape, compiled, fused_backend):
    torch.manual_seed(0)
    x = (torch.randn(*x_shape) * 3 + 1).requires_grad_()
    weight = (torch.randn(*affine_shape) + 1).requires_grad_()
    bias = torch.randn(*affine_shape).requires_grad_()
    g = torch.randn(*x_shape)
    fast = lambda *t: kernels.norm_mish(*t, compiled=compiled)  # noqa: E731
    torch.testing.assert_close(fast(x, weight, bias), plain_norm_mish(x, weight, bias), rtol=1e-5, atol=2e-6)
    for got, expected in zip(gradients(fast, (x, weight, bias), g), gradients(plain_norm_mish, (x, weight, bias), g)):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # Frozen affine (the detached Q ensemble): only the input gradient.
    frozen = lambda t: fast(t, weight.detach(), bias.detach())  # noqa: E731
    got, = gradients(frozen, (x,), g)
    expected, = gradients(lambda t: plain_norm_mish(t, weight.detach(), bias.detach()), (x,), g)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_fused_norm_mish_keeps_nan_and_handles_large_pre_activations(fused_backend):
    x = torch.randn(4, 64)
    x[1, 3] = float("nan")
    weight, bias = torch.full((64,), 30.0), torch.zeros(64)  # pre-activations of about +-100
    out = kernels.norm_mish(x, weight, bias, compiled=True)
    assert out[1].isnan().all() and out[[0, 2, 3]].isfinite().all()
    torch.testing.assert_close(out[[0, 2, 3]], plain_norm_mish(x[[0, 2, 3]], weight, bias), rtol=1e-5, atol=1e-5)


def test_fused_norm_mish_runs_inside_compiled_code(fused_backend):
    torch.manual_seed(0)
    x, weight, bias = torch.randn(2, 40, 48), torch.randn(2, 1, 48), torch.randn(2, 1, 48)
    fn = torch.compile(lambda t: kernels.norm_mish(t, weight, bias, compiled=True), fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(fn(x), plain_norm_mish(x, weight, bias), rtol=1e-5, atol=2e-6)


def test_compiled_ensemble_equals_the_eager_ensemble(builders):
    ens = builders.random_ensemble()
    x = torch.randn(9, 6)
    eager = ens(x)
    layers.use_compiled_kernels(ens)
    torch.testing.assert_close(ens(x), eager, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- SimNorm, dropout


def test_group_softmax_gradient_is_softmax_gradient():
    x = (torch.randn(5, 32) * 5).requires_grad_()
    g = torch.randn(5, 32)
    got, = gradients(lambda t: kernels.simnorm(t, 8), (x,), g)
    expected, = gradients(lambda t: F.softmax(t.view(5, 4, 8), -1).view(5, 32), (x,), g)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def plain_norm_simnorm(x, weight, bias, group=8):
    y = F.layer_norm(x, x.shape[-1:], weight, bias)
    return F.softmax(y.unflatten(-1, (-1, group)), -1).flatten(-2)


@pytest.mark.parametrize("group", [8, 4])
def test_fused_norm_simnorm_matches_layer_norm_then_simnorm(group, fused_backend):
    torch.manual_seed(0)
    x = (torch.randn(3, 11, 64) * 3 + 1).requires_grad_()
    weight, bias = (torch.randn(64) + 1).requires_grad_(), torch.randn(64).requires_grad_()
    g = torch.randn(3, 11, 64)
    fast = lambda *t: kernels.norm_simnorm(*t, 1e-5, group, fused=True)  # noqa: E731
    plain = lambda *t: plain_norm_simnorm(*t, group)  # noqa: E731
    torch.testing.assert_close(fast(x, weight, bias), plain(x, weight, bias), rtol=1e-5, atol=1e-6)
    for got, expected in zip(gradients(fast, (x, weight, bias), g), gradients(plain, (x, weight, bias), g)):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(fast(x, weight, bias), plain(x, weight, bias), rtol=1e-5, atol=1e-6)
        compiled = torch.compile(fast, fullgraph=True)
        torch.testing.assert_close(compiled(x, weight, bias), plain(x, weight, bias), rtol=1e-5, atol=1e-6)


def test_fused_norm_simnorm_is_exact_for_groups_far_below_the_rest_and_keeps_nan(fused_backend):
    x = torch.zeros(2, 16)
    x[:, :8] = torch.linspace(0, 1, 8)
    x[0, 3] = float("nan")
    weight, bias = torch.ones(16), torch.zeros(16)
    bias[8:] = -500 + torch.linspace(0, 2, 8)  # the second group lies 500 below the first
    out = kernels.norm_simnorm(x, weight, bias, 1e-5, 8, fused=True)
    assert out[0].isnan().all()  # LayerNorm spreads the NaN over the row, as in plain PyTorch
    torch.testing.assert_close(out[1], plain_norm_simnorm(x[1:], weight, bias)[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out[1, 8:].sum(), torch.tensor(1.0))


def test_dropped_positions_are_distinct_in_range_and_at_the_rate():
    torch.manual_seed(0)
    n, p = 200_000, 0.01
    draws, counts = 20, torch.zeros(n)
    for _ in range(draws):
        pos = kernels._dropped_positions(n, p, torch.device("cpu"))
        assert pos.min() >= 0 and pos.max() < n and bool((pos[1:] > pos[:-1]).all())
        counts[pos] += 1
    assert counts.mean().item() / draws == pytest.approx(p, rel=0.05)
    # Early and late positions are dropped alike (no bias from the gap sampling).
    assert counts[: n // 2].mean().item() == pytest.approx(counts[n // 2:].mean().item(), rel=0.1)


@pytest.mark.parametrize("p", [0.01, 0.5])
def test_dropout_zeroes_scales_and_passes_gradient_through_the_kept_elements(p):
    torch.manual_seed(0)
    x = torch.ones(4, 300, 50, requires_grad=True)
    y = kernels.dropout(x, p)
    kept = y != 0
    assert (1 - kept.float().mean().item()) == pytest.approx(p, abs=0.15 * p + 0.002)
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    grad, = torch.autograd.grad(y, x, torch.ones_like(y))
    assert torch.equal(grad != 0, kept)
    assert kernels.dropout(x, p, training=False) is x


# ---------------------------------------------------------------- part-wise linear


def test_linear_of_parts_equals_linear_of_the_concatenation():
    torch.manual_seed(0)
    weight, bias = torch.randn(7, 6), torch.randn(7)
    z, a = torch.randn(4, 3, 5), torch.rand(4, 3, 1)
    expected = F.linear(torch.cat([z, a], -1), weight, bias)
    torch.testing.assert_close(layers.linear_of_parts((z, a), weight, bias), expected)
    # One latent broadcast over the batch (MPPI's start state) is multiplied once, with the same result.
    z1, a1 = torch.randn(1, 5).expand(8, 5), torch.rand(8, 1)
    out = layers.linear_of_parts((z1, a1), weight, bias)
    torch.testing.assert_close(out, F.linear(torch.cat([z1, a1], -1), weight, bias))
    assert out.shape == (8, 7)
    with pytest.raises(ValueError, match="takes 6"):
        layers.linear_of_parts((z, z), weight, bias)


def test_ensemble_of_parts_equals_the_ensemble_of_the_concatenation():
    torch.manual_seed(0)
    ens = layers.EnsembleMLP(2, 6, [16], 5)
    ens.apply(layers.init_weights)
    z, a = torch.randn(9, 5), torch.rand(9, 1)
    torch.testing.assert_close(ens((z, a)), ens(torch.cat([z, a], -1)))


# ---------------------------------------------------------------- compile fallback


def test_a_failing_compile_falls_back_to_eager_with_a_warning():
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    fn = kernels.CompileWithFallback(lambda x: x * 2 + 1, backend=broken_backend)
    with pytest.warns(RuntimeWarning, match="running it eagerly"):
        out = fn(torch.ones(3))
    torch.testing.assert_close(out, torch.full((3,), 3.0))
    assert fn.failed
    torch.testing.assert_close(fn(torch.zeros(2)), torch.ones(2))


def test_compiled_agent_updates_and_plans(builders, monkeypatch):
    # The wiring is under test here, not the code generator (the kernel tests above cover it): trace only.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    cfg = builders.tiny_config("mpc=true", "num_samples=64", "num_elites=8", "num_pi_trajs=4", "iterations=2")
    agent = builders.make_agent(cfg)
    agent.compile()
    assert all(m.compiled_kernels for m in agent.model.modules() if hasattr(m, "compiled_kernels"))
    metrics = agent.update(builders.make_batch(cfg))
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    action = agent.act(torch.randn(cfg.obs_shape[0]), t0=True)
    assert action.shape == (cfg.action_dim,) and action.abs().max() <= 1


def test_shift_augmentation_is_an_exact_crop_of_the_padded_image():
    torch.manual_seed(0)
    pad, x = 2, torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    aug = layers.ShiftAug(pad)
    out = aug(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    padded = F.pad(x.float(), (pad,) * 4, mode="replicate")
    crops = [padded[..., dy:dy + 8, dx:dx + 8] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
    offsets = [next(k for k, crop in enumerate(crops) if torch.equal(out[i], crop[i])) for i in range(16)]
    assert len(set(offsets)) > 5  # the offsets vary between images
    assert aug.eval()(x) is x
