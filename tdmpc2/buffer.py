"""Episode replay on torchrl: whole episodes in, sub-trajectories of length H+1 out.

An episode is a TensorDict of length T+1 whose step t holds ``obs[t]``, the
``action[t]`` and ``reward[t]`` that led to it (NaN at t = 0),
``terminated[t]``, per-observation ``info`` entries, and an ``episode`` id.
Observations keep their dtype, so pixels stay uint8 (a 100k-frame 64x64 RGB
buffer costs 1.2 GB rather than 4.9 GB as float32).
"""
from __future__ import annotations

import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, ReplayBuffer, SliceSampler


class EpisodeBuffer:
    """Replay buffer of whole episodes; :meth:`sample` returns ``(H+1, B)`` slices within one episode."""

    def __init__(self, capacity: int, batch_size: int, horizon: int, device: str | torch.device = "cpu", seed: int | None = None):
        self.capacity = int(capacity)
        self.batch_size = int(batch_size)
        self.horizon = int(horizon)
        self.device = torch.device(device)
        self._num_eps = 0
        self._pending: list[TensorDict] = []
        self._pending_steps = 0
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self._buffer = ReplayBuffer(
            storage=LazyTensorStorage(self.capacity, device="cpu"),
            sampler=SliceSampler(
                slice_len=self.horizon + 1,
                traj_key="episode",
                end_key=None,
                truncated_key=None,
                strict_length=True,
                cache_values=True,
            ),
            batch_size=self.batch_size * (self.horizon + 1),
            generator=generator,
        )

    @property
    def num_episodes(self) -> int:
        """Return how many episodes were added (including ones since overwritten)."""
        return self._num_eps

    def __len__(self) -> int:
        """Return the number of stored steps (episodes waiting to be written included, up to capacity)."""
        return min(len(self._buffer) + self._pending_steps, self.capacity)

    def add(self, episode: TensorDict) -> int:
        """Store one episode (a TensorDict of length T+1 >= H+1); return the number of stored steps."""
        if episode.batch_dims != 1:
            raise ValueError(f"an episode must be a 1-D TensorDict, got batch size {tuple(episode.batch_size)}")
        if episode.shape[0] < self.horizon + 1:
            raise ValueError(f"episode of {episode.shape[0]} steps is shorter than horizon+1 = {self.horizon + 1}")
        episode = episode.clone(False)
        episode["episode"] = torch.full((episode.shape[0],), self._num_eps, dtype=torch.int64)
        # torchrl's extend costs milliseconds per call whatever its size, so episodes are written in
        # batches: on the next sample, or once a chunk of them is waiting.
        self._pending.append(episode)
        self._pending_steps += episode.shape[0]
        self._num_eps += 1
        if self._pending_steps >= self._FLUSH_STEPS:
            self.flush()
        return len(self)

    _FLUSH_STEPS = 50_000

    def flush(self) -> None:
        """Write every waiting episode into the torchrl storage."""
        if self._pending:
            self._buffer.extend(torch.cat(self._pending))
            self._pending.clear()
            self._pending_steps = 0

    def sample(self) -> TensorDict:
        """Return a batch ``(H+1, B)`` of sub-trajectories that never cross an episode boundary, on ``device``."""
        self.flush()
        td = self._buffer.sample()
        td = td.reshape(self.batch_size, self.horizon + 1).transpose(0, 1)
        return td.to(self.device, non_blocking=True)
