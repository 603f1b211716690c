"""Facts about pixel dm_control (obs=rgb), MuJoCo's rendering back-end and the frame-stacking replay."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from envs import gl, make_env
from envs.dmcontrol import DMControlEnv
from tdmpc2.buffer import EpisodeBuffer
from tdmpc2.stacked_replay import FrameStackBuffer, make_replay

# Importing dm_control without a display makes glfw warn; rendering goes through EGL or OSMesa.
pytestmark = pytest.mark.filterwarnings("ignore:.*DISPLAY")


# ---------------------------------------------------------------- the pixel environment


def test_pixel_task_observes_three_stacked_64x64_frames_and_repeats_the_reset_frame():
    env = make_env("cartpole-swingup", seed=3, obs="rgb")
    info = env.task_info
    assert (info.obs_type, info.obs_shape, info.frame_stack) == ("rgb", (9, 64, 64), 3)
    assert (info.episode_length, info.action_repeat, info.action_dim) == (500, 2, 1)
    assert env.observation_space.shape == (9, 64, 64) and env.observation_space.dtype == np.uint8
    obs, _ = env.reset()
    assert obs.shape == (9, 64, 64) and obs.dtype == np.uint8
    assert obs.std() > 0  # a rendered scene, not a blank frame
    np.testing.assert_array_equal(obs[0:3], obs[3:6])
    np.testing.assert_array_equal(obs[3:6], obs[6:9])
    previous = obs
    for unit in (1.0, -1.0):
        obs, *_ = env.step(np.array([unit], np.float32))
        np.testing.assert_array_equal(obs[0:6], previous[3:9])  # the stack shifts by one frame
        assert not np.array_equal(obs[6:9], previous[6:9])
        previous = obs


def test_a_pixel_step_repeats_the_action_twice_and_renders_camera_0_at_64x64():
    from dm_control import suite

    env = make_env("cartpole-swingup", seed=5, obs="rgb")
    reference = suite.load("cartpole", "swingup", task_kwargs={"random": 5})
    reference.reset()
    obs, _ = env.reset()
    np.testing.assert_array_equal(obs[6:9], reference.physics.render(64, 64, camera_id=0).transpose(2, 0, 1))
    for unit in (0.5, -1.0):
        obs, reward, *_ = env.step(np.array([unit], np.float32))
        timesteps = [reference.step([unit]) for _ in range(2)]
        assert reward == pytest.approx(sum(t.reward for t in timesteps))
        np.testing.assert_array_equal(obs[6:9], reference.physics.render(64, 64, camera_id=0).transpose(2, 0, 1))


def test_quadruped_is_seen_from_camera_2():
    env = make_env("quadruped-walk", seed=0, obs="rgb")
    obs, _ = env.reset()
    physics = env.unwrapped._env.physics
    np.testing.assert_array_equal(obs[6:9], physics.render(64, 64, camera_id=2).transpose(2, 0, 1))
    assert not np.array_equal(obs[6:9], physics.render(64, 64, camera_id=0).transpose(2, 0, 1))


def test_a_pixel_episode_is_500_agent_steps(monkeypatch):
    # The wrappers are under test here, not the renderer: a blank frame stands in for 500 renders.
    monkeypatch.setattr(DMControlEnv, "pixel_frame", lambda self: np.zeros((3, 64, 64), np.uint8))
    env = make_env("cartpole-balance", seed=0, obs="rgb")
    env.reset()
    action = np.zeros(1, np.float32)
    for step in range(1, 501):
        obs, _, terminated, truncated, _ = env.step(action)
        assert obs.shape == (9, 64, 64) and not terminated
        assert truncated == (step == 500)
    assert env.unwrapped._env.physics.data.time == pytest.approx(1000 * env.unwrapped._env.control_timestep())


def test_state_and_rgb_are_the_dm_control_observation_types():
    with pytest.raises(ValueError, match=r"\['state', 'rgb'\]"):
        make_env("walker-walk", obs="depth")


# ---------------------------------------------------------------- MuJoCo's GL back-end


@pytest.fixture
def fresh_choice(monkeypatch):
    """Forget this process's back-end choice for one test (and restore it after)."""
    saved = gl.current_choice()
    gl.forget_choice()
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.delitem(sys.modules, "dm_control._render", raising=False)
    yield
    monkeypatch.setattr(gl, "_choice", saved)


def test_mujoco_gl_set_in_the_environment_is_kept(fresh_choice, monkeypatch, capsys):
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    monkeypatch.setattr(gl, "probe", lambda backend: pytest.fail("MUJOCO_GL was set: nothing to probe"))
    choice = gl.choose_mujoco_gl(rendering=True)
    assert (choice.backend, choice.reason) == ("osmesa", "set in the environment")
    assert "MUJOCO_GL=osmesa" in capsys.readouterr().out  # printed at start


def test_unset_mujoco_gl_takes_the_first_back_end_that_renders(fresh_choice, monkeypatch, capsys):
    tried = []

    def probe(backend):
        tried.append(backend)
        return "libEGL is not installed" if backend == "egl" else None

    monkeypatch.setattr(gl, "probe", probe)
    choice = gl.choose_mujoco_gl(rendering=True)
    assert tried == ["egl", "osmesa"] and choice.backend == "osmesa"
    assert "libEGL is not installed" in choice.reason
    import os
    assert os.environ["MUJOCO_GL"] == "osmesa"
    assert "MUJOCO_GL=osmesa" in capsys.readouterr().out


def test_no_working_back_end_names_the_libraries_and_packages(fresh_choice, monkeypatch):
    monkeypatch.setattr(gl, "probe", lambda backend: f"{gl.LIBRARIES[backend][0]} is not installed")
    assert gl.choose_mujoco_gl(rendering=False).backend is None  # state tasks need no renderer
    with pytest.raises(gl.RenderingUnavailableError) as caught:
        gl.choose_mujoco_gl(rendering=True)
    message = str(caught.value)
    for needed in ("libEGL", "libOSMesa", "apt-get install libegl1 libegl-mesa0", "apt-get install libosmesa6",
                   "MUJOCO_GL=egl", "MUJOCO_GL=osmesa"):
        assert needed in message


# ---------------------------------------------------------------- replay of single frames

HORIZON, K, C, S = 3, 3, 3, 4


def stacked_episode(tag: int, steps: int, seed: int) -> TensorDict:
    """Return an episode of ``steps`` transitions whose observations stack the last K random frames.

    The reset frame fills the stack, as the environment does; ``t`` and ``tag`` name each row.
    """
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (steps + 1, C, S, S), generator=g, dtype=torch.uint8)
    padded = torch.cat([frames[:1].expand(K - 1, -1, -1, -1), frames])
    obs = torch.stack([padded[t:t + K].reshape(K * C, S, S) for t in range(steps + 1)])
    n = steps + 1
    t = torch.arange(n)
    action = torch.rand(n, 2, generator=g) * 2 - 1
    reward = t.float().unsqueeze(-1) + 1000 * tag
    action[0], reward[0] = float("nan"), float("nan")
    return TensorDict({"obs": obs, "action": action, "reward": reward, "terminated": torch.zeros(n, 1),
                       "info": TensorDict({"obs_reward": torch.nan_to_num(reward.squeeze(-1))}, batch_size=[n]),
                       "tag": torch.full((n,), tag), "t": t}, batch_size=[n])


def test_sampled_stacks_are_the_observations_that_were_stored():
    episodes = [stacked_episode(i, n, seed=i) for i, n in enumerate([3, 7, 12, 5])]
    buf = FrameStackBuffer(1000, batch_size=64, horizon=HORIZON, seed=0, frame_stack=K)
    for episode in episodes:
        buf.add(episode)
    starts = set()
    for _ in range(30):
        batch = buf.sample()
        assert batch.batch_size == (HORIZON + 1, 64)
        assert batch["obs"].shape == (HORIZON + 1, 64, K * C, S, S) and batch["obs"].dtype == torch.uint8
        for b in range(64):
            tag, t = int(batch["tag"][0, b]), batch["t"][:, b]
            assert (batch["tag"][:, b] == tag).all() and (t.diff() == 1).all()
            source = episodes[tag]
            assert torch.equal(batch["obs"][:, b], source["obs"][t])
            for key in ("action", "reward", "terminated"):
                assert torch.equal(batch[key][:, b], source[key][t], ) or torch.allclose(
                    batch[key][:, b], source[key][t], equal_nan=True)
            starts.add((tag, int(t[0])))
    valid = {(tag, s) for tag, ep in enumerate(episodes) for s in range(ep.shape[0] - HORIZON)}
    assert starts == valid  # every slice of H+1 observations, and nothing else (no padding row starts a slice)


def test_single_frames_take_a_third_of_the_stacked_rows():
    episode = stacked_episode(0, 20, seed=0)
    single = FrameStackBuffer(100, batch_size=4, horizon=HORIZON, seed=0, frame_stack=K)
    stacked = EpisodeBuffer(100, batch_size=4, horizon=HORIZON, seed=0)
    for buf in (single, stacked):
        buf.add(episode)
        buf.flush()
    obs_bytes = {name: buf._buffer.storage._storage["obs"][0].numel() for name, buf in
                 (("single", single), ("stacked", stacked))}
    assert obs_bytes == {"single": C * S * S, "stacked": K * C * S * S}
    assert len(single) == len(stacked) + K - 1  # the reset frame's two extra rows


def test_frame_stack_buffer_rejects_observations_that_are_not_stacks():
    buf = FrameStackBuffer(100, batch_size=4, horizon=HORIZON, seed=0, frame_stack=K)
    episode = stacked_episode(0, 5, seed=0)
    episode = TensorDict({**episode.exclude("obs").to_dict(), "obs": episode["obs"][:, :4]}, batch_size=episode.batch_size)
    with pytest.raises(ValueError, match="stacks of 3 frames"):
        buf.add(episode)
    with pytest.raises(ValueError, match="frame_stack must be an integer >= 2"):
        FrameStackBuffer(100, batch_size=4, horizon=HORIZON, frame_stack=1)


def test_make_replay_stores_single_frames_for_stacked_pixel_tasks(builders):
    from envs import TaskInfo

    info = TaskInfo(name="toy-pixels", obs_type="rgb", obs_shape=(9, 64, 64), action_dim=2, episode_length=50,
                    episodic=False, info_keys=("obs_reward", "success"), action_repeat=2, frame_stack=3)
    cfg = builders.tiny_config("seed_steps=50", task_info=info)
    assert cfg.frame_stack == 3
    replay = make_replay(cfg)
    assert isinstance(replay, FrameStackBuffer) and replay.sample_horizon == cfg.horizon
    assert type(make_replay(builders.tiny_config())) is EpisodeBuffer


def test_an_agent_updates_from_single_frame_replay_of_9x64x64_stacks(builders):
    from envs import TaskInfo

    info = TaskInfo(name="toy-pixels", obs_type="rgb", obs_shape=(9, 64, 64), action_dim=2, episode_length=50,
                    episodic=False, info_keys=("obs_reward", "success"), action_repeat=2, frame_stack=3)
    cfg = builders.tiny_config("seed_steps=50", "num_channels=8", task_info=info)
    agent = builders.make_agent(cfg)
    replay = make_replay(cfg)
    g = torch.Generator().manual_seed(0)
    for tag in range(2):
        n = 12
        frames = torch.randint(0, 256, (n + 2, 3, 64, 64), generator=g, dtype=torch.uint8)
        frames[:2] = frames[2]
        obs = torch.stack([frames[t:t + 3].reshape(9, 64, 64) for t in range(n)])
        action = torch.rand(n, 2, generator=g) * 2 - 1
        reward = torch.rand(n, 1, generator=g)
        action[0], reward[0] = float("nan"), float("nan")
        replay.add(TensorDict({"obs": obs, "action": action, "reward": reward, "terminated": torch.zeros(n, 1),
                               "info": TensorDict({"obs_reward": torch.nan_to_num(reward[:, 0])}, batch_size=[n])},
                              batch_size=[n]))
    batch = replay.sample()
    assert batch["obs"].shape == (cfg.horizon + 1, cfg.batch_size, 9, 64, 64)
    metrics = agent.update(batch)
    assert all(np.isfinite(v) for v in metrics.values())
