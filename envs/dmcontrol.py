"""dm_control suite tasks as gymnasium environments, with state or pixel observations.

Importing this module imports dm_control; the registry checks that the
package is installed before importing it, so any ImportError raised here is
a genuine fault of the installation and is left to propagate. MuJoCo's
rendering back-end is chosen first (``envs.gl``): dm_control fixes it on import.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs import gl

gl.choose_mujoco_gl(rendering=False)

import dm_control.suite as suite  # noqa: E402  (after the back-end choice)

DMC_ACTION_REPEAT = 2
# 500 agent steps x action repeat 2 = 1000 simulator steps, as in TD-MPC2.
DMC_EPISODE_LENGTH = 500
# Video frames (height, width): multiples of 16, as H.264 wants.
DMC_RENDER_SIZE = (240, 320)
# Camera per domain for pixel observations and video frames (TD-MPC2's choice: the quadruped is seen best
# from camera 2; every other domain from camera 0).
DMC_CAMERAS = {"quadruped": 2}
# Pixel observations, as the public TD-MPC2 renders them: 64x64 RGB, the last 3 frames stacked channel-first.
DMC_PIXEL_SIZE = 64
DMC_FRAME_STACK = 3


def flatten_observation(observation: Mapping[str, Any]) -> np.ndarray:
    """Returns the dm_control observation dict concatenated into a float32 vector."""
    parts = [np.asarray(value, dtype=np.float64).reshape(-1) for value in observation.values()]
    return np.concatenate(parts).astype(np.float32)


class DMControlEnv(gym.Env):
    """One dm_control suite task with flat float32 state observations, or with ``pixels=True`` one uint8
    ``(3, 64, 64)`` frame from the domain's camera (stacking frames is left to ``envs.wrappers.FrameStack``).

    Each ``step`` applies the action ``action_repeat`` times and returns the
    summed reward; a pixel observation is rendered once, after the last repeat. dm_control's own time limit is switched off: the episode
    length is enforced by the registry's ``TimeLimit`` wrapper, in agent steps.
    ``terminated`` is reported only when the task itself ends an episode with
    discount 0 (no standard suite task does). ``render()`` draws the scene
    with MuJoCo's offscreen renderer (for videos only: observations stay
    states); ``render_fps`` plays it back in real time.
    """

    metadata = {"render_modes": ["rgb_array"]}
    render_mode = "rgb_array"

    def __init__(self, domain: str, task: str, seed: int | None = None,
                 action_repeat: int = DMC_ACTION_REPEAT, pixels: bool = False):
        if action_repeat < 1:
            raise ValueError(f"action_repeat must be >= 1, got {action_repeat}")
        self.domain = domain
        self.task = task
        self.action_repeat = action_repeat
        self.pixels = bool(pixels)
        self.camera = DMC_CAMERAS.get(domain, 0)
        self._env = self._load(seed)
        # Seed the current dm_control instance was built with and that no
        # reset has consumed yet; reset(seed=same) then needs no rebuild.
        self._unconsumed_seed = seed

        action_spec = self._env.action_spec()
        self.action_space = spaces.Box(
            low=np.asarray(action_spec.minimum, dtype=np.float64),
            high=np.asarray(action_spec.maximum, dtype=np.float64),
            shape=action_spec.shape,
            dtype=np.float64,
        )
        if self.pixels:
            self.observation_space = spaces.Box(0, 255, (3, DMC_PIXEL_SIZE, DMC_PIXEL_SIZE), dtype=np.uint8)
        else:
            size = sum(int(np.prod(spec.shape)) for spec in self._env.observation_spec().values())
            self.observation_space = spaces.Box(
                low=-np.inf, high=np.inf, shape=(size,), dtype=np.float32
            )
        fps = 1.0 / (self._env.control_timestep() * action_repeat)
        self.metadata = {**self.metadata, "render_fps": fps}

    def _load(self, seed: int | None):
        return suite.load(
            self.domain,
            self.task,
            task_kwargs={"random": seed, "time_limit": float("inf")},
        )

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Returns ``(observation, {})`` for a new episode.

        A seed rebuilds the dm_control environment with that seed, which makes
        the episode sequence from here on reproducible.
        """
        super().reset(seed=seed)
        if seed is not None and seed != self._unconsumed_seed:
            self._env = self._load(seed)
        self._unconsumed_seed = None
        timestep = self._env.reset()
        return self._observe(timestep), {}

    def step(self, action: Any):
        """Returns ``(observation, summed_reward, terminated, truncated, {})``."""
        action = np.asarray(action, dtype=np.float64)
        total_reward = 0.0
        for _ in range(self.action_repeat):
            timestep = self._env.step(action)
            total_reward += float(timestep.reward or 0.0)
            if timestep.last():
                break
        ended = timestep.last()
        terminated = bool(ended and timestep.discount == 0.0)
        truncated = bool(ended and not terminated)
        return self._observe(timestep), total_reward, terminated, truncated, {}

    def _observe(self, timestep) -> np.ndarray:
        return self.pixel_frame() if self.pixels else flatten_observation(timestep.observation)

    def pixel_frame(self) -> np.ndarray:
        """Returns the current scene as a pixel observation: uint8 (3, 64, 64), channels first."""
        frame = self._env.physics.render(height=DMC_PIXEL_SIZE, width=DMC_PIXEL_SIZE, camera_id=self.camera)
        return np.ascontiguousarray(frame.transpose(2, 0, 1))

    def render(self) -> np.ndarray:
        """Returns the scene as uint8 (240, 320, 3), seen from the domain's camera (video frames)."""
        height, width = DMC_RENDER_SIZE
        return self._env.physics.render(height=height, width=width, camera_id=self.camera)

    def rng_state(self) -> dict:
        """Returns a copy of the task's random state, which decides the next episodes' initial states."""
        return {"task": self._env.task.random.get_state(), "unconsumed_seed": self._unconsumed_seed}

    def set_rng_state(self, state: dict) -> None:
        """Restores a state from :meth:`rng_state` (between episodes: the next reset starts the episode it would have)."""
        self._env.task.random.set_state(state["task"])
        self._unconsumed_seed = state["unconsumed_seed"]

    def close(self):
        """Releases the dm_control physics; returns None."""
        self._env.close()
