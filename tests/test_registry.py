"""Tests of the task registry (envs.registry) and its wrappers."""

from __future__ import annotations

import builtins
import dataclasses
import importlib.machinery
import importlib.util
import sys
import types

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

import envs
from envs import MissingDependencyError, TaskInfo, UnknownTaskError, known_tasks, make_env
from envs.registry import TASKS
from envs.wrappers import NormalizedAction

# Importing dm_control without a display makes glfw warn; no rendering is used.
pytestmark = pytest.mark.filterwarnings("ignore:.*DISPLAY")

HAS_DM_CONTROL = importlib.util.find_spec("dm_control") is not None
HAS_COUNTING = importlib.util.find_spec("envs.counting") is not None
needs_dm_control = pytest.mark.skipif(not HAS_DM_CONTROL, reason="dm-control not installed")
needs_counting = pytest.mark.skipif(not HAS_COUNTING, reason="envs/counting.py not written yet")


def _find_wrapper(env: gym.Env, kind: type) -> gym.Env:
    while not isinstance(env, kind):
        env = env.env
    return env


# ---------------------------------------------------------------- the table


def test_known_tasks_is_the_sorted_table_with_the_required_tasks():
    names = known_tasks()
    assert names == sorted(TASKS)
    for required in ("pendulum", "mountaincar", "counting", "cartpole-swingup", "walker-walk"):
        assert required in names


def test_unknown_task_error_lists_known_tasks_and_suggests_a_close_name():
    with pytest.raises(UnknownTaskError) as caught:
        make_env("pendulm")
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert "'pendulm'" in message
    assert "Did you mean 'pendulum'" in message
    for name in known_tasks():
        assert name in message


def test_unsupported_obs_type_is_a_value_error_naming_the_supported_ones():
    with pytest.raises(ValueError, match=r"supported: \['state'\]"):
        make_env("pendulum", obs="rgb")
    with pytest.raises(ValueError, match=r"\['state', 'rgb'\]"):
        make_env("pendulum", obs="depth")


@pytest.mark.parametrize("seed", [-1, 1.5, "3", True])
def test_bad_seed_is_rejected(seed):
    with pytest.raises(ValueError, match="seed"):
        make_env("pendulum", seed=seed)


def test_options_for_a_task_without_options_are_rejected():
    with pytest.raises(ValueError, match="takes no options"):
        make_env("pendulum", options={"time_limit": 3})
    make_env("pendulum", options={})  # an empty mapping is no option at all


# ---------------------------------------------------------- gymnasium tasks


def test_pendulum_task_info():
    env = make_env("pendulum", seed=0)
    info = env.task_info
    assert isinstance(info, TaskInfo)
    assert info == TaskInfo(
        name="pendulum",
        obs_type="state",
        obs_shape=(3,),
        action_dim=1,
        episode_length=200,
        episodic=False,
        info_keys=info.info_keys,
        action_repeat=1,
    )
    assert "obs_reward" in info.info_keys
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.episode_length = 10


def test_mountaincar_task_info():
    info = make_env("mountaincar").task_info
    assert (info.obs_shape, info.action_dim) == ((2,), 1)
    assert info.episode_length == 999
    assert info.episodic is True


@pytest.mark.parametrize("task, size", [("pendulum", 3), ("mountaincar", 2)])
def test_state_observations_are_flat_float32(task, size):
    env = make_env(task, seed=0)
    assert env.observation_space.shape == (size,)
    assert env.observation_space.dtype == np.float32
    obs, _ = env.reset()
    assert obs.dtype == np.float32 and obs.shape == (size,)
    obs, *_ = env.step(env.action_space.sample())
    assert obs.dtype == np.float32 and obs.shape == (size,)


def test_action_space_is_unit_box_and_maps_to_pendulum_torque_bounds():
    env = make_env("pendulum", seed=0)
    assert env.action_space == spaces.Box(-1.0, 1.0, (1,), np.float32)
    env.reset()
    # Pendulum records the torque it applied in `last_u`.
    for unit, torque in [(-1.0, -2.0), (1.0, 2.0), (0.0, 0.0), (0.5, 1.0), (7.0, 2.0)]:
        env.step(np.array([unit], dtype=np.float32))
        assert env.unwrapped.last_u == pytest.approx(torque)


class _RecordingEnv(gym.Env):
    """Records the actions it receives; asymmetric bounds per dimension."""

    def __init__(self):
        self.action_space = spaces.Box(np.array([0.0, -3.0]), np.array([10.0, 1.0]), dtype=np.float64)
        self.observation_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.received = []

    def reset(self, *, seed=None, options=None):
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.received.append(np.array(action))
        return np.zeros(1, np.float32), 0.0, False, False, {}


def test_normalized_action_maps_corners_and_centre_to_true_bounds():
    inner = _RecordingEnv()
    env = NormalizedAction(inner)
    assert env.action_space == spaces.Box(-1.0, 1.0, (2,), np.float32)
    for unit in ([-1, -1], [1, 1], [0, 0], [-5, 5]):
        env.step(np.array(unit, dtype=np.float32))
    np.testing.assert_allclose(inner.received, [[0, -3], [10, 1], [5, -1], [0, 1]])
    assert inner.received[0].dtype == np.float64
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3, np.float32))


def test_pendulum_truncates_at_episode_length():
    env = make_env("pendulum", seed=0)
    env.reset()
    action = np.zeros(1, np.float32)
    for step in range(1, 201):
        _, _, terminated, truncated, _ = env.step(action)
        assert not terminated
        assert truncated == (step == 200)


def test_info_reports_obs_reward_at_reset_and_after_each_step():
    env = make_env("pendulum", seed=0)
    _, info = env.reset()
    assert info["obs_reward"] == 0.0
    for key in env.task_info.info_keys:
        assert isinstance(info[key], (int, float))
    for _ in range(3):
        _, reward, _, _, info = env.step(env.action_space.sample())
        assert info["obs_reward"] == pytest.approx(reward)
        assert reward < 0.0  # pendulum costs are negative except exactly upright at rest
        for key in env.task_info.info_keys:
            assert isinstance(info[key], (int, float))


def test_mountaincar_reports_success_when_it_reaches_the_goal():
    env = make_env("mountaincar", seed=0)
    env.reset()
    # Start at the goal's edge, moving right: the next step crosses it.
    env.unwrapped.state = np.array([0.449, 0.05])
    _, reward, terminated, _, info = env.step(np.ones(1, np.float32))
    assert terminated
    assert info["success"] == 1.0
    assert info["obs_reward"] == pytest.approx(reward) and reward > 90.0


def test_first_reset_is_seeded_by_make_env():
    first = [make_env("pendulum", seed=7).reset()[0] for _ in range(2)]
    other = make_env("pendulum", seed=8).reset()[0]
    np.testing.assert_array_equal(first[0], first[1])
    assert not np.array_equal(first[0], other)
    samples = [make_env("pendulum", seed=7).action_space.sample() for _ in range(2)]
    np.testing.assert_array_equal(samples[0], samples[1])


def test_later_resets_continue_the_stream_and_explicit_seeds_win():
    env = make_env("pendulum", seed=7)
    first, _ = env.reset()
    second, _ = env.reset()
    assert not np.array_equal(first, second)
    again, _ = env.reset(seed=7)
    np.testing.assert_array_equal(first, again)


# ---------------------------------------------------------------- random state, for resumed runs


def _play(env, rng: np.random.Generator, steps: int) -> tuple[list, list]:
    """Play up to ``steps`` random actions of the current episode; return the actions and observations."""
    actions, observations = [], []
    for _ in range(steps):
        action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        obs, _, terminated, truncated, _ = env.step(action)
        actions.append(action)
        observations.append(obs)
        if terminated or truncated:
            break
    return actions, observations


RNG_TASKS = [("pendulum", "state"), pytest.param("counting", "rgb", marks=needs_counting),
             pytest.param("cartpole-swingup", "state", marks=needs_dm_control)]


@pytest.mark.parametrize("task, obs", RNG_TASKS)
def test_an_episode_replays_from_the_state_it_started_from(task, obs):
    env, rng = make_env(task, seed=3, obs=obs), np.random.default_rng(0)
    for episode in range(3):  # the first episode is seeded at make time; later ones continue the stream
        first, _ = env.reset()
        start = env.episode_start_state
        actions, observations = _play(env, rng, 6)
        copy = make_env(task, seed=99, obs=obs)
        copy.set_rng_state(start)
        np.testing.assert_array_equal(copy.reset()[0], first)
        for action, expected in zip(actions, observations):
            np.testing.assert_array_equal(copy.step(action)[0], expected)


@pytest.mark.parametrize("task, obs", RNG_TASKS)
def test_between_episodes_the_random_state_decides_the_next_ones(task, obs):
    env, rng = make_env(task, seed=3, obs=obs), np.random.default_rng(0)
    env.reset()
    _play(env, rng, 5)
    state = env.rng_state()
    copy = make_env(task, seed=99, obs=obs)
    copy.set_rng_state(state)
    for _ in range(3):
        np.testing.assert_array_equal(copy.reset()[0], env.reset()[0])
        actions, observations = _play(env, rng, 5)
        for action, expected in zip(actions, observations):
            np.testing.assert_array_equal(copy.step(action)[0], expected)


# ---------------------------------------------------------------- counting


@needs_counting
def test_counting_task_info_and_observations():
    env = make_env("counting", seed=0, obs="rgb")
    info = env.task_info
    assert info.obs_type == "rgb"
    assert info.obs_shape == (3, 64, 64)
    assert info.episodic is True
    assert info.action_dim == 1
    assert {"count", "obs_reward"} <= set(info.info_keys)
    assert info.episode_length == env.unwrapped.max_episode_steps
    obs, reset_info = env.reset()
    assert obs.dtype == np.uint8 and obs.shape == (3, 64, 64)
    for key in info.info_keys:
        assert isinstance(reset_info[key], (int, float))
    obs, reward, _, _, step_info = env.step(np.ones(1, np.float32))
    assert obs.dtype == np.uint8 and obs.shape == (3, 64, 64)
    assert step_info["count"] == min(reset_info["count"] + 1, 8)
    assert step_info["obs_reward"] == reward


@needs_counting
def test_counting_options_are_passed_through_as_a_plain_mapping():
    options = types.MappingProxyType({"image_size": 32, "time_limit": 6, "initial_count": 0, "target": 8})
    env = make_env("counting", seed=0, obs="rgb", options=options)
    assert env.task_info.obs_shape == (3, 32, 32)
    assert env.task_info.episode_length == 6
    _, info = env.reset()
    assert info["count"] == 0
    for step in range(1, 7):
        _, _, terminated, truncated, _ = env.step(np.ones(1, np.float32))
        assert not terminated
        assert truncated == (step == 6)


@needs_counting
def test_counting_rejects_state_observations():
    with pytest.raises(ValueError, match=r"supported: \['rgb'\]"):
        make_env("counting", obs="state")


# --------------------------------------------------------------- dm_control


@needs_dm_control
def test_cartpole_swingup_runs_with_action_repeat_two():
    from dm_control import suite

    env = make_env("cartpole-swingup", seed=3)
    info = env.task_info
    assert (info.obs_shape, info.action_dim) == ((5,), 1)
    assert (info.episode_length, info.action_repeat, info.episodic) == (500, 2, False)
    assert env.action_space == spaces.Box(-1.0, 1.0, (1,), np.float32)

    reference = suite.load("cartpole", "swingup", task_kwargs={"random": 3})
    timestep = reference.reset()
    obs, reset_info = env.reset()
    assert obs.dtype == np.float32
    np.testing.assert_allclose(obs, np.concatenate([v.ravel() for v in timestep.observation.values()]), rtol=1e-6)
    assert reset_info["obs_reward"] == 0.0
    for unit in (0.5, -1.0, 1.0):
        obs, reward, terminated, truncated, step_info = env.step(np.array([unit], np.float32))
        timesteps = [reference.step([unit]) for _ in range(2)]
        expected_reward = sum(t.reward for t in timesteps)
        expected_obs = np.concatenate([v.ravel() for v in timesteps[-1].observation.values()])
        np.testing.assert_allclose(obs, expected_obs, rtol=1e-5, atol=1e-6)
        assert reward == pytest.approx(expected_reward)
        assert step_info["obs_reward"] == pytest.approx(reward)
        assert not terminated and not truncated


@needs_dm_control
def test_dm_control_truncates_at_500_agent_steps():
    env = make_env("cartpole-balance", seed=0)
    env.reset()
    action = np.zeros(1, np.float32)
    for step in range(1, 501):
        _, _, terminated, truncated, _ = env.step(action)
        assert not terminated
        assert truncated == (step == 500)


def test_missing_dm_control_raises_missing_dependency_error(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "dm_control" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(MissingDependencyError) as caught:
        make_env("walker-walk")
    message = str(caught.value)
    assert isinstance(caught.value, ImportError)
    assert "dm-control" in message
    assert 'pip install -e ".[dmc]"' in message
    assert "walker-walk" in message
    # Tasks without the dependency are unaffected.
    make_env("pendulum")


def test_real_import_error_inside_a_present_dependency_propagates(monkeypatch):
    real_find_spec = importlib.util.find_spec
    present = importlib.machinery.ModuleSpec("dm_control", loader=None)

    def find_spec(name, *args, **kwargs):
        return present if name == "dm_control" else real_find_spec(name, *args, **kwargs)

    real_import = builtins.__import__

    def broken_import(name, *args, **kwargs):
        if name == "dm_control" or name.startswith("dm_control."):
            raise ImportError("libmujoco.so: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    # Force envs.dmcontrol to be imported afresh so that its import of
    # dm_control goes through the broken import.
    monkeypatch.delitem(sys.modules, "envs.dmcontrol", raising=False)
    monkeypatch.delattr(envs, "dmcontrol", raising=False)
    monkeypatch.setattr(builtins, "__import__", broken_import)
    with pytest.raises(ImportError, match="libmujoco.so") as caught:
        make_env("cartpole-swingup")
    assert not isinstance(caught.value, MissingDependencyError)
