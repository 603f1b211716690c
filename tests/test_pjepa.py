"""Facts about the P-JEPA plumbing: the plugin, the gradient-gating table and the auxiliary targets.

Agents are built the way ``train.py`` builds them: a config composed from
``config.yaml`` and the preset groups, resolved against the counting task, then
``pjepa_ext.plugin.build_agent``. Models are tiny (ResNet width 8, one block per
stage, 32x32 images, batch 4) so that every backward pass costs milliseconds.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from tensordict import TensorDict

from envs import make_task_env
from pjepa_ext import plugin
from pjepa_ext.aux_targets import AUX_TARGETS, AuxTarget, RandomProjectionTarget
from pjepa_ext.presets import resolve_aux
from pjepa_ext.resnet import ResNetEncoder, count_layers, parameter_count
from tdmpc2.checkpoint import load_checkpoint, save_checkpoint
from tdmpc2.config import resolve
from tdmpc2.gating import CORE_LOSSES, GradientGating

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]

#: A small counting agent; horizon 2 so that rollouts and rho weights span several steps.
SMALL = ["size=cpu", "resnet.width=8", "resnet.blocks_per_stage=1", "batch_size=4", "horizon=2",
         "counting.image_size=32", "decoder_channels=8", "analysis_freq=0", "device=cpu", "compile=false"]

#: Every loss term whose gating row the tests check (counting is episodic, so termination exists).
TERMS = ("consistency", "reward", "value", "termination", "auxiliary", "decoder")
CORE_COEFS = {"consistency": "consistency_coef", "reward": "reward_coef", "value": "value_coef",
              "termination": "termination_coef"}

#: The terms that must reach the encoder under each variant (paper Fig. 1 and Sec. 2.3; TD-MPC2).
ENCODER_TERMS = {
    "pjepa": {"consistency", "auxiliary"},
    "aux_only": {"auxiliary"},
    "dyn_only": {"consistency"},
    "stock": {"consistency", "reward", "value", "termination"},
}


def compose_config(overrides, task: str = "counting"):
    """Return the composed (unresolved) root config for ``overrides``, with ``aux`` resolved as train.py does."""
    with initialize_config_dir(config_dir=str(REPO), version_base=None):
        cfg = compose(config_name="config", overrides=[f"task={task}", "precision=fp32", *overrides])
    variant = next((o.split("=", 1)[1] for o in overrides if o.startswith("variant=")), "pjepa")
    with open_dict(cfg):
        cfg.aux = resolve_aux(cfg.aux, variant)
    return cfg


def build(overrides, task: str = "counting"):
    """Return ``(resolved cfg, agent, extension)`` built through the plugin from a composed config."""
    cfg = compose_config(overrides, task)
    env = make_task_env(cfg, 0)
    cfg = resolve(cfg, env.task_info)
    env.close()
    torch.manual_seed(0)
    agent, ext = plugin.build_agent(cfg)
    return cfg, agent, ext


def synthetic_batch(cfg, seed: int = 0) -> TensorDict:
    """Return a replay batch ``(H+1, B)`` laid out as the trainer stores it (NaN action/reward at index 0)."""
    gen = torch.Generator().manual_seed(seed)
    T, B = cfg.horizon + 1, cfg.batch_size
    action = torch.rand(T, B, cfg.action_dim, generator=gen) * 2 - 1
    reward = torch.randint(0, 2, (T, B, 1), generator=gen).float()
    action[0], reward[0] = float("nan"), float("nan")
    count = torch.randint(0, cfg.counting.max_count + 1, (T, B), generator=gen).float()
    obs_reward = (count == cfg.counting.target).float()
    return TensorDict(
        {
            "obs": torch.randint(0, 256, (T, B, *cfg.obs_shape), generator=gen, dtype=torch.uint8),
            "action": action,
            "reward": reward,
            "terminated": torch.zeros(T, B, 1),
            "info": TensorDict({"obs_reward": obs_reward, "count": count, "success": obs_reward.clone()},
                               batch_size=[T, B]),
        },
        batch_size=[T, B],
    )


def randomise_zero_layers(agent) -> None:
    """Give the zero-initialised last layers (reward head, Q ensemble) random weights.

    At TD-MPC2's initialisation these heads output a constant, so their losses
    send no gradient anywhere upstream whatever the gating says.
    """
    with torch.no_grad():
        for p in agent.model.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(0.0, 0.1)


def only(agent, term: str) -> None:
    """Set every loss coefficient to 0 except ``term``'s, which becomes 1."""
    for name, key in CORE_COEFS.items():
        agent.cfg[key] = 1.0 if name == term else 0.0
    for loss in agent.extra_losses:
        loss.weight = 1.0 if loss.name == term else 0.0


def extension_term(agent, name: str):
    """Return the extension loss module called ``name``."""
    return next(t for t in agent.extra_losses if t.name == name)


def has_gradient(module) -> bool:
    """Return whether any parameter of ``module`` holds a non-zero gradient."""
    return any(p.grad is not None and bool(p.grad.any()) for p in module.parameters())


def all_finite(module) -> bool:
    """Return whether every gradient of ``module`` is finite (where one exists)."""
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in module.parameters())


def backward_of(agent, batch, term: str) -> None:
    """Clear every gradient, then backpropagate the model loss with only ``term`` weighted."""
    only(agent, term)
    agent.optim.zero_grad(set_to_none=True)
    agent._losses(batch)[0].backward()


def own_head(agent, term: str):
    """Return the module a loss term trains besides the encoder."""
    model = agent.model
    heads = {"consistency": model._dynamics, "reward": model._reward, "value": model._Qs,
             "termination": model._termination}
    if term in heads:
        return heads[term]
    return extension_term(agent, term)


# -- the paper preset ----------------------------------------------------------


def test_paper_preset_encoder_is_the_papers_resnet():
    cfg, agent, _ = build(["variant=pjepa", "size=paper", "analysis_freq=0", "device=cpu", "compile=false"])
    encoder = agent.model.encoder
    assert isinstance(encoder, ResNetEncoder)
    assert parameter_count(encoder) == 12_260_192
    assert count_layers(encoder) == 69
    assert cfg.obs_shape == [3, 64, 64]
    obs = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    with torch.no_grad():
        assert agent.model.encode(obs).shape == (1, 256)


@pytest.mark.parametrize("conv_init", ["torch", "kaiming"])
def test_the_configured_conv_init_reaches_the_encoder(conv_init):
    _, agent, _ = build(["variant=pjepa", *SMALL, f"resnet.conv_init={conv_init}"])
    torch.manual_seed(0)
    expected = ResNetEncoder(3, 8, 1, agent.model.encoder.latent_dim, stem_pool=False, conv_init=conv_init)
    built = agent.model.encoder.stem[0].weight
    assert torch.equal(built, expected.stem[0].weight)


# -- gradient gating -------------------------------------------------------------

GATING_CASES = {
    "pjepa": ["variant=pjepa", *SMALL],
    "aux_only": ["variant=aux_only", *SMALL],
    "dyn_only": ["variant=dyn_only", *SMALL],
    "stock": ["variant=stock", *SMALL],
    # stock TD-MPC2 with its own conv encoder instead of the ResNet
    "stock-conv": ["variant=stock", "size=none", "model_size=1", "num_channels=8", "conv_padding=true",
                   "batch_size=4", "horizon=2", "counting.image_size=32", "decoder_channels=8",
                   "analysis_freq=0", "device=cpu", "compile=false"],
}


@pytest.mark.parametrize("case", list(GATING_CASES))
def test_each_loss_reaches_the_encoder_exactly_where_the_table_says(case):
    # aux and decoder forced on so that every row of the table has a live term
    cfg, agent, _ = build([*GATING_CASES[case], "aux=reward", "decoder=true"])
    variant = case.split("-")[0]
    assert {t for t in TERMS if cfg.gating[t]} == ENCODER_TERMS[variant]
    randomise_zero_layers(agent)
    batch = synthetic_batch(cfg)

    reaches, head_trains = {}, {}
    for term in TERMS:
        backward_of(agent, batch, term)
        assert all_finite(agent.model.encoder), f"{term}: non-finite encoder gradient"
        reaches[term] = has_gradient(agent.model.encoder)
        head_trains[term] = has_gradient(own_head(agent, term))
    wrong = sorted(t for t in TERMS if reaches[t] != cfg.gating[t])
    assert not wrong, f"{case}: encoder gradient {[(t, reaches[t]) for t in wrong]} contradicts the table"
    assert reaches == {t: agent.gating.reaches_encoder[t] for t in TERMS}
    # a gated-off term still trains its own head, on detached latents
    frozen = sorted(t for t in TERMS if not head_trains[t])
    assert not frozen, f"{case}: these terms' own heads got no gradient: {frozen}"


@pytest.mark.parametrize("variant, trains_dynamics", [("pjepa", False), ("stock", True)])
def test_gated_off_heads_see_detached_rollouts(variant, trains_dynamics):
    # "detached latents" means the whole rollout: a gated-off reward/value/termination loss
    # trains neither the encoder nor the latent dynamics (P-JEPA: T learns from L_dyn alone)
    cfg, agent, _ = build([f"variant={variant}", *SMALL])
    randomise_zero_layers(agent)
    batch = synthetic_batch(cfg)
    for term in ("reward", "value", "termination"):
        backward_of(agent, batch, term)
        assert has_gradient(agent.model._dynamics) is trains_dynamics, term


def test_gradient_reaches_every_encoder_layer():
    cfg, agent, _ = build(["variant=pjepa", *SMALL])
    backward_of(agent, synthetic_batch(cfg), "consistency")
    silent = [n for n, p in agent.model.encoder.named_parameters() if p.grad is None or not p.grad.any()]
    assert silent == []


def encoding_gradients(agent, batch) -> torch.Tensor:
    """Return d(consistency loss)/d(encoder output), ``(H+1, B, L)``; zeros where no gradient flows."""
    outputs = []

    def keep(module, inputs, out):
        if out.requires_grad:
            out.retain_grad()
        outputs.append(out)

    handle = agent.model.encoder.register_forward_hook(keep)
    try:
        backward_of(agent, batch, "consistency")
    finally:
        handle.remove()
    grads = torch.cat([o.grad if o.grad is not None else torch.zeros_like(o) for o in outputs])
    return grads.reshape(batch.shape[0], batch.shape[1], -1)


@pytest.mark.parametrize("overrides, online", [
    (["variant=pjepa"], True),
    (["variant=dyn_only"], True),
    (["variant=pjepa", "consistency_target=detached"], False),
    (["variant=stock"], False),
])
def test_consistency_target_branch_gradient(overrides, online):
    cfg, agent, _ = build([*overrides, *SMALL])
    assert agent.gating.target_has_gradient is online
    grads = encoding_gradients(agent, synthetic_batch(cfg))
    assert grads[0].abs().sum() > 0  # the online branch E(o_0) always learns from consistency
    assert bool(grads[1:].any()) is online


def test_online_target_needs_the_consistency_row():
    # online target but consistency gated off: neither branch may learn from it
    cfg, agent, _ = build(["variant=aux_only", "consistency_target=online", *SMALL])
    assert not agent.gating.target_has_gradient
    assert not encoding_gradients(agent, synthetic_batch(cfg)).any()


def test_decoder_probe_trains_without_touching_the_encoder():
    cfg, agent, _ = build(["variant=pjepa", *SMALL, "decoder=true"])
    assert cfg.gating.decoder is False
    backward_of(agent, synthetic_batch(cfg), "decoder")
    for name, p in agent.model.encoder.named_parameters():
        assert p.grad is None or not p.grad.any(), name
    decoder = extension_term(agent, "decoder")
    silent = [n for n, p in decoder.named_parameters() if p.grad is None or not p.grad.any()]
    assert silent == []


@pytest.mark.parametrize("grad_clip_norm", [200, 1e-3])
def test_the_decoder_probes_gradient_does_not_change_the_models_update(grad_clip_norm):
    # A probe with a huge gradient (its output bias far off) must leave the model's update as it is,
    # whether or not the model's own clip binds: the probe is clipped on its own. The wild probe comes
    # on the second update, since Adam's first step does not depend on the gradient's scale.
    def encoder_after_update(probe_bias: float) -> list[torch.Tensor]:
        cfg, agent, _ = build(["variant=pjepa", *SMALL, "decoder=true", f"grad_clip_norm={grad_clip_norm}"])
        agent.update(synthetic_batch(cfg, seed=1))
        with torch.no_grad():
            extension_term(agent, "decoder").decoder.deconv[-1].bias.fill_(probe_bias)
        agent.update(synthetic_batch(cfg, seed=2))
        return [p.detach().clone() for p in agent.model.encoder.parameters()]

    for calm, wild in zip(encoder_after_update(0.0), encoder_after_update(1e4)):
        torch.testing.assert_close(calm, wild, rtol=0, atol=0)


# -- the random-projection target ----------------------------------------------------

RANDOM_AUX = ["variant=pjepa", *SMALL, "aux=random", "aux_dim=16", "decoder=false"]


def projection(agent) -> torch.Tensor:
    """Return the random-projection weight of ``agent``'s auxiliary target."""
    target = extension_term(agent, "auxiliary").target
    assert isinstance(target, RandomProjectionTarget)
    return target.weight


def test_random_projection_is_a_buffer_not_a_parameter():
    _, agent, _ = build(RANDOM_AUX)
    aux = extension_term(agent, "auxiliary")
    assert "target.weight" in dict(aux.named_buffers())
    assert "target.weight" not in dict(aux.named_parameters())
    assert not projection(agent).requires_grad
    optimised = {id(p) for g in agent.optim.param_groups for p in g["params"]}
    assert id(projection(agent)) not in optimised


def test_random_projection_never_trains():
    cfg, agent, _ = build(RANDOM_AUX)
    before = projection(agent).clone()
    head_before = [p.detach().clone() for p in extension_term(agent, "auxiliary").head.parameters()]
    for seed in range(3):
        metrics = agent.update(synthetic_batch(cfg, seed))
    assert torch.isfinite(torch.tensor(metrics["auxiliary_loss"]))
    assert torch.equal(projection(agent), before)
    head_after = list(extension_term(agent, "auxiliary").head.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(head_before, head_after))  # the update did run


def test_random_projection_survives_a_checkpoint_without_being_stored_in_it(tmp_path):
    _, saved, _ = build([*RANDOM_AUX, "seed=3"])
    path = save_checkpoint(tmp_path / "agent.pt", {"agent": saved.state_dict()})
    stored = load_checkpoint(path)["agent"]["extra_losses"]
    assert not [k for k in stored if k.endswith("target.weight")]  # W is drawn from the seed, not saved
    assert [k for k in stored if k.endswith("target.fingerprint")]
    _, restored, _ = build([*RANDOM_AUX, "seed=3"])
    restored.load_state_dict(load_checkpoint(path)["agent"])
    assert torch.equal(projection(restored), projection(saved))


def test_random_projection_depends_only_on_the_seed():
    _, first, _ = build([*RANDOM_AUX, "seed=3"])
    _, second, _ = build([*RANDOM_AUX, "seed=3"])
    assert torch.equal(projection(first), projection(second))


# -- registering auxiliary targets -------------------------------------------------------


def test_count_parity_target_builds_and_updates():
    cfg, agent, _ = build(["variant=pjepa", *SMALL, "aux=count_parity", "decoder=false"])
    assert extension_term(agent, "auxiliary").target.name == "count_parity"
    metrics = agent.update(synthetic_batch(cfg))
    assert torch.isfinite(torch.tensor(metrics["auxiliary_loss"]))
    assert agent.num_updates == 1


class MeanBrightnessTarget(AuxTarget):
    """p(o) = mean pixel value in [0, 1]: a target the package does not ship."""

    name, loss, dim, info_keys = "mean_brightness", "twohot", 1, ()

    def forward(self, obs, info):
        return obs.float().flatten(1).mean(1, keepdim=True) / 255.0


def test_a_newly_registered_target_needs_no_other_change(monkeypatch):
    monkeypatch.setitem(AUX_TARGETS, "mean_brightness", lambda obs_shape, dim, seed: MeanBrightnessTarget())
    cfg, agent, _ = build(["variant=pjepa", *SMALL, "aux=mean_brightness", "decoder=false"])
    assert isinstance(extension_term(agent, "auxiliary").target, MeanBrightnessTarget)
    metrics = agent.update(synthetic_batch(cfg))
    assert torch.isfinite(torch.tensor(metrics["auxiliary_loss"]))


def test_target_reading_missing_info_is_rejected_by_name():
    with pytest.raises(ValueError, match=r"aux=count needs info \['count'\]"):
        build(["aux=count", "device=cpu", "compile=false"], task="pendulum")


# -- the gating table's validation ------------------------------------------------------

CORE_ROW = {"consistency": True, "reward": True, "value": True, "termination": True, "policy": False}


def test_gating_accepts_rows_of_inactive_extension_terms():
    gating = GradientGating.from_config({**CORE_ROW, "decoder": False}, "detached", optional=("decoder",))
    assert gating.reaches_encoder["reward"] is True


@pytest.mark.parametrize("table, target, kwargs, message", [
    ({**CORE_ROW, "bogus": True}, "detached", {"optional": ("auxiliary",)},
     r"unknown loss \['bogus'\]; allowed rows: consistency, reward, value, termination, policy, auxiliary"),
    ({k: v for k, v in CORE_ROW.items() if k != "value"}, "detached", {}, r"no row for \['value'\]"),
    (CORE_ROW, "detached", {"active": ("auxiliary",)}, r"no row for \['auxiliary'\]"),
    ({**CORE_ROW, "reward": 1}, "detached", {}, r"gating\.reward must be true or false, got 1"),
    ({**CORE_ROW, "reward": "yes"}, "detached", {}, r"gating\.reward must be true or false"),
    ({**CORE_ROW, "policy": True}, "detached", {}, r"gating\.policy=true is not supported"),
    (CORE_ROW, "sometimes", {}, r"consistency_target must be one of detached, online, got 'sometimes'"),
])
def test_gating_rejects_bad_tables(table, target, kwargs, message):
    with pytest.raises(ValueError, match=message):
        GradientGating.from_config(table, target, **kwargs)


def test_every_core_loss_is_a_gating_row():
    assert set(CORE_LOSSES) == set(CORE_ROW)
    assert set(TERMS) - set(CORE_LOSSES) == set(plugin.EXTENSION_LOSSES)


def test_agent_rejects_a_non_bool_row_from_the_command_line():
    with pytest.raises(ValueError, match=r"gating\.value must be true or false"):
        build(["variant=pjepa", *SMALL, "gating.value=1"])


def test_compiled_pjepa_agent_updates_and_plans(monkeypatch):
    # The losses of the extension are traced with the core's (torch.compile of the whole model loss).
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    cfg, agent, _ = build(["variant=pjepa", *SMALL, "decoder=true", "num_samples=32", "num_elites=4",
                           "num_pi_trajs=4", "iterations=2"])
    agent.compile()
    metrics = agent.update(synthetic_batch(cfg))
    assert {"auxiliary_loss", "decoder_loss"} <= set(metrics) and all(math.isfinite(v) for v in metrics.values())
    assert not any(f.failed for f in (agent._losses, agent._pi_terms))
    action = agent.act(synthetic_batch(cfg)["obs"][0, 0], t0=True)
    assert action.shape == (cfg.action_dim,) and not agent._mppi.failed
