"""Facts about the TD-MPC2 agent (tdmpc2/agent.py, tdmpc2/gating.py): gradient gating, update, planning, acting."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tdmpc2 import math as tmath
from tdmpc2.agent import NonFiniteLossError
from tdmpc2.gating import GradientGating

CORE_TERMS = ("consistency", "reward", "value", "termination")
COEFS = {"consistency": "consistency_coef", "reward": "reward_coef", "value": "value_coef",
         "termination": "termination_coef"}
HEADS = {"consistency": "_dynamics", "reward": "_reward", "value": "_Qs", "termination": "_termination"}

# Gating tables (rows of the core terms); the presets' rows and a few mixed ones.
TABLES = {
    "stock": dict(consistency=True, reward=True, value=True, termination=True),
    "pjepa": dict(consistency=True, reward=False, value=False, termination=False),
    "aux_only": dict(consistency=False, reward=False, value=False, termination=False),
    "reward_only": dict(consistency=False, reward=True, value=False, termination=False),
    "value_termination": dict(consistency=False, reward=False, value=True, termination=True),
    "no_value": dict(consistency=True, reward=True, value=False, termination=True),
}


def gating_overrides(table: dict, target: str = "detached") -> list[str]:
    """Return the overrides that set the gating rows of ``table`` and the consistency target."""
    return [f"gating.{k}={str(v).lower()}" for k, v in table.items()] + [f"consistency_target={target}"]


def only_term(term: str | None) -> list[str]:
    """Return overrides that zero every core loss coefficient except ``term``'s (all of them for None)."""
    return [f"{coef}={1 if name == term else 0}" for name, coef in COEFS.items()]


def randomise_output_layers(agent) -> None:
    """Give the zero-initialised last layers of the reward head and the Qs weights, so gradient flows through them."""
    with torch.no_grad():
        agent.model._Qs.linears[-1].weight.normal_(0, 0.5)
        agent.model._reward[-1].weight.normal_(0, 0.5)


def gradient_size(params) -> float:
    """Return the summed absolute gradient of ``params`` (0 where no gradient arrived)."""
    return sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)


@pytest.fixture
def episodic(builders):
    """The toy task, episodic (so the termination head and loss exist)."""
    return builders.toy_task_info(episodic=True)


# ---------------------------------------------------------------- gradient gating


@pytest.mark.parametrize("table_name", TABLES)
def test_each_loss_reaches_the_encoder_exactly_where_the_table_says(builders, episodic, table_name):
    table = TABLES[table_name]
    for term in CORE_TERMS:
        cfg = builders.tiny_config(*gating_overrides(table), *only_term(term), task_info=episodic)
        agent = builders.make_agent(cfg)
        randomise_output_layers(agent)
        total, _, _ = agent._losses(builders.make_batch(cfg))
        total.backward()
        reaches = gradient_size(agent.model.encoder.parameters()) > 0
        assert reaches == table[term], f"{term}: encoder gradient {'present' if reaches else 'absent'}"
        # The term's own head trains whatever the table says.
        assert gradient_size(getattr(agent.model, HEADS[term]).parameters()) > 0, f"{term}: its head got no gradient"


@pytest.mark.parametrize("target, later_frames_get_gradient", [("detached", False), ("online", True)])
def test_consistency_target_gradient(builders, target, later_frames_get_gradient):
    cfg = builders.tiny_config(*gating_overrides(TABLES["stock"], target), *only_term("consistency"))
    agent = builders.make_agent(cfg)
    batch = builders.make_batch(cfg)
    obs = batch["obs"].clone().requires_grad_(True)
    batch["obs"] = obs
    total, _, _ = agent._losses(batch)
    total.backward()
    per_frame = obs.grad.abs().flatten(1).sum(1)
    assert per_frame[0] > 0  # z_0 = E(o_0) always learns from the consistency loss
    if later_frames_get_gradient:
        assert (per_frame[1:] > 0).all()
    else:
        assert (per_frame[1:] == 0).all(), "the stop-gradient target E(o_1..H) passed gradient to the encoder"


def test_gating_changes_gradients_not_loss_values(builders, episodic):
    values = []
    for table in (TABLES["stock"], TABLES["aux_only"]):
        for target in ("detached", "online"):
            cfg = builders.tiny_config(*gating_overrides(table, target), task_info=episodic)
            agent = builders.make_agent(cfg)
            randomise_output_layers(agent)
            torch.manual_seed(1)
            total, metrics, _ = agent._losses(builders.make_batch(cfg))
            values.append((total.item(), {k: v.item() for k, v in metrics.items()}))
    for total, metrics in values[1:]:
        assert total == pytest.approx(values[0][0], rel=1e-6)
        assert metrics == pytest.approx(values[0][1], rel=1e-6)


class SquaredLatent(nn.Module):
    """A stand-in extension loss: mean of a linear read-out of the latents, squared."""

    name = "auxiliary"
    weight = 1.0

    def __init__(self, latent_dim: int):
        super().__init__()
        self.head = nn.Linear(latent_dim, 1)

    def forward(self, z, batch):
        self.seen_shape = tuple(z.shape)
        return self.head(z).pow(2).mean(), {"aux_probe": 1.5}


@pytest.mark.parametrize("reaches", [True, False])
def test_extension_loss_is_gated_by_its_row(builders, reaches):
    cfg = builders.tiny_config(*only_term(None), f"gating.auxiliary={str(reaches).lower()}")
    term = SquaredLatent(cfg.latent_dim)
    agent = builders.make_agent(cfg, extra_losses=[term])
    batch = builders.make_batch(cfg)
    obs = batch["obs"].clone().requires_grad_(True)
    batch["obs"] = obs
    total, metrics, _ = agent._losses(batch)
    total.backward()
    assert term.seen_shape == (cfg.horizon + 1, cfg.batch_size, cfg.latent_dim)
    assert "auxiliary_loss" in metrics and metrics["aux_probe"] == 1.5
    assert gradient_size(term.parameters()) > 0
    per_frame = obs.grad.abs().flatten(1).sum(1) if obs.grad is not None else torch.zeros(cfg.horizon + 1)
    assert bool((per_frame > 0).all()) == reaches and bool((per_frame > 0).any()) == reaches
    # Its parameters are trained by the model optimizer.
    optimised = {id(p) for g in agent.optim.param_groups for p in g["params"]}
    assert all(id(p) in optimised for p in term.parameters())


def test_gating_table_rejects_bad_rows():
    rows = dict(consistency=True, reward=True, value=True, termination=True, policy=False)
    assert GradientGating.from_config(rows, "detached").reaches_encoder == rows
    with pytest.raises(ValueError, match="unknown loss"):
        GradientGating.from_config({**rows, "decoder": True}, "detached")
    assert GradientGating.from_config({**rows, "decoder": True}, "detached", optional=["decoder"])
    with pytest.raises(ValueError, match="no row"):
        GradientGating.from_config({k: v for k, v in rows.items() if k != "value"}, "detached")
    with pytest.raises(ValueError, match="no row"):
        GradientGating.from_config(rows, "detached", active=["auxiliary"])
    with pytest.raises(ValueError, match="true or false"):
        GradientGating.from_config({**rows, "reward": "yes"}, "detached")
    with pytest.raises(ValueError, match="policy"):
        GradientGating.from_config({**rows, "policy": True}, "detached")
    with pytest.raises(ValueError, match="detached, online"):
        GradientGating.from_config(rows, "stopgrad")


def test_agent_rejects_policy_gradient_into_the_encoder(builders):
    with pytest.raises(ValueError, match="policy"):
        builders.make_agent(builders.tiny_config("gating.policy=true"))


def test_target_has_gradient_only_when_consistency_reaches_the_encoder():
    rows = dict(consistency=True, reward=True, value=True, termination=True, policy=False)
    assert GradientGating.from_config(rows, "online").target_has_gradient
    assert not GradientGating.from_config(rows, "detached").target_has_gradient
    assert not GradientGating.from_config({**rows, "consistency": False}, "online").target_has_gradient


# ---------------------------------------------------------------- losses and update


def test_losses_ignore_the_nan_first_row(builders, episodic):
    cfg = builders.tiny_config(task_info=episodic)
    total, metrics, zs = builders.make_agent(cfg)._losses(builders.make_batch(cfg))
    assert torch.isfinite(total)
    assert set(metrics) == {"consistency_loss", "reward_loss", "value_loss", "termination_loss"}
    assert zs.shape == (cfg.horizon + 1, cfg.batch_size, cfg.latent_dim)


def test_initial_reward_and_value_losses_are_the_uniform_cross_entropy(builders):
    # Zero-initialised heads predict uniform logits: CE = log(num_bins) for any target in the support.
    cfg = builders.tiny_config()
    _, metrics, _ = builders.make_agent(cfg)._losses(builders.make_batch(cfg))
    rho = [cfg.rho**t for t in range(cfg.horizon)]
    expected = math.log(cfg.num_bins) * sum(rho) / cfg.horizon
    assert float(metrics["reward_loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["value_loss"]) == pytest.approx(expected, rel=1e-5)


def test_update_trains_the_model_policy_and_target(builders):
    cfg = builders.tiny_config("tau=0.25")
    agent = builders.make_agent(cfg)
    model = agent.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    metrics = agent.update(builders.make_batch(cfg))
    assert agent.num_updates == 1
    keys = ("total_loss", "consistency_loss", "reward_loss", "value_loss", "grad_norm", "pi_loss", "pi_entropy", "pi_scale")
    for key in keys:
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    after = model.state_dict()
    for prefix in ("_encoder.", "_dynamics.", "_reward.", "_Qs.", "_pi."):
        changed = [k for k in after if k.startswith(prefix) and not torch.equal(after[k], before[k])]
        assert changed, f"{prefix} did not change"
    for name, p in model._target_Qs.named_parameters():
        old, online = before[f"_target_Qs.{name}"], after[f"_Qs.{name}"]
        torch.testing.assert_close(p, old + 0.25 * (online - old), rtol=1e-5, atol=1e-7)


def test_non_finite_loss_raises_before_any_weight_changes(builders):
    cfg = builders.tiny_config()
    agent = builders.make_agent(cfg)
    batch = builders.make_batch(cfg)
    batch["obs"][0, 0, 0] = float("inf")
    before = {k: v.clone() for k, v in agent.model.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match="non-finite model loss at update 0"):
        agent.update(batch)
    assert agent.num_updates == 0
    for k, v in agent.model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("where", ["reward", "next_obs"])
def test_non_finite_targets_raise_the_clear_error(builders, where):
    cfg = builders.tiny_config()
    agent = builders.make_agent(cfg)
    batch = builders.make_batch(cfg)
    if where == "reward":
        batch["reward"][2, 0, 0] = float("nan")
    else:
        batch["obs"][2, 0, 0] = float("inf")
    with pytest.raises(NonFiniteLossError):
        agent.update(batch)


def test_policy_update_trains_only_the_policy(builders):
    cfg = builders.tiny_config()
    agent = builders.make_agent(cfg)
    randomise_output_layers(agent)
    z = agent.model.encode(builders.make_batch(cfg)["obs"])
    pi_before = [p.clone() for p in agent.model.policy_parameters()]
    agent._update_pi(z.detach())
    assert all(p.grad is None for p in agent.model.encoder.parameters())
    assert all(p.grad is None for p in agent.model.head_parameters())
    assert any(not torch.equal(p, q) for p, q in zip(agent.model.policy_parameters(), pi_before))


def test_encoder_learning_rate_is_scaled(builders):
    cfg = builders.tiny_config("lr=0.002", "enc_lr_scale=0.25")
    agent = builders.make_agent(cfg)
    groups = agent.optim.param_groups
    assert groups[0]["lr"] == pytest.approx(0.0005) and groups[1]["lr"] == pytest.approx(0.002)
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in agent.model.encoder.parameters()}
    assert agent.pi_optim.param_groups[0]["lr"] == pytest.approx(0.002)


# ---------------------------------------------------------------- planning and acting


def install_toy_model(agent, best: torch.Tensor) -> None:
    """Make the world model a known problem: reward -|a - best|^2 for any z, identity dynamics, Q = 0."""
    model = agent.model

    def reward(z, a):
        r = -(a - best).pow(2).sum(-1, keepdim=True)
        return tmath.two_hot(r, model.bins).clamp_min(1e-30).log()

    model.reward = reward
    model.next = lambda z, a: z
    model.Q = lambda z, a, return_type="min", target=False, detach=False: torch.zeros(*z.shape[:-1], 1)


PLAN = ("mpc=true", "horizon=3", "num_samples=256", "num_elites=32", "num_pi_trajs=8", "iterations=6")


@pytest.mark.parametrize("seed", [0, 1])
def test_mppi_finds_the_best_action_of_a_toy_model(builders, seed):
    cfg = builders.tiny_config(*PLAN)
    agent = builders.make_agent(cfg, seed=seed)
    best = torch.tensor([0.3, -0.6])
    install_toy_model(agent, best)
    torch.manual_seed(seed)
    action = agent.act(torch.randn(cfg.obs_shape[0]), t0=True, eval_mode=True)
    assert action.shape == (2,)
    assert (action - best).abs().max() < 0.1, action
    # The whole planned mean (kept for the next step's warm start) is at the optimum.
    assert (agent._prev_mean - best).abs().max() < 0.1


def test_mppi_clamps_to_the_action_bounds(builders):
    cfg = builders.tiny_config(*PLAN)
    agent = builders.make_agent(cfg)
    install_toy_model(agent, torch.tensor([1.7, -0.2]))
    torch.manual_seed(0)
    action = agent.act(torch.randn(cfg.obs_shape[0]), t0=True, eval_mode=True)
    assert action[0] == pytest.approx(1.0, abs=0.05) and action.abs().max() <= 1
    assert action[1] == pytest.approx(-0.2, abs=0.1)


def test_mppi_exploration_noise_only_outside_eval(builders):
    cfg = builders.tiny_config(*PLAN)
    agent = builders.make_agent(cfg)
    install_toy_model(agent, torch.tensor([0.0, 0.0]))
    obs = torch.randn(cfg.obs_shape[0])
    actions = torch.stack([agent.act(obs, t0=True, eval_mode=False) for _ in range(6)])
    assert actions.abs().max() <= 1
    assert actions.std(0).min() > 0.01  # each draw adds std * noise to the chosen action


def test_mppi_stops_counting_reward_after_predicted_termination(builders):
    """Reward at t=0 wants a_0 = 0.5; every later step punishes a_0 far from -0.5 ten times harder.

    The latent carries a step counter (z[0]) and the previous action (z[1:3]).
    If the episode is predicted to end after the first step, only the first
    reward counts and the plan's first action is 0.5; otherwise it is pulled below 0.
    """
    def plan_first_action(terminates: bool) -> float:
        cfg = builders.tiny_config(*PLAN, task_info=builders.toy_task_info(episodic=True))
        agent = builders.make_agent(cfg)
        model = agent.model

        def reward(z, a):
            first = z[..., :1] == 0
            r = torch.where(first, -(a[..., :1] - 0.5).pow(2), -10 * (z[..., 1:2] + 0.5).pow(2))
            return tmath.two_hot(r, model.bins).clamp_min(1e-30).log()

        def next_latent(z, a):
            out = z.clone()
            out[..., 0] += 1
            out[..., 1:3] = a
            return out

        model.reward, model.next = reward, next_latent
        model.termination = lambda z, logits=False: (z[..., :1] >= 1).float() * float(terminates)
        model.Q = lambda z, a, return_type="min", target=False, detach=False: torch.zeros(*z.shape[:-1], 1)
        model.encode = lambda obs: torch.zeros(*obs.shape[:-1], cfg.latent_dim)
        torch.manual_seed(0)
        return float(agent.act(torch.zeros(cfg.obs_shape[0]), t0=True, eval_mode=True)[0])

    assert plan_first_action(terminates=True) == pytest.approx(0.5, abs=0.1)
    assert plan_first_action(terminates=False) < 0.0


def test_without_mpc_the_policy_prior_acts(builders):
    cfg = builders.tiny_config("mpc=false")
    agent = builders.make_agent(cfg)
    agent.plan = lambda *a, **k: pytest.fail("plan() called with mpc=false")
    obs = torch.randn(cfg.obs_shape[0])
    action = agent.act(obs, eval_mode=True)
    with torch.no_grad():
        mean_raw, _ = agent.model._pi(agent.model.encode(obs.unsqueeze(0))).chunk(2, -1)
    torch.testing.assert_close(action, torch.tanh(mean_raw[0]))
    torch.testing.assert_close(agent.act(obs, eval_mode=True), action)
    sampled = torch.stack([agent.act(obs, eval_mode=False) for _ in range(4)])
    assert sampled.abs().max() <= 1 and not torch.allclose(sampled[0], sampled[1])


def test_act_puts_the_networks_in_eval_mode(builders):
    cfg = builders.tiny_config("mpc=false")
    agent = builders.make_agent(cfg)
    agent.train()
    agent.act(torch.randn(cfg.obs_shape[0]), eval_mode=True)
    assert not agent.model.training
