"""Replay for stacked pixel observations that stores each frame once.

A pixel task that observes its last k frames stacked channel-first
(dm_control: k = 3, ``(9, 64, 64)``) would store every frame k times. Here an
episode is stored as single frames instead: the k frames of its reset
observation (the reset frame repeated), then the newest frame of each later
observation, so an episode of T+1 observations takes T+k rows and a third
of the memory for k = 3. The k-1 extra rows at the start of an episode
repeat its first step's action, reward and info; they are never returned.

A slice of H+1 observations is sampled as H+k consecutive rows of one
episode and stacked back. Every slice of H+k rows of the padded episode
corresponds to exactly one slice of H+1 observations of the episode, so
sampling draws the same sub-trajectories, with the same probabilities, as
storing the stacks would.
"""
from __future__ import annotations

import torch
from tensordict import TensorDict

from tdmpc2.buffer import EpisodeBuffer


class FrameStackBuffer(EpisodeBuffer):
    """:class:`EpisodeBuffer` of episodes whose observations stack ``frame_stack`` frames; stores single frames.

    :meth:`add` takes and :meth:`sample` returns the same episodes and
    ``(H+1, B)`` batches as an :class:`EpisodeBuffer` would, with observations
    of ``frame_stack * C`` channels, oldest frame first.
    """

    def __init__(self, capacity: int, batch_size: int, horizon: int, device: str | torch.device = "cpu",
                 seed: int | None = None, *, frame_stack: int, **kwargs):
        if not isinstance(frame_stack, int) or frame_stack < 2:
            raise ValueError(f"frame_stack must be an integer >= 2, got {frame_stack!r}")
        self.frame_stack = frame_stack
        self.sample_horizon = int(horizon)
        # The underlying buffer samples H+k rows: the H+1 observations and the k-1 frames before the first.
        super().__init__(capacity, batch_size, int(horizon) + frame_stack - 1, device, seed, **kwargs)

    def add(self, episode: TensorDict) -> int:
        """Store one episode (observations ``(T+1, k*C, H, W)``) as T+k single-frame rows; return the rows stored."""
        k = self.frame_stack
        obs = episode["obs"]
        if obs.dim() != 4 or obs.shape[1] % k:
            raise ValueError(f"observations must be (T+1, {k}*C, H, W) stacks of {k} frames, got {tuple(obs.shape)}")
        if episode.shape[0] < self.sample_horizon + 1:
            raise ValueError(f"episode of {episode.shape[0]} steps is shorter than horizon+1 = {self.sample_horizon + 1}")
        c = obs.shape[1] // k
        frames = torch.cat([obs[0].reshape(k, c, *obs.shape[2:]), obs[1:, (k - 1) * c:]])
        rest = episode.exclude("obs")
        padded = torch.cat([rest[:1].expand(k - 1).clone(), rest])
        padded["obs"] = frames
        return super().add(padded)

    def sample(self) -> TensorDict:
        """Return a batch ``(H+1, B)`` of sub-trajectories within one episode, observations stacked again."""
        rows = super().sample()
        steps = self.sample_horizon + 1
        frames = rows["obs"]
        stacked = torch.cat([frames[i:i + steps] for i in range(self.frame_stack)], dim=2)
        batch = rows[self.frame_stack - 1:].exclude("obs")
        batch["obs"] = stacked
        return batch


def make_replay(cfg, **kwargs) -> EpisodeBuffer:
    """Return the replay buffer of a resolved run config: single frames stacked on sampling when the task
    stacks frames (``cfg.frame_stack > 1``), else whole observations. ``kwargs`` go to the buffer
    (``directory=``: keep its rows on disk there)."""
    frame_stack = int(cfg.get("frame_stack", 1) or 1)
    if frame_stack > 1:
        return FrameStackBuffer(cfg.buffer_capacity, cfg.batch_size, cfg.horizon, cfg.device, seed=cfg.seed,
                                frame_stack=frame_stack, **kwargs)
    return EpisodeBuffer(cfg.buffer_capacity, cfg.batch_size, cfg.horizon, cfg.device, seed=cfg.seed, **kwargs)
