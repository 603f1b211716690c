"""Episode replay on torchrl: whole episodes in, sub-trajectories of length H+1 out.

An episode is a TensorDict of length T+1 whose step t holds ``obs[t]``, the
``action[t]`` and ``reward[t]`` that led to it (NaN at t = 0),
``terminated[t]``, per-observation ``info`` entries, and an ``episode`` id.
Observations keep their dtype, so pixels stay uint8 (a 100k-frame 64x64 RGB
buffer costs 1.2 GB rather than 4.9 GB as float32).

Given a ``directory``, the rows live there in a memory-mapped ring that
survives the process (:mod:`tdmpc2.replay_files`), and :meth:`EpisodeBuffer.commit`
/ :meth:`EpisodeBuffer.restore` take a resumed run back to exactly the rows a
checkpoint recorded. Without one they live in memory, and a commit carries
the rows themselves.
"""
from __future__ import annotations

from pathlib import Path

import torch
from tensordict import TensorDict
from torchrl.data import ReplayBuffer, SliceSampler, TensorStorage

from tdmpc2.replay_files import ReplayFiles, ReplayFilesError, content_hash, row_bytes


class EpisodeBuffer:
    """Replay buffer of whole episodes; :meth:`sample` returns ``(H+1, B)`` slices within one episode."""

    def __init__(self, capacity: int, batch_size: int, horizon: int, device: str | torch.device = "cpu",
                 seed: int | None = None, directory: str | Path | None = None):
        self.capacity = int(capacity)
        self.batch_size = int(batch_size)
        self.horizon = int(horizon)
        self.device = torch.device(device)
        self.files = ReplayFiles(directory) if directory is not None else None
        self._num_eps = 0
        self._pending: list[TensorDict] = []
        self._pending_steps = 0
        self._generator = torch.Generator().manual_seed(seed) if seed is not None else None
        # The storage is made when the first episode arrives: its fields fix the layout of the rows.
        self._rows: TensorDict | None = None
        self._buffer: ReplayBuffer | None = None
        self._serial = 0

    def _attach(self, rows: TensorDict, length: int, writer_state: dict | None = None) -> None:
        """Sample from ``rows`` (the whole ring), of which ``length`` are in use, writing next where ``writer_state`` says."""
        storage = TensorStorage(rows)
        # torchrl's own way of setting the length in use (no data is copied by an empty state dict).
        storage.load_state_dict({"_storage": {}, "initialized": True, "_len": int(length)})
        self._rows = rows
        self._buffer = ReplayBuffer(
            storage=storage,
            sampler=SliceSampler(
                slice_len=self.horizon + 1,
                traj_key="episode",
                end_key=None,
                truncated_key=None,
                strict_length=True,
                cache_values=True,
            ),
            batch_size=self.batch_size * (self.horizon + 1),
            generator=self._generator,
        )
        if writer_state is not None:
            self._buffer.writer.load_state_dict(writer_state)

    @property
    def num_episodes(self) -> int:
        """Return how many episodes were added (including ones since overwritten)."""
        return self._num_eps

    @property
    def row_bytes(self) -> int:
        """Return the bytes one stored row (observation and its step's fields) takes, 0 before the first episode."""
        return 0 if self._rows is None else row_bytes(self._rows)

    def __len__(self) -> int:
        """Return the number of stored steps (episodes waiting to be written included, up to capacity)."""
        stored = 0 if self._buffer is None else len(self._buffer)
        return min(stored + self._pending_steps, self.capacity)

    def add(self, episode: TensorDict) -> int:
        """Store one episode (a TensorDict of length T+1 >= H+1); return the number of stored steps."""
        if episode.batch_dims != 1:
            raise ValueError(f"an episode must be a 1-D TensorDict, got batch size {tuple(episode.batch_size)}")
        if episode.shape[0] < self.horizon + 1:
            raise ValueError(f"episode of {episode.shape[0]} steps is shorter than horizon+1 = {self.horizon + 1}")
        episode = episode.clone(False)
        episode["episode"] = torch.full((episode.shape[0],), self._num_eps, dtype=torch.int64)
        if self._buffer is None:
            row = episode[0]
            self._attach(self.files.create(row, self.capacity) if self.files else row.expand(self.capacity).clone(), 0)
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
            data = torch.cat(self._pending)
            if self.files is not None:
                cursor = self._buffer.writer.state_dict()["_cursor"]
                self.files.before_write(self._rows, (cursor + torch.arange(data.shape[0])) % self.capacity)
            self._buffer.extend(data)
            self._pending.clear()
            self._pending_steps = 0

    def sample(self) -> TensorDict:
        """Return a batch ``(H+1, B)`` of sub-trajectories that never cross an episode boundary, on ``device``."""
        self.flush()
        if self._buffer is None:
            raise RuntimeError("cannot sample from an empty replay buffer")
        td = self._buffer.sample()
        td = td.reshape(self.batch_size, self.horizon + 1).transpose(0, 1)
        return td.to(self.device, non_blocking=True)

    # -- resuming -----------------------------------------------------------
    def content_hash(self) -> str | None:
        """Return the SHA-1 of the stored rows after writing the waiting episodes (None while empty)."""
        self.flush()
        if self._buffer is None or len(self._buffer) == 0:
            return None
        return content_hash(self._rows, len(self._buffer))

    def commit(self) -> dict:
        """Write the waiting episodes and return the state a resumable checkpoint records.

        The state holds the length in use, the write cursor, the episode
        count, the sampler's generator and a SHA-1 of the rows. On disk, the
        rows are made durable and a new commit starts: from here on, rows it
        covers are saved to its undo log before being overwritten. In memory,
        the state carries the rows themselves.
        """
        self.flush()
        length = 0 if self._buffer is None else len(self._buffer)
        state = {
            "capacity": self.capacity,
            "length": length,
            "num_episodes": self._num_eps,
            "writer": None if self._buffer is None else self._buffer.writer.state_dict(),
            "generator": None if self._generator is None else self._generator.get_state(),
            "hash": self.content_hash(),
            "row_bytes": self.row_bytes,
            "on_disk": self.files is not None,
        }
        if self.files is not None:
            if self._rows is not None:
                self.files.sync(self._rows)
            self._serial += 1
            self.files.begin(self._serial, length)
            state["serial"] = self._serial
        else:
            state["rows"] = None if self._rows is None else self._rows[:length].clone()
        return state

    def restore(self, state: dict) -> int:
        """Return this new, empty buffer to a state from :meth:`commit`; return the rows the undo logs put back.

        On disk, the ring is rolled back to the commit with the undo logs and
        its rows must hash to what the commit recorded; otherwise (a replay
        file changed, truncated or missing, or an undo log deleted) this raises
        :class:`~tdmpc2.replay_files.ReplayFilesError`.
        """
        if self._buffer is not None or self._pending:
            raise RuntimeError("restore() needs a new, empty buffer")
        if state["capacity"] != self.capacity:
            raise ReplayFilesError(f"the checkpoint's replay holds {state['capacity']:,} rows; this buffer {self.capacity:,}")
        if state["on_disk"] != (self.files is not None):
            where = "on disk" if state["on_disk"] else "in memory"
            raise ReplayFilesError(f"the checkpoint's replay was kept {where}; this buffer is not")
        self._num_eps = int(state["num_episodes"])
        if state["generator"] is not None:
            self._generator = self._generator or torch.Generator()
            self._generator.set_state(state["generator"])
        length, rolled_back = int(state["length"]), 0
        if self.files is not None:
            self._serial = int(state["serial"])
            if (self.files.ring_dir / "meta.json").exists():
                rows = self.files.open(length, self.capacity)
                rolled_back = self.files.roll_back(rows, self._serial)
                self._attach(rows, length, state["writer"] if length else {"_cursor": 0, "_write_count": 0})
            self.files.begin(self._serial, length)
        elif state["rows"] is not None:
            rows = state["rows"][0].expand(self.capacity).clone()
            rows[:length] = state["rows"]
            self._attach(rows, length, state["writer"])
        if length and self._buffer is None:
            raise ReplayFilesError(f"the checkpoint records {length:,} replay rows but {self.files.ring_dir} holds none")
        found = self.content_hash()
        if found != state["hash"]:
            where = self.files.ring_dir if self.files is not None else "the checkpoint"
            raise ReplayFilesError(
                f"the replay in {where} does not match the checkpoint: its {length:,} rows hash to {found}, the "
                f"checkpoint recorded {state['hash']} (a replay file was changed, or an undo log it needs was deleted)")
        return rolled_back

    def forget_commits_before(self, serial: int) -> None:
        """Delete the undo logs only commits older than ``serial`` need (no kept checkpoint refers to them); returns nothing."""
        if self.files is not None:
            self.files.forget_before(serial)

    def close(self) -> None:
        """Close the replay's open files; returns nothing."""
        if self.files is not None:
            self.files.close()
