"""Mixed precision: the choice of ``precision=auto``, what stays float32, and bf16 learning the same as fp32."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tdmpc2 import kernels, native, precision
from tdmpc2 import math as tmath
from tdmpc2.agent import TDMPC2
from tdmpc2.config import ConfigError, resolve

from test_agent import PLAN, install_toy_model


# ---------------------------------------------------------------- choosing


def test_explicit_precisions_are_kept_and_bad_ones_rejected(builders):
    assert precision.choose("fp32", torch.device("cpu")) == ("fp32", "set in the config")
    assert precision.choose("bf16", torch.device("cpu"))[0] == "bf16"
    with pytest.raises(ValueError, match="allowed values: auto, fp32, bf16"):
        precision.choose("fp16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="precision='half'; allowed values: auto, fp32, bf16"):
        resolve(builders.compose_config("precision=half", "device=cpu"), builders.toy_task_info())


@pytest.fixture
def fresh_cpu_choice():
    precision._cpu_choice.cache_clear()
    yield
    precision._cpu_choice.cache_clear()


def test_auto_takes_bf16_on_a_cpu_with_amx_without_measuring(monkeypatch, fresh_cpu_choice):
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "amx_tile", "amx_bf16"})
    monkeypatch.setattr(precision, "matmul_gflops", lambda *a, **k: pytest.fail("measured although AMX is there"))
    assert precision.choose("auto", torch.device("cpu")) == ("bf16", "the CPU has AMX (amx_bf16)")


@pytest.mark.parametrize("bf16_gflops, expected", [(300.0, "bf16"), (110.0, "fp32"), (30.0, "fp32")])
def test_auto_on_other_cpus_follows_the_measured_matmul_speed(monkeypatch, fresh_cpu_choice, bf16_gflops, expected):
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    monkeypatch.setattr(precision, "matmul_gflops", lambda dtype, *a, **k: bf16_gflops if dtype == torch.bfloat16 else 100.0)
    choice, reason = precision.choose("auto", torch.device("cpu"))
    assert choice == expected
    assert f"{bf16_gflops:.0f} GFLOP/s in bf16 against 100 in fp32 (avx512_bf16)" in reason


def test_auto_on_cuda_follows_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "GPU X")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.choose("auto", torch.device("cuda")) == ("bf16", "GPU X has bf16 tensor cores")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision.choose("auto", torch.device("cuda"))[0] == "fp32"


def test_resolve_records_the_choice_and_its_reason(builders):
    cfg = resolve(builders.compose_config("precision=bf16", "device=cpu"), builders.toy_task_info())
    assert (cfg.precision, cfg.precision_reason) == ("bf16", "set in the config")


def test_fp32_regions_add_nothing():
    p = precision.Precision("fp32", "cpu")
    fn = lambda x: x  # noqa: E731
    assert p.wrap(fn) is fn
    with p.region():
        assert not torch.is_autocast_enabled("cpu")
    with precision.Precision("bf16", "cpu").region():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


# ---------------------------------------------------------------- what stays float32


def test_delicate_functions_compute_in_float32():
    bins = tmath.Bins()
    logits = torch.randn(6, 101).bfloat16()
    assert tmath.two_hot_inv(logits, bins).dtype == torch.float32
    assert tmath.soft_ce(logits, torch.randn(6, 1), bins).dtype == torch.float32
    assert tmath.symexp(torch.tensor([3.0], dtype=torch.bfloat16)).dtype == torch.float32
    # Upcasting first gives exactly the float32 result of the rounded inputs.
    torch.testing.assert_close(tmath.soft_ce(logits, torch.ones(6, 1), bins),
                               tmath.soft_ce(logits.float(), torch.ones(6, 1), bins), rtol=0, atol=0)


def test_tanh_squash_keeps_saturated_samples_exact_under_bf16():
    """In bf16, tanh(u) rounds to exactly 1 above |u| ~ 3.5 and log(1 - tanh^2 + 1e-6) hits log(1e-6);
    the squash must see float32 values even when the policy head's output is bf16."""
    head = torch.tensor([[4.0, 5.0, -4.5, -3.0, 0.0, -20.0]] * 4, dtype=torch.bfloat16)  # means then raw log-stds
    torch.manual_seed(0)
    _, info = tmath.policy_sample(head, -10, 2)
    torch.manual_seed(0)
    _, info32 = tmath.policy_sample(head.float(), -10, 2)
    for key in ("entropy", "scaled_entropy", "mean"):
        assert info[key].dtype == torch.float32
        torch.testing.assert_close(info[key], info32[key], rtol=0, atol=0)
    # What a bf16 computation of the correction gives instead, for contrast: -log(1e-6) per dimension.
    mean = torch.tanh(head[:, :3])
    assert (torch.log(1 - mean.pow(2) + 1e-6) < -13).any()


@pytest.mark.parametrize("compiled", [False, True])
def test_norm_blocks_take_bf16_inputs_and_compute_in_float32(compiled):
    if compiled and not native.available():
        pytest.skip("native kernels not built on this machine")
    torch.manual_seed(0)
    x = torch.randn(2, 7, 32).bfloat16().requires_grad_()
    w, b = torch.randn(32).requires_grad_(), torch.randn(32).requires_grad_()
    y = kernels.norm_mish(x, w, b, compiled=compiled)
    assert y.dtype == torch.float32
    expected = F.mish(F.layer_norm(x.detach().float(), (32,), w.detach(), b.detach()))
    torch.testing.assert_close(y.detach(), expected, rtol=1e-5, atol=1e-5)
    y.sum().backward()
    assert x.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.float32
    s = kernels.norm_simnorm(x.detach(), w.detach(), b.detach(), 1e-5, 8, fused=compiled)
    assert s.dtype == torch.float32
    torch.testing.assert_close(s.view(2, 7, 4, 8).sum(-1), torch.ones(2, 7, 4))


# ---------------------------------------------------------------- learning unchanged


def _perturbed_agents(builders, *overrides: str):
    """Return ``{precision: agent}`` with identical weights, every parameter perturbed away from its
    initialisation (TD-MPC2 starts the reward and Q heads at zero, which would hide their gradients)."""
    agents = {}
    for name in ("fp32", "bf16"):
        cfg = builders.tiny_config(*overrides, f"precision={name}", task_info=builders.toy_task_info(episodic=True))
        agent = builders.make_agent(cfg, seed=0)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in agent.model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
        agent.model._target_Qs.load_state_dict(agent.model._Qs.state_dict())
        agents[name] = agent
    return agents


def _module_gradients(agent: TDMPC2) -> dict[str, torch.Tensor]:
    m = agent.model
    modules = {"encoder": m._encoder, "dynamics": m._dynamics, "reward": m._reward, "termination": m._termination,
               "Q": m._Qs}
    return {k: torch.cat([p.grad.flatten() for p in mod.parameters()]) for k, mod in modules.items()}


@pytest.mark.parametrize("overrides", [(), ("model_size=1", "enc_dim=256", "mlp_dim=384", "latent_dim=128", "num_q=2",
                                             "batch_size=64")], ids=["tiny", "size1"])
def test_bf16_losses_and_gradients_match_fp32(builders, overrides):
    agents = _perturbed_agents(builders, *overrides)
    batch = builders.make_batch(agents["fp32"].cfg, seed=2)
    results = {}
    for name, agent in agents.items():
        agent.train()
        torch.manual_seed(5)  # the same dropout masks and policy samples in both precisions
        total, metrics, zs = agent._losses(batch)
        total.backward()
        q, scaled_entropy, _ = agent._pi_terms(zs.detach())
        (q.mean() + 1e-4 * scaled_entropy.mean()).backward()
        pi_grad = torch.cat([p.grad.flatten() for p in agent.model.policy_parameters()])
        results[name] = (total, metrics, {**_module_gradients(agent), "policy": pi_grad})
    (t32, m32, g32), (t16, m16, g16) = results["fp32"], results["bf16"]
    assert t16.dtype == torch.float32
    for key in m32:
        assert m16[key].dtype == torch.float32, key
        assert float(m16[key]) == pytest.approx(float(m32[key]), rel=0.02), key
    for key in g32:
        assert g16[key].dtype == torch.float32
        cosine = F.cosine_similarity(g32[key], g16[key], dim=0)
        assert cosine >= 0.99, (key, float(cosine))


def test_bf16_update_keeps_weights_and_optimiser_state_float32(builders):
    agent = _perturbed_agents(builders)["bf16"]
    metrics = agent.update(builders.make_batch(agent.cfg))
    assert all(v == v for v in metrics.values())  # finite numbers, no NaN
    tensors = [*agent.model.parameters(), *agent.model.buffers(), *agent.scale.buffers()]
    for opt in (agent.optim, agent.pi_optim):
        tensors += [t for state in opt.state.values() for t in state.values() if torch.is_tensor(t) and t.is_floating_point()]
    assert tensors and all(t.dtype == torch.float32 for t in tensors)


@pytest.mark.parametrize("seed", [0, 1])
def test_bf16_mppi_finds_the_toy_models_best_action_as_fp32_does(builders, seed):
    best = torch.tensor([0.3, -0.6])
    actions = {}
    for name in ("fp32", "bf16"):
        cfg = builders.tiny_config(*PLAN, f"precision={name}")
        agent = builders.make_agent(cfg, seed=seed)
        install_toy_model(agent, best)
        torch.manual_seed(seed)
        actions[name] = agent.act(torch.randn(cfg.obs_shape[0]), t0=True, eval_mode=True)
    assert (actions["bf16"] - best).abs().max() < 0.1, actions
    assert (actions["bf16"] - actions["fp32"]).abs().max() < 0.1, actions


def test_bf16_act_runs_the_real_model_under_autocast(builders, monkeypatch):
    cfg = builders.tiny_config(*PLAN, "precision=bf16")
    agent = builders.make_agent(cfg)
    seen = []
    original = agent.model.next
    monkeypatch.setattr(agent.model, "next", lambda z, a: seen.append(torch.is_autocast_enabled("cpu")) or original(z, a))
    action = agent.act(torch.randn(cfg.obs_shape[0]), t0=True)
    assert action.dtype == torch.float32 and action.shape == (2,)
    assert seen and all(seen)
    policy = builders.make_agent(builders.tiny_config("mpc=false", "precision=bf16"))
    assert policy.act(torch.randn(cfg.obs_shape[0]), eval_mode=True).dtype == torch.float32


@pytest.mark.parametrize("variant, aux", [("pjepa", "reward"), ("pjepa", "random"), ("stock", "none")])
def test_bf16_pjepa_losses_and_gradients_match_fp32(variant, aux):
    """The P-JEPA ResNet encoder (convolutions in bf16), the auxiliary head and the decoder probe, and the
    stock variant on pixels, at the CPU preset's shapes with a small batch."""
    from test_pjepa import build, synthetic_batch

    overrides = ["size=cpu", f"variant={variant}", f"aux={aux}", "batch_size=16", "device=cpu", "compile=false"]
    results = {}
    for name in ("fp32", "bf16"):
        cfg, agent, _ = build([*overrides, f"precision={name}"])
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in [*agent.model.parameters(), *agent.extra_losses.parameters()]:
                p.add_(0.02 * torch.randn(p.shape, generator=gen))
        agent.train()
        torch.manual_seed(5)
        total, metrics, _ = agent._losses(synthetic_batch(cfg, seed=3))
        total.backward()
        grads = {"encoder": agent.model.encoder, "dynamics": agent.model._dynamics, "extensions": agent.extra_losses}
        results[name] = (metrics, {k: torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])
                                   for k, m in grads.items()})
    (m32, g32), (m16, g16) = results["fp32"], results["bf16"]
    for key in m32:
        assert float(m16[key]) == pytest.approx(float(m32[key]), rel=0.02, abs=1e-6), key
    for key in g32:
        if g32[key].numel() == 0:
            continue
        cosine = F.cosine_similarity(g32[key], g16[key], dim=0)
        assert cosine >= 0.99, (key, float(cosine))
