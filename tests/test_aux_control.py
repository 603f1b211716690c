"""Facts about the auxiliary targets on control tasks (state vectors and stacked pixels), through the trainer's
episode records and the replay exactly as a run stores them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from tensordict import TensorDict

from envs import TaskInfo, make_env
from pjepa_ext import plugin
from pjepa_ext.aux_targets import RandomProjectionTarget, RewardTarget
from tdmpc2.config import resolve
from tdmpc2.stacked_replay import make_replay
from tdmpc2.trainer import EpisodeRecorder

pytestmark = pytest.mark.filterwarnings("ignore:.*DISPLAY")

REPO = Path(__file__).resolve().parents[1]
TINY = ["model_size=1", "enc_dim=32", "mlp_dim=32", "latent_dim=16", "num_q=2", "batch_size=8", "horizon=3",
        "aux_dim=32", "aux_hidden=32", "num_channels=8", "device=cpu", "compile=false", "precision=fp32", "size=none"]


def recorded_episodes(task: str, episodes: int, seed: int = 0) -> list[TensorDict]:
    """Return ``episodes`` random-action episodes of ``task`` (state observations) as the trainer records them."""
    env = make_env(task, seed=seed)
    info_keys, action_dim = env.task_info.info_keys, env.task_info.action_dim
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(episodes):
        recorder = EpisodeRecorder(info_keys, action_dim)
        obs, info = env.reset()
        recorder.start(obs, info)
        done = False
        while not done:
            action = rng.uniform(-1, 1, action_dim).astype(np.float32)
            obs, reward, terminated, truncated, info = env.step(action)
            recorder.add(obs, info, action, reward, terminated)
            done = terminated or truncated
        out.append(recorder.to_tensordict())
    return out


def flat_info(batch: TensorDict) -> dict[str, torch.Tensor]:
    return {k: v.reshape(-1) for k, v in batch["info"].items()}


@pytest.mark.parametrize("task", ["pendulum", "cartpole-balance"])
def test_reward_target_is_the_reward_received_on_arriving_and_zero_at_reset(task):
    target = RewardTarget()
    for episode in recorded_episodes(task, episodes=2):
        reward = episode["reward"]
        assert torch.isnan(reward[0]).all()  # the trainer stores no reward at reset
        p = target(episode["obs"], flat_info(episode))
        assert p[0].item() == 0.0
        assert torch.equal(p[1:], reward[1:])  # step t: the reward of the step that led to o_t (summed over repeats)
        assert (p[1:] != 0).any()


def test_reward_target_through_the_replay_is_zero_exactly_at_episode_starts():
    episodes = recorded_episodes("pendulum", episodes=3, seed=1)
    cfg = compose_run("task=pendulum", "variant=pjepa", "aux=reward", "seed_steps=200", "batch_size=64")
    replay = make_replay(cfg)
    for episode in episodes:
        replay.add(episode)
    starts_seen = 0
    for _ in range(40):  # 2,560 slices; one in 198 starts at a reset
        batch = replay.sample()
        p = RewardTarget()(batch["obs"].reshape(-1, *batch["obs"].shape[2:]), flat_info(batch))
        reward = batch["reward"].reshape(-1, 1)
        assert torch.equal(p, torch.nan_to_num(reward, nan=0.0))
        starts_seen += int(torch.isnan(reward).sum())
    assert starts_seen > 0  # some slices began at a reset, where the target is 0


def compose_run(*overrides: str, task_info: TaskInfo | None = None):
    """Return a resolved config for ``overrides`` on the tiny model (pendulum's task facts unless ``task_info``)."""
    with initialize_config_dir(config_dir=str(REPO), version_base=None):
        cfg = compose(config_name="config", overrides=[*TINY, *overrides])
    return resolve(cfg, task_info or make_env("pendulum").task_info)


PIXELS = TaskInfo(name="walker-walk", obs_type="rgb", obs_shape=(9, 64, 64), action_dim=6, episode_length=500,
                  episodic=False, info_keys=("obs_reward", "success"), action_repeat=2, frame_stack=3)


def replay_batch(cfg, seed: int = 0) -> TensorDict:
    """Return a batch ``(H+1, B)`` of random observations of ``cfg``'s shape and dtype, laid out as the replay's."""
    g = torch.Generator().manual_seed(seed)
    T, B = cfg.horizon + 1, cfg.batch_size
    if cfg.obs_type == "rgb":
        obs = torch.randint(0, 256, (T, B, *cfg.obs_shape), generator=g, dtype=torch.uint8)
    else:
        obs = torch.randn(T, B, *cfg.obs_shape, generator=g) * 3
    action = torch.rand(T, B, cfg.action_dim, generator=g) * 2 - 1
    reward = torch.rand(T, B, 1, generator=g)
    action[0], reward[0] = float("nan"), float("nan")
    info = TensorDict({"obs_reward": torch.nan_to_num(reward[..., 0]), "success": torch.zeros(T, B)}, batch_size=[T, B])
    return TensorDict({"obs": obs, "action": action, "reward": reward, "terminated": torch.zeros(T, B, 1),
                       "info": info}, batch_size=[T, B])


@pytest.mark.parametrize("task_info", [None, PIXELS], ids=["state", "pixels"])
def test_random_target_is_a_fixed_projection_of_the_observation(task_info):
    cfg = compose_run("variant=pjepa", "aux=random", task_info=task_info)
    torch.manual_seed(0)
    agent, _ = plugin.build_agent(cfg)
    loss = next(t for t in agent.extra_losses if t.name == "auxiliary")
    target = loss.target
    assert isinstance(target, RandomProjectionTarget)
    numel = int(np.prod(cfg.obs_shape))
    assert target.weight.shape == (32, numel) and not target.weight.requires_grad
    batch = replay_batch(cfg)
    obs = batch["obs"].reshape(-1, *cfg.obs_shape)
    x = obs.reshape(len(obs), -1).double()
    if obs.dtype == torch.uint8:
        x = x / 255.0 - 0.5  # pixels of the 3 stacked frames in [-0.5, 0.5]
    expected = (x @ target.weight.double().T).float()
    torch.testing.assert_close(target(obs, {}), expected, rtol=1e-4, atol=1e-4)
    # The same seed gives the same projection (it is not learnt; the checkpoint holds its fingerprint, not W).
    assert torch.equal(RandomProjectionTarget(cfg.obs_shape, 32, seed=cfg.seed).weight, target.weight)
    assert all(p is not target.weight for p in agent.extra_losses.parameters())  # a buffer: no optimiser step
    saved = agent.state_dict()["extra_losses"]
    assert not any(v.shape == target.weight.shape for v in saved.values())
    assert any(torch.equal(v, target.fingerprint) for v in saved.values())


def test_a_checkpoint_loads_only_into_the_random_projection_it_was_trained_with():
    cfg = compose_run("variant=pjepa", "aux=random")
    agent, _ = plugin.build_agent(cfg)
    target = next(t for t in agent.extra_losses if t.name == "auxiliary").target
    state = agent.state_dict()
    again, _ = plugin.build_agent(cfg)
    again.load_state_dict(state)  # the same seed draws the same W
    with open_dict(cfg):
        cfg.seed += 1
    other, _ = plugin.build_agent(cfg)
    with pytest.raises(RuntimeError, match="not the one the checkpoint was trained with"):
        other.load_state_dict(state)
    # A checkpoint written when W itself was saved loads that W, whatever the seed draws.
    key = next(k for k in state["extra_losses"] if k.endswith("fingerprint"))
    old = {**state, "extra_losses": {k: v for k, v in state["extra_losses"].items() if k != key}}
    old["extra_losses"][key.replace("fingerprint", "weight")] = target.weight * 2
    other.load_state_dict(old)
    loaded = next(t for t in other.extra_losses if t.name == "auxiliary").target
    assert torch.equal(loaded.weight, target.weight * 2)


@pytest.mark.parametrize("aux", ["reward", "random"])
@pytest.mark.parametrize("task_info", [None, PIXELS], ids=["state", "pixels"])
def test_pjepa_updates_on_control_tasks_with_the_auxiliary_loss_reaching_the_encoder(aux, task_info):
    cfg = compose_run("variant=pjepa", f"aux={aux}", task_info=task_info)
    torch.manual_seed(0)
    agent, _ = plugin.build_agent(cfg)
    assert agent.gating.reaches_encoder["auxiliary"]
    before = [p.detach().clone() for p in agent.model.encoder.parameters()]
    metrics = agent.update(replay_batch(cfg))
    assert np.isfinite(metrics["auxiliary_loss"]) and metrics["auxiliary_loss"] > 0
    assert all(np.isfinite(v) for v in metrics.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.model.encoder.parameters()))


def test_counting_targets_on_a_control_task_fail_naming_the_missing_info():
    cfg = compose_run("variant=pjepa", "aux=count")
    with pytest.raises(ValueError, match=r"aux=count needs info \['count'\], which task 'pendulum' does not report"):
        plugin.build_agent(cfg)
