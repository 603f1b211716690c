"""The task registry: one explicit table from task name to factory.

``make_env`` looks a name up in ``TASKS``, checks the requested observation
type and any optional dependency, builds the raw environment and wraps it so
that every task looks the same from outside (see ``envs.wrappers``). With
``render=True`` the environment also draws video frames (``env.render()``).
dm_control tasks choose MuJoCo's rendering back-end first (``envs.gl``).
"""

from __future__ import annotations

import difflib
import importlib.util
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import gymnasium as gym
from gymnasium.wrappers import TimeLimit

from envs import frames, gl, gym_tasks
from envs.wrappers import (FrameStack, InfoKeys, NormalizedAction, RgbObservation, StateObservation, TaskEnv,
                           VideoUnsupportedError)

OBS_TYPES = ("state", "rgb")

# Keys every task reports in info; tasks may add their own after these.
BASE_INFO_KEYS = ("obs_reward", "success")

# Optional module -> (pip distribution, extra of this project that installs it).
OPTIONAL_DEPENDENCIES = {"dm_control": ("dm-control", "dmc"), "pygame": ("pygame", "video")}


class UnknownTaskError(ValueError):
    """Raised for a task name that is not in the registry."""


class MissingDependencyError(ImportError):
    """Raised when a task's optional dependency is not installed."""


@dataclass(frozen=True)
class TaskInfo:
    """What a made environment is, as seen by the agent."""

    name: str
    obs_type: str
    obs_shape: tuple[int, ...]
    action_dim: int
    episode_length: int  # agent steps per episode, after action repeat
    episodic: bool  # True when the task can terminate before episode_length
    info_keys: tuple[str, ...]
    action_repeat: int
    frame_stack: int = 1  # pixel observations: frames stacked channel-first (obs_shape[0] = 3 * frame_stack)


@dataclass(frozen=True)
class BuiltTask:
    """A raw environment from a factory plus the facts the registry cannot infer."""

    env: gym.Env
    episode_length: int
    episodic: bool
    action_repeat: int = 1
    extra_info_keys: tuple[str, ...] = ()
    video_frame: Callable[[], Any] | None = None  # the current video frame, uint8 (H, W, 3); with render=True
    frame_stack: int = 1  # with pixel observations: stack this many (3, H, W) frames (envs.wrappers.FrameStack)


# factory(seed, obs_type, options, render) -> BuiltTask
TaskFactory = Callable[[int, str, dict, bool], BuiltTask]


@dataclass(frozen=True)
class TaskEntry:
    """One row of the registry table."""

    factory: TaskFactory
    obs_types: tuple[str, ...]
    requires: str | None  # importable module name of an optional dependency
    description: str
    accepts_options: bool = False
    video_requires: str | None = None  # importable module the task's video frames need
    # Highest episode return, for normalising scores across tasks (scripts/compare.py); None: no meaningful
    # maximum, and the task stays out of across-task aggregates.
    max_return: float | None = None


def make_gym_task(env_id: str, episode_length: int, episodic: bool,
                  seed: int, obs_type: str, options: dict, render: bool = False) -> BuiltTask:
    """Returns a gymnasium classic-control task as a ``BuiltTask`` (frames drawn by gymnasium with pygame)."""
    if render:
        # Frames are drawn on off-screen surfaces: no window, no greeting, no SDL display warnings.
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    env = gym_tasks.make_gym_env(env_id, episode_length, render_mode="rgb_array" if render else None)
    if render and "rgb_array" not in env.metadata.get("render_modes", ()):
        raise VideoUnsupportedError(f"gymnasium's {env_id} cannot draw frames (no rgb_array render mode): "
                                    "video is unsupported for this task; use save_video=false")
    return BuiltTask(env=env, episode_length=episode_length, episodic=episodic,
                     video_frame=env.render if render else None)


def make_dmc_task(domain: str, task: str, seed: int, obs_type: str, options: dict, render: bool = False) -> BuiltTask:
    """Returns a dm_control suite task as a ``BuiltTask``: state vectors, or with ``obs_type="rgb"`` 64x64
    frames from the domain's camera, 3 of them stacked (as the public TD-MPC2).

    With ``render``, one frame is drawn at once so that a machine that cannot
    render offscreen fails here, at start, rather than at the first evaluation.
    """
    from envs import dmcontrol

    pixels = obs_type == "rgb"
    env = dmcontrol.DMControlEnv(domain, task, seed=seed, action_repeat=dmcontrol.DMC_ACTION_REPEAT, pixels=pixels)
    for wanted, draw, what, error in ((pixels, env.pixel_frame, "pixel observations", gl.RenderingUnavailableError),
                                      (render, env.render, "video frames", VideoUnsupportedError)):
        if not wanted:
            continue
        try:
            draw()
        except Exception as err:  # MuJoCo's GL back-ends raise several types
            raise error(
                f"task '{domain}-{task}' cannot draw {what} with MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}: "
                f"{err}. MuJoCo renders offscreen with EGL (MUJOCO_GL=egl; needs libEGL) "
                f"or OSMesa (MUJOCO_GL=osmesa; needs libOSMesa)") from err
    return BuiltTask(
        env=env,
        episode_length=dmcontrol.DMC_EPISODE_LENGTH,
        episodic=False,
        action_repeat=dmcontrol.DMC_ACTION_REPEAT,
        video_frame=env.render if render else None,
        frame_stack=dmcontrol.DMC_FRAME_STACK if pixels else 1,
    )


def make_counting_task(seed: int, obs_type: str, options: dict, render: bool = False) -> BuiltTask:
    """Returns the counting environment (64x64 RGB by default) as a ``BuiltTask``; its video frames are the
    observation enlarged, with the count written under it (``envs.frames.counting_frame``)."""
    from envs.counting import make_counting_env

    env = make_counting_env(options=options, seed=seed, render_mode="rgb_array" if render else None)
    return BuiltTask(
        env=env,
        episode_length=int(env.max_episode_steps),
        episodic=bool(env.episodic),
        extra_info_keys=("count",),
        video_frame=partial(frames.counting_frame, env) if render else None,
    )


# Returns with no meaningful maximum (max_return=None): Pendulum-v1's are negative costs (0 is the best
# possible, never reached from a hanging start); MountainCarContinuous-v0 pays about +100 for reaching the flag
# minus an action cost whose least value depends on the start; the counting task measures representations,
# and its random-policy return says nothing about control.


def _gym(env_id: str, episode_length: int, episodic: bool, description: str) -> TaskEntry:
    return TaskEntry(
        factory=partial(make_gym_task, env_id, episode_length, episodic),
        obs_types=("state",),
        requires=None,
        description=description,
        video_requires="pygame",
    )


def _dmc(domain: str, task: str, description: str) -> TaskEntry:
    return TaskEntry(
        factory=partial(make_dmc_task, domain, task),
        obs_types=("state", "rgb"),
        requires="dm_control",
        description=f"dm_control {domain}/{task}: {description}",
        max_return=1000.0,  # rewards in [0, 1] per simulator step, 1000 steps per episode
    )


TASKS: dict[str, TaskEntry] = {
    "pendulum": _gym(gym_tasks.PENDULUM_ID, gym_tasks.PENDULUM_EPISODE_LENGTH, False,
                     "gymnasium Pendulum-v1: swing up and hold; torque in [-2, 2]"),
    "mountaincar": _gym(gym_tasks.MOUNTAINCAR_ID, gym_tasks.MOUNTAINCAR_EPISODE_LENGTH, True,
                        "gymnasium MountainCarContinuous-v0: reach the flag (terminates)"),
    "acrobot-swingup": _dmc("acrobot", "swingup", "swing a two-link pendulum upright"),
    "cartpole-balance": _dmc("cartpole", "balance", "keep an upright pole balanced"),
    "cartpole-balance-sparse": _dmc("cartpole", "balance_sparse", "balance, sparse reward"),
    "cartpole-swingup": _dmc("cartpole", "swingup", "swing the pole up and balance it"),
    "cartpole-swingup-sparse": _dmc("cartpole", "swingup_sparse", "swing-up, sparse reward"),
    "cheetah-run": _dmc("cheetah", "run", "run forward fast"),
    "cup-catch": _dmc("ball_in_cup", "catch", "swing the ball into the cup"),
    "finger-spin": _dmc("finger", "spin", "spin the body"),
    "finger-turn-easy": _dmc("finger", "turn_easy", "turn the body to a wide target"),
    "finger-turn-hard": _dmc("finger", "turn_hard", "turn the body to a narrow target"),
    "fish-swim": _dmc("fish", "swim", "swim to a target"),
    "hopper-hop": _dmc("hopper", "hop", "hop forward"),
    "hopper-stand": _dmc("hopper", "stand", "stand upright"),
    "humanoid-run": _dmc("humanoid", "run", "run forward"),
    "humanoid-stand": _dmc("humanoid", "stand", "stand upright"),
    "humanoid-walk": _dmc("humanoid", "walk", "walk forward"),
    "pendulum-swingup": _dmc("pendulum", "swingup", "swing the pendulum up, sparse reward"),
    "point-mass-easy": _dmc("point_mass", "easy", "move a point mass to a target"),
    "quadruped-run": _dmc("quadruped", "run", "run forward"),
    "quadruped-walk": _dmc("quadruped", "walk", "walk forward"),
    "reacher-easy": _dmc("reacher", "easy", "reach a large target"),
    "reacher-hard": _dmc("reacher", "hard", "reach a small target"),
    "swimmer-swimmer6": _dmc("swimmer", "swimmer6", "six-link swimmer reaches a target"),
    "walker-run": _dmc("walker", "run", "run forward"),
    "walker-stand": _dmc("walker", "stand", "stand upright"),
    "walker-walk": _dmc("walker", "walk", "walk forward"),
    "counting": TaskEntry(
        factory=make_counting_task,
        obs_types=("rgb",),
        requires=None,
        description="count objects in a 64x64 image; +1/-1 actions; target count 4",
        accepts_options=True,
    ),
}


def known_tasks() -> list[str]:
    """Returns the sorted names of all registered tasks."""
    return sorted(TASKS)


def task_defaults(task: str) -> tuple[str, bool]:
    """Returns ``(default observation type, whether the task takes options)`` for ``task``."""
    entry = _lookup(task)
    return entry.obs_types[0], entry.accepts_options


def max_return(task: str) -> float | None:
    """Returns the highest episode return of ``task`` (1000 on dm_control), or None when it has no meaningful one."""
    return _lookup(task).max_return


def _lookup(task: str) -> TaskEntry:
    if not isinstance(task, str) or task not in TASKS:
        names = known_tasks()
        close = difflib.get_close_matches(str(task), names, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UnknownTaskError(
            f"Unknown task {task!r}.{hint} Known tasks: {', '.join(names)}"
        )
    return TASKS[task]


def _require(task: str, module: str, purpose: str = "") -> None:
    """Raises MissingDependencyError unless ``module`` can be imported.

    Only looks the module up; importing it is left to the factory so that a
    broken installation raises its own ImportError unchanged. ``purpose``
    ("'s video", ...) says what of the task needs it.
    """
    if importlib.util.find_spec(module) is None:
        distribution, extra = OPTIONAL_DEPENDENCIES.get(module, (module, None))
        how = f'pip install -e ".[{extra}]"' if extra else f"pip install {distribution}"
        raise MissingDependencyError(
            f"Task {task!r}{purpose} needs the optional package {distribution!r} "
            f"(module {module!r}), which is not installed. Install it with: {how}",
            name=module,
        )


def _plain(value: Any) -> Any:
    """Returns ``value`` with nested mappings as dicts and sequences as lists."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(item) for item in value]
    return value


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def make_env(task: str, seed: int = 0, obs: str = "state",
             options: Mapping | None = None, render: bool = False) -> gym.Env:
    """Returns the wrapped environment for ``task``.

    The result acts in ``Box(-1, 1, (A,), float32)``, observes float32 vectors
    (``obs="state"``) or uint8 ``(3k, H, W)`` frames (``obs="rgb"``; the last
    ``k = task_info.frame_stack`` frames stacked channel-first), truncates
    at ``task_info.episode_length`` agent steps, reports every key of
    ``task_info.info_keys`` in each info dict, and seeds its first reset with
    ``seed``. ``options`` are task-specific (the counting task's settings);
    tasks without options reject a non-empty mapping. With ``render=True``,
    ``env.render()`` returns the current video frame, uint8 ``(H, W, 3)``,
    after a reset; observations are unchanged.
    """
    entry = _lookup(task)
    if obs not in OBS_TYPES:
        raise ValueError(f"obs must be one of {list(OBS_TYPES)}, got {obs!r}")
    if obs not in entry.obs_types:
        raise ValueError(
            f"Task {task!r} does not support obs={obs!r}; supported: {list(entry.obs_types)}"
        )
    seed = _check_seed(seed)
    if options is not None and not isinstance(options, Mapping):
        raise ValueError(f"options must be a mapping or None, got {type(options).__name__}")
    plain_options = _plain(options) if options is not None else {}
    if plain_options and not entry.accepts_options:
        raise ValueError(
            f"Task {task!r} takes no options, got keys {sorted(map(str, plain_options))}"
        )
    if entry.requires is not None:
        _require(task, entry.requires)
    if render and entry.video_requires is not None:
        _require(task, entry.video_requires, "'s video")
    if entry.requires == "dm_control":
        # MuJoCo's GL back-end is fixed when dm_control is first imported: choose it before.
        gl.choose_mujoco_gl(rendering=render or obs == "rgb")

    built = entry.factory(seed, obs, plain_options, render)
    env = StateObservation(built.env) if obs == "state" else RgbObservation(built.env)
    if obs == "rgb" and built.frame_stack > 1:
        env = FrameStack(env, built.frame_stack)
    env = NormalizedAction(env)
    env = TimeLimit(env, max_episode_steps=built.episode_length)
    info_keys = tuple(dict.fromkeys(BASE_INFO_KEYS + tuple(built.extra_info_keys)))
    env = InfoKeys(env, info_keys)
    task_info = TaskInfo(
        name=task,
        obs_type=obs,
        obs_shape=tuple(int(n) for n in env.observation_space.shape),
        action_dim=int(env.action_space.shape[0]),
        episode_length=int(built.episode_length),
        episodic=bool(built.episodic),
        info_keys=info_keys,
        action_repeat=int(built.action_repeat),
        frame_stack=int(built.frame_stack) if obs == "rgb" else 1,
    )
    return TaskEnv(env, task_info, seed, video_frame=built.video_frame)


def make_task_env(cfg, seed: int, render: bool = False) -> gym.Env:
    """Return the wrapped environment of a run config's ``task`` (with ``cfg.obs``, or the task's own
    observation type), passing the task's option group (``cfg[task]``) only to tasks that take options;
    ``render``: it draws video frames too (see :func:`make_env`)."""
    obs_type, takes_options = task_defaults(cfg.task)
    options = cfg[cfg.task] if takes_options and cfg.task in cfg else None
    return make_env(cfg.task, seed=seed, obs=cfg.obs or obs_type, options=options, render=render)
