"""Facts about the world model and its layers (tdmpc2/world_model.py, tdmpc2/layers.py)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tdmpc2 import layers
from tdmpc2 import math as tmath
from tdmpc2.world_model import WorldModel


@pytest.fixture
def model(builders) -> WorldModel:
    """A tiny world model (3 Q members, SimNorm latents) in eval mode, its Q output layers randomised."""
    torch.manual_seed(0)
    wm = WorldModel(builders.tiny_config()).eval()
    randomise_output_layers(wm)
    return wm


def randomise_output_layers(wm: WorldModel) -> None:
    """Give the zero-initialised last layers of the reward head and the Q ensemble random weights."""
    with torch.no_grad():
        last_q = wm._Qs.linears[-1]
        last_q.weight.normal_(0, 0.5)
        last_q.bias.normal_(0, 0.5)
        wm._reward[-1].weight.normal_(0, 0.5)


def latent_and_action(wm: WorldModel, n: int = 6, seed: int = 0):
    """Return ``n`` random SimNorm-shaped latents and actions in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    z = torch.softmax(torch.randn(n, wm.cfg.latent_dim, generator=g).view(n, -1, 8), -1).view(n, -1)
    a = torch.rand(n, wm.cfg.action_dim, generator=g) * 2 - 1
    return z, a


# ---------------------------------------------------------------- SimNorm and latents


def test_simnorm_groups_are_probability_vectors():
    x = torch.randn(4, 5, 32) * 10
    y = layers.SimNorm(8)(x)
    groups = y.view(4, 5, 4, 8)
    assert (groups >= 0).all()
    torch.testing.assert_close(groups.sum(-1), torch.ones(4, 5, 4))
    torch.testing.assert_close(groups, torch.softmax(x.view(4, 5, 4, 8), -1))


def test_encoder_and_dynamics_outputs_are_simnormed(model):
    obs = torch.randn(7, model.cfg.obs_shape[0]) * 3
    z = model.encode(obs)
    assert z.shape == (7, model.cfg.latent_dim)
    torch.testing.assert_close(z.view(7, -1, model.cfg.simnorm_dim).sum(-1), torch.ones(7, model.cfg.latent_dim // 8))
    nz = model.next(z, torch.rand(7, model.cfg.action_dim) * 2 - 1)
    torch.testing.assert_close(nz.view(7, -1, model.cfg.simnorm_dim).sum(-1), torch.ones(7, model.cfg.latent_dim // 8))


def test_without_simnorm_latents_are_unconstrained(builders):
    torch.manual_seed(0)
    wm = WorldModel(builders.tiny_config("simnorm=false")).eval()
    z = wm.encode(torch.randn(5, wm.cfg.obs_shape[0]) * 100)
    assert not torch.allclose(z.view(5, -1, 8).sum(-1), torch.ones(5, wm.cfg.latent_dim // 8))


def test_encode_accepts_leading_batch_dims(model):
    obs = torch.randn(4, 3, model.cfg.obs_shape[0])
    z = model.encode(obs)
    assert z.shape == (4, 3, model.cfg.latent_dim)
    torch.testing.assert_close(z[2], model.encode(obs[2]))


@pytest.mark.parametrize("part", ["encoder", "dynamics"])
def test_latents_are_layer_normed_before_simnorm(model, part):
    obs = torch.randn(5, model.cfg.obs_shape[0])
    z, a = model.encode(obs), torch.rand(5, model.cfg.action_dim) * 2 - 1
    run = (lambda: model.encode(obs)) if part == "encoder" else (lambda: model.next(z, a))
    net = model._encoder if part == "encoder" else model._dynamics
    last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    before = run()
    with torch.no_grad():
        last.weight.mul_(10)
        last.bias.mul_(10)
    # LayerNorm's eps leaves a ~1e-3 trace; without LayerNorm the softmax sharpens by ~0.3.
    torch.testing.assert_close(run(), before, rtol=0, atol=0.02)


# ---------------------------------------------------------------- initialisation


def test_reward_and_q_heads_start_at_zero(builders):
    torch.manual_seed(0)
    wm = WorldModel(builders.tiny_config()).eval()
    z, a = latent_and_action(wm)
    assert (wm.reward(z, a) == 0).all()
    assert (wm.Q(z, a, "all") == 0).all()
    assert tmath.two_hot_inv(wm.reward(z, a), wm.bins).abs().max() < 1e-6


# ---------------------------------------------------------------- Q ensemble


def test_q_all_returns_one_head_per_member(model):
    z, a = latent_and_action(model)
    q = model.Q(z, a, "all")
    assert q.shape == (3, 6, model.cfg.num_bins)
    q2 = model.Q(z.view(2, 3, -1), a.view(2, 3, -1), "all")
    assert q2.shape == (3, 2, 3, model.cfg.num_bins)
    torch.testing.assert_close(q2.reshape(3, 6, -1), q)
    # Independently initialised members disagree.
    assert not torch.allclose(q[0], q[1]) and not torch.allclose(q[1], q[2])


@pytest.mark.parametrize("member", [0, 2])
@pytest.mark.parametrize("which", ["first_weight", "hidden_norm", "last_bias"])
def test_changing_one_member_changes_only_its_head(model, member, which):
    z, a = latent_and_action(model)
    before = model.Q(z, a, "all")
    with torch.no_grad():
        if which == "first_weight":
            model._Qs.linears[0].weight[member].add_(0.5 * torch.randn_like(model._Qs.linears[0].weight[member]))
        elif which == "hidden_norm":
            model._Qs.ln_weight[1][member].mul_(3)
        else:
            model._Qs.linears[-1].bias[member].add_(1.0)
    after = model.Q(z, a, "all")
    others = [i for i in range(3) if i != member]
    torch.testing.assert_close(after[others], before[others], rtol=0, atol=0)
    assert (after[member] - before[member]).abs().max() > 1e-3


def test_q_min_and_avg_combine_two_members(builders):
    torch.manual_seed(0)
    wm = WorldModel(builders.tiny_config("num_q=2")).eval()
    randomise_output_layers(wm)
    z, a = latent_and_action(wm)
    values = tmath.two_hot_inv(wm.Q(z, a, "all"), wm.bins)  # (2, N, 1)
    torch.testing.assert_close(wm.Q(z, a, "min"), values.min(0).values)
    torch.testing.assert_close(wm.Q(z, a, "avg"), values.mean(0))
    assert wm.Q(z.view(2, 3, -1), a.view(2, 3, -1), "min").shape == (2, 3, 1)


def test_q_min_with_one_member_is_that_member(builders):
    torch.manual_seed(0)
    wm = WorldModel(builders.tiny_config("num_q=1")).eval()
    randomise_output_layers(wm)
    z, a = latent_and_action(wm)
    value = tmath.two_hot_inv(wm.Q(z, a, "all")[0], wm.bins)
    torch.testing.assert_close(wm.Q(z, a, "min"), value)
    torch.testing.assert_close(wm.Q(z, a, "avg"), value)


def test_q_rejects_unknown_return_type(model):
    z, a = latent_and_action(model)
    with pytest.raises(ValueError, match="min, avg, all"):
        model.Q(z, a, "max")


def test_detached_q_has_the_same_values_and_no_gradient(model):
    z, a = latent_and_action(model)
    z.requires_grad_(True)
    q = model.Q(z, a, "all", detach=True)
    torch.testing.assert_close(q, model.Q(z, a, "all"))
    q.sum().backward()
    assert all(p.grad is None for p in model._Qs.parameters())
    assert z.grad is not None and z.grad.abs().sum() > 0  # gradient still reaches the input


def test_target_q_is_a_frozen_copy_outside_the_trained_parameters(model):
    target_params = {id(p) for p in model._target_Qs.parameters()}
    assert all(not p.requires_grad for p in model._target_Qs.parameters())
    assert not target_params & {id(p) for p in model.head_parameters()}
    assert not target_params & {id(p) for p in model.encoder.parameters()}


def test_soft_update_moves_the_target_by_exactly_tau(model):
    with torch.no_grad():
        for p in model._Qs.parameters():
            p.add_(torch.randn_like(p))
    old_target = [p.detach().clone() for p in model._target_Qs.parameters()]
    online = [p.detach().clone() for p in model._Qs.parameters()]
    model.soft_update_target_Q(0.1)
    for new, old, on in zip(model._target_Qs.parameters(), old_target, online):
        torch.testing.assert_close(new, old + 0.1 * (on - old), rtol=1e-6, atol=1e-7)
    for p, on in zip(model._Qs.parameters(), online):
        assert torch.equal(p, on)
    model.soft_update_target_Q(1.0)
    z, a = latent_and_action(model)
    torch.testing.assert_close(model.Q(z, a, "all", target=True), model.Q(z, a, "all"))


def test_target_q_has_no_dropout_in_training_mode(builders):
    torch.manual_seed(0)
    wm = WorldModel(builders.tiny_config("dropout=0.5"))
    randomise_output_layers(wm)
    wm.soft_update_target_Q(1.0)
    wm.train()
    z, a = latent_and_action(wm)
    torch.testing.assert_close(wm.Q(z, a, "all", target=True), wm.Q(z, a, "all", target=True))


def test_dropout_acts_only_in_training_mode(builders):
    torch.manual_seed(0)
    wm = WorldModel(builders.tiny_config("dropout=0.5"))
    randomise_output_layers(wm)
    z, a = latent_and_action(wm)
    wm.eval()
    torch.testing.assert_close(wm.Q(z, a, "all"), wm.Q(z, a, "all"))
    wm.train()
    assert not torch.allclose(wm.Q(z, a, "all"), wm.Q(z, a, "all"))


# ---------------------------------------------------------------- EnsembleMLP


@pytest.mark.parametrize("members", [[2], [0, 2], [3, 1], [1, 1, 0]])
def test_ensemble_members_equal_the_full_output_indexed(members):
    torch.manual_seed(0)
    ens = layers.EnsembleMLP(4, 6, [16, 16], 5)
    ens.apply(layers.init_weights)
    idx = torch.tensor(members)
    x = torch.randn(9, 6)
    torch.testing.assert_close(ens(x, members=idx), ens(x)[idx])
    per_member_input = torch.randn(4, 9, 6)
    torch.testing.assert_close(ens(per_member_input[idx], members=idx), ens(per_member_input)[idx])


def test_ensemble_member_equals_a_plain_mlp_with_its_weights(builders):
    ens = builders.random_ensemble()
    k, x = 1, torch.randn(9, 6)
    h = x
    for i, lin in enumerate(ens.linears):
        h = h @ lin.weight[k] + lin.bias[k]
        if i < len(ens.linears) - 1:
            h = torch.nn.functional.mish(
                torch.nn.functional.layer_norm(h, h.shape[-1:]) * ens.ln_weight[i][k] + ens.ln_bias[i][k])
    torch.testing.assert_close(ens(x)[k], h, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- other heads


def test_policy_prior_outputs(model):
    z, _ = latent_and_action(model, n=50)
    action, info = model.pi(z)
    assert action.shape == info["mean"].shape == (50, model.cfg.action_dim)
    assert action.abs().max() <= 1 and info["mean"].abs().max() <= 1
    log_std = info["log_std"]
    assert (log_std >= model.cfg.log_std_min).all() and (log_std <= model.cfg.log_std_max).all()
    mean_raw, _ = model._pi(z).chunk(2, -1)
    torch.testing.assert_close(info["mean"], torch.tanh(mean_raw))


@pytest.mark.parametrize("spread", [0.1, 20.0])
def test_policy_entropy_term_is_what_the_public_code_computes(model, spread):
    """scaled_entropy = -A * log N(u; mu, sigma) of the pre-tanh sample u: the public code's
    ``-log_prob * (A * gaussian_log_prob) / (log_prob + 1e-8)``, whose rescaling cancels the tanh term."""
    z, _ = latent_and_action(model, n=64)
    with torch.no_grad():
        last = model._pi[-1]
        last.weight[: model.cfg.action_dim].normal_(0, spread)  # spread 20 saturates the tanh of the mean
        torch.manual_seed(3)
        action, info = model.pi(z)
        torch.manual_seed(3)
        mean_raw, raw_log_std = model._pi(z).chunk(2, -1)
        eps = torch.randn_like(mean_raw)
    A = model.cfg.action_dim
    log_std = info["log_std"]
    u = mean_raw + eps * log_std.exp()
    # log N(u; mu, sigma) = log N(eps; 0, 1) - log sigma, summed over the action dims.
    gaussian = (torch.distributions.Normal(0.0, 1.0).log_prob(eps) - log_std).sum(-1, keepdim=True)
    post_tanh = gaussian - torch.log(torch.relu(1 - torch.tanh(u) ** 2) + 1e-6).sum(-1, keepdim=True)
    public = -post_tanh * (A * gaussian) / (post_tanh + 1e-8)
    torch.testing.assert_close(info["scaled_entropy"], -A * gaussian, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(info["scaled_entropy"], public, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(info["entropy"], -post_tanh, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(action, torch.tanh(u))
    if spread > 1:
        assert (info["entropy"] * A - info["scaled_entropy"]).abs().max() > 1.0


def test_termination_head(builders):
    torch.manual_seed(0)
    z = torch.rand(4, 16)
    plain = WorldModel(builders.tiny_config())
    assert (plain.termination(z) == 0).all() and plain.termination(z).shape == (4, 1)
    episodic = WorldModel(builders.tiny_config(task_info=builders.toy_task_info(episodic=True)))
    logits = episodic.termination(z, logits=True)
    torch.testing.assert_close(episodic.termination(z), torch.sigmoid(logits))


def test_parameter_groups_are_disjoint_and_complete(model):
    encoder = {id(p) for p in model.encoder.parameters()}
    heads = {id(p) for p in model.head_parameters()}
    policy = {id(p) for p in model.policy_parameters()}
    target = {id(p) for p in model._target_Qs.parameters()}
    assert not (encoder & heads) and not (encoder & policy) and not (heads & policy)
    assert encoder | heads | policy | target == {id(p) for p in model.parameters()}
