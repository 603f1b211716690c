"""Wrappers that give every registered task the same outward interface.

From the inside out, the registry stacks them as:
``StateObservation`` or ``RgbObservation`` (-> ``FrameStack`` for tasks that
stack frames) -> ``NormalizedAction`` -> ``TimeLimit`` (gymnasium's) ->
``InfoKeys`` -> ``TaskEnv``.
"""

from __future__ import annotations

import copy
from collections import deque
from typing import Any, Callable, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class VideoUnsupportedError(ValueError):
    """Raised when a task cannot draw video frames (or was made without ``render=True``)."""


class StateObservation(gym.ObservationWrapper):
    """Presents observations as flat float32 vectors."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        inner = env.observation_space
        if not isinstance(inner, spaces.Box):
            raise ValueError(
                f"state observations need a Box observation space, got {inner!r}"
            )
        size = int(np.prod(inner.shape))
        self.observation_space = spaces.Box(
            low=np.asarray(inner.low, dtype=np.float32).reshape(size),
            high=np.asarray(inner.high, dtype=np.float32).reshape(size),
            shape=(size,),
            dtype=np.float32,
        )

    def observation(self, observation: Any) -> np.ndarray:
        """Returns the observation flattened to a 1-D float32 array."""
        return np.asarray(observation, dtype=np.float32).reshape(-1)


class RgbObservation(gym.ObservationWrapper):
    """Checks that an image task already yields uint8 (3, H, W) frames.

    Frames are passed through untouched; the check runs once, at construction,
    on the declared observation space.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        inner = env.observation_space
        if (
            not isinstance(inner, spaces.Box)
            or inner.dtype != np.uint8
            or len(inner.shape) != 3
            or inner.shape[0] != 3
        ):
            raise ValueError(
                "rgb observations must be a uint8 Box of shape (3, H, W), "
                f"got {inner!r}"
            )

    def observation(self, observation: Any) -> np.ndarray:
        """Returns the frame unchanged (uint8, channels first)."""
        return observation


class FrameStack(gym.Wrapper):
    """Observes the last ``k`` uint8 ``(C, H, W)`` frames stacked channel-first, ``(k*C, H, W)``, oldest first.

    A reset fills the stack with its frame repeated ``k`` times, as the public
    TD-MPC2 does; each step then drops the oldest frame and adds the new one.
    """

    def __init__(self, env: gym.Env, k: int):
        super().__init__(env)
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"FrameStack: k must be a positive integer, got {k!r}")
        inner = env.observation_space
        if not isinstance(inner, spaces.Box) or inner.dtype != np.uint8 or len(inner.shape) != 3:
            raise ValueError(f"FrameStack stacks uint8 (C, H, W) frames, got {inner!r}")
        c, h, w = inner.shape
        self.k = k
        self.observation_space = spaces.Box(0, 255, (k * c, h, w), dtype=np.uint8)
        self._frames: deque = deque(maxlen=k)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Returns ``(stack, info)`` with the reset frame in every slot of the stack."""
        frame, info = self.env.reset(seed=seed, options=options)
        self._frames.extend([frame] * self.k)
        return self._stack(), info

    def step(self, action: Any):
        """Returns the inner step's 5-tuple with the stack of the last ``k`` frames as observation."""
        frame, reward, terminated, truncated, info = self.env.step(action)
        self._frames.append(frame)
        return self._stack(), reward, terminated, truncated, info

    def _stack(self) -> np.ndarray:
        return np.concatenate(self._frames, axis=0)


class NormalizedAction(gym.ActionWrapper):
    """Exposes ``Box(-1, 1, (A,), float32)`` and rescales to the true bounds.

    Actions outside [-1, 1] are clipped first, so the inner env never sees a
    value beyond its own limits.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        inner = env.action_space
        if not isinstance(inner, spaces.Box) or len(inner.shape) != 1:
            raise ValueError(
                f"tasks need a 1-D Box action space, got {inner!r}"
            )
        if not (np.all(np.isfinite(inner.low)) and np.all(np.isfinite(inner.high))):
            raise ValueError(f"action bounds must be finite, got {inner!r}")
        self._low = np.asarray(inner.low, dtype=np.float64)
        self._high = np.asarray(inner.high, dtype=np.float64)
        self._inner_dtype = inner.dtype
        self.action_space = spaces.Box(-1.0, 1.0, shape=inner.shape, dtype=np.float32)

    def action(self, action: Any) -> np.ndarray:
        """Returns the action mapped from [-1, 1] onto the inner env's bounds."""
        unit = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        if unit.shape != self._low.shape:
            raise ValueError(
                f"action must have shape {self._low.shape}, got {unit.shape}"
            )
        scaled = self._low + (unit + 1.0) * 0.5 * (self._high - self._low)
        return scaled.astype(self._inner_dtype)


class InfoKeys(gym.Wrapper):
    """Guarantees numeric ``info`` entries for a fixed tuple of keys.

    ``obs_reward`` (reward received on arriving at the observation) is filled
    in when the inner env does not report it: 0.0 at reset, the step reward
    after a step. ``success`` is filled in as 1.0 when an episodic task
    terminates, else 0.0. Any other listed key must come from the inner env.
    """

    def __init__(self, env: gym.Env, info_keys: tuple[str, ...]):
        super().__init__(env)
        self._info_keys = tuple(info_keys)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Returns ``(observation, info)`` with every listed key present."""
        observation, info = self.env.reset(seed=seed, options=options)
        return observation, self._complete(dict(info), reward=0.0, terminated=False)

    def step(self, action: Any):
        """Returns the inner step's 5-tuple with every listed key in ``info``."""
        observation, reward, terminated, truncated, info = self.env.step(action)
        info = self._complete(dict(info), reward=reward, terminated=terminated)
        return observation, reward, terminated, truncated, info

    def _complete(
        self, info: dict, reward: SupportsFloat, terminated: bool
    ) -> dict:
        info.setdefault("obs_reward", float(reward))
        info.setdefault("success", float(bool(terminated)))
        missing = [key for key in self._info_keys if key not in info]
        if missing:
            raise KeyError(
                f"the environment's info lacks {missing}; expected keys "
                f"{list(self._info_keys)}"
            )
        return info


def generator_state(rng: np.random.Generator | None) -> dict | None:
    """Returns a copy of a NumPy generator's bit-generator state (None for no generator)."""
    return None if rng is None else copy.deepcopy(rng.bit_generator.state)


def generator_from_state(state: dict | None) -> np.random.Generator | None:
    """Returns a NumPy generator in ``state`` (from :func:`generator_state`), or None."""
    if state is None:
        return None
    rng = np.random.Generator(getattr(np.random, state["bit_generator"])())
    rng.bit_generator.state = state
    return rng


class TaskEnv(gym.Wrapper):
    """Outermost wrapper: carries ``task_info`` and seeds the first reset.

    The first ``reset()`` called without an explicit seed uses the seed given
    at construction, so a freshly made env starts reproducibly; later resets
    continue the env's own random stream. The action space is seeded too, so
    ``action_space.sample()`` is reproducible.

    :meth:`rng_state` captures everything random that decides the env's next
    episodes, and every reset keeps the state it started from in
    ``episode_start_state``: a resumed run restores it and replays the
    episode's actions to return the env to where it was. An inner env with
    random state beyond gymnasium's ``np_random`` defines ``rng_state()`` and
    ``set_rng_state(state)`` itself.
    """

    def __init__(self, env: gym.Env, task_info: Any, seed: int, video_frame: Callable[[], Any] | None = None):
        super().__init__(env)
        self.task_info = task_info
        self._first_reset_seed: int | None = seed
        self._video_frame = video_frame
        self.action_space.seed(seed)
        self.episode_start_state: dict | None = None

    def render(self) -> np.ndarray:
        """Returns the current video frame, uint8 ``(H, W, 3)``; needs ``make_env(..., render=True)``."""
        if self._video_frame is None:
            raise VideoUnsupportedError(
                f"task {self.task_info.name!r} was made without render=True; it draws no video frames")
        frame = np.asarray(self._video_frame())
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise VideoUnsupportedError(
                f"task {self.task_info.name!r} drew a {frame.dtype} frame of shape {frame.shape}; "
                "video frames must be uint8 (H, W, 3)")
        return frame

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Returns ``(observation, info)``; seeded with the make-time seed on first use."""
        self.episode_start_state = self.rng_state()
        if seed is None:
            seed = self._first_reset_seed
        self._first_reset_seed = None
        return self.env.reset(seed=seed, options=options)

    def rng_state(self) -> dict:
        """Returns a copy of the random state that decides this env's next reset and episodes."""
        inner = self.env.unwrapped
        if hasattr(inner, "rng_state"):
            own = inner.rng_state()
        else:
            own = generator_state(getattr(inner, "_np_random", None))
        return {"first_reset_seed": self._first_reset_seed, "env": own,
                "action_space": generator_state(self.action_space.np_random)}

    def set_rng_state(self, state: dict) -> None:
        """Restores a state from :meth:`rng_state`; the next ``reset()`` then starts the episode it would have."""
        inner = self.env.unwrapped
        if hasattr(inner, "set_rng_state"):
            inner.set_rng_state(state["env"])
        else:
            inner._np_random = generator_from_state(state["env"])
        self.action_space._np_random = generator_from_state(state["action_space"])
        self._first_reset_seed = state["first_reset_seed"]
