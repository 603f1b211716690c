"""Gymnasium classic-control tasks with continuous actions."""

from __future__ import annotations

import gymnasium as gym

PENDULUM_ID = "Pendulum-v1"
PENDULUM_EPISODE_LENGTH = 200

MOUNTAINCAR_ID = "MountainCarContinuous-v0"
MOUNTAINCAR_EPISODE_LENGTH = 999


def make_gym_env(env_id: str, episode_length: int, render_mode: str | None = None) -> gym.Env:
    """Returns ``gym.make(env_id)`` truncating after ``episode_length`` steps, with ``render_mode``
    (``"rgb_array"``: ``render()`` returns the frame; classic-control tasks draw it with pygame)."""
    return gym.make(env_id, max_episode_steps=episode_length, render_mode=render_mode)
