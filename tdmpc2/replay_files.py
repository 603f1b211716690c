"""The persistent replay's files in a run directory: a memory-mapped ring, its undo logs and its fingerprint.

Layout of ``<run_dir>/replay/``::

    ring/            the rows, memory-mapped in torchrl's layout (one ``.memmap`` file per field, ``meta.json``)
    undo_<k>.log     rows of the ring as they were at commit k, saved just before they were overwritten

A resumable checkpoint *commits* the replay: it records the ring's length,
write cursor and a SHA-1 of its rows (:func:`content_hash`); the checkpoint
file, renamed into place atomically, is the commit record. Rows that the
newest commit covers are overwritten only after their old contents have been
appended to that commit's undo log, so whatever instant a run is killed at,
rolling the newer undo logs back (:meth:`ReplayFiles.roll_back`) returns the
ring to any commit whose logs were kept. A log record cut short by the kill
is ignored: the rows it was saving had not been overwritten yet.

The ring's files are given their full size on disk when they are created, so
a disk too small for the replay is reported then (and a write into the
memory map can never fail later for want of space, which would kill the
process with SIGBUS).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDict

_RECORD_HEAD = b"TDUNDO01"
_RECORD_TAIL = b"TDUNDOOK"


class ReplayFilesError(RuntimeError):
    """The replay's files cannot be created or read, or do not match the checkpoint being resumed."""


def _leaves(td: TensorDict) -> list[tuple[str, torch.Tensor]]:
    """Return ``(dotted key, tensor)`` for every field of ``td``, in a fixed (sorted) order."""
    items = td.items(include_nested=True, leaves_only=True)
    return sorted((".".join(k) if isinstance(k, tuple) else k, v) for k, v in items)


def row_bytes(td: TensorDict) -> int:
    """Return the bytes one row of ``td`` (a storage of shape ``(N,)``) takes."""
    return sum(t[0].numel() * t.element_size() for _, t in _leaves(td))


def content_hash(td: TensorDict, length: int) -> str:
    """Return the SHA-1 (hex) of the first ``length`` rows of every field of ``td``, with their names, dtypes and shapes."""
    digest = hashlib.sha1()
    for key, t in _leaves(td):
        digest.update(f"{key}:{t.dtype}:{tuple(t.shape[1:])}:{length};".encode())
        digest.update(memoryview(np.ascontiguousarray(t[:length].numpy())).cast("B"))
    return digest.hexdigest()


class ReplayFiles:
    """The ring and undo logs of one replay directory (see the module docstring)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.ring_dir = self.directory / "ring"
        self.serial = 0  # the commit whose undo log receives the rows about to be overwritten
        self._committed = 0  # rows [0, committed) belong to that commit
        self._written = 0  # rows written since that commit
        self._log = None

    # -- the ring -----------------------------------------------------------
    def create(self, row: TensorDict, capacity: int) -> TensorDict:
        """Create the ring's files for ``capacity`` rows shaped like ``row`` and reserve their disk space; return the memory-mapped rows."""
        if (self.ring_dir / "meta.json").exists():
            raise ReplayFilesError(f"{self.ring_dir} already holds a replay; a new run needs an empty directory")
        self.ring_dir.mkdir(parents=True, exist_ok=True)
        td = row.expand(capacity).memmap_like(prefix=self.ring_dir)
        needed = capacity * row_bytes(td)
        for key, t in _leaves(td):
            try:
                _reserve(t.filename, t.numel() * t.element_size())
            except OSError as err:
                if err.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise ReplayFilesError(
                        f"not enough disk space for the replay in {self.ring_dir}: it needs {needed / 1e9:.2f} GB "
                        f"({capacity:,} rows of {row_bytes(td):,} bytes); free space or lower buffer_size") from err
                raise
        return td

    def open(self, length: int, capacity: int) -> TensorDict:
        """Return the existing ring's memory-mapped rows, after checking that its files are whole; ``length`` rows are in use."""
        if not (self.ring_dir / "meta.json").is_file():
            raise ReplayFilesError(f"no replay at {self.ring_dir} (its meta.json is missing)")
        try:
            td = _load_memmap_checked(self.ring_dir)
        except ReplayFilesError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise ReplayFilesError(f"the replay at {self.ring_dir} cannot be read ({type(err).__name__}: {err})") from err
        if td.shape[0] != capacity:
            raise ReplayFilesError(f"the replay at {self.ring_dir} holds {td.shape[0]:,} rows; the run needs {capacity:,}")
        self._committed = length
        return td

    def sync(self, td: TensorDict) -> None:
        """Flush the ring's and the undo log's written pages to disk; returns nothing."""
        for _, t in _leaves(td):
            _fsync(t.filename)
        if self._log is not None:
            self._log.flush()
            os.fsync(self._log.fileno())

    # -- commits and undo logs ----------------------------------------------
    def begin(self, serial: int, length: int) -> None:
        """Start commit ``serial``, which covers rows ``[0, length)``: rows it covers are saved before being overwritten."""
        self._close_log()
        self.serial, self._committed, self._written = serial, length, 0

    def before_write(self, td: TensorDict, index: torch.Tensor) -> None:
        """Save to the undo log the rows at ``index`` (ring positions about to be written, in write order) that the commit still needs."""
        capacity = td.shape[0]
        first_time = torch.arange(self._written, self._written + len(index)) < capacity
        self._written += len(index)
        keep = index[first_time & (index < self._committed)]
        if len(keep):
            self._append(keep, td[keep])

    def roll_back(self, td: TensorDict, serial: int) -> int:
        """Return the ring to commit ``serial`` by undoing every newer overwrite (newest log first); return the rows restored.

        Logs of commits at or after ``serial`` are deleted once applied; the
        ring is then exactly as that commit recorded it.
        """
        self._close_log()
        logs = sorted(((k, p) for k, p in self._logs() if k >= serial), reverse=True)
        restored = 0
        for _, path in logs:
            for index, rows in self._read(path, td):
                td[index] = rows
                restored += len(index)
        self.sync(td)
        for _, path in logs:
            path.unlink()
        return restored

    def forget_before(self, serial: int) -> None:
        """Delete the undo logs of commits older than ``serial`` (no kept checkpoint needs them); returns nothing."""
        for k, path in self._logs():
            if k < serial:
                path.unlink(missing_ok=True)

    def log_sizes(self) -> dict[int, int]:
        """Return the size in bytes of each undo log, by commit."""
        return {k: p.stat().st_size for k, p in self._logs()}

    def close(self) -> None:
        """Close the open undo log; returns nothing."""
        self._close_log()

    def _logs(self) -> list[tuple[int, Path]]:
        out = []
        for path in self.directory.glob("undo_*.log"):
            try:
                out.append((int(path.stem.split("_", 1)[1]), path))
            except ValueError:
                continue
        return out

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _append(self, index: torch.Tensor, rows: TensorDict) -> None:
        if self._log is None:
            self._log = open(self.directory / f"undo_{self.serial}.log", "ab")
        # The record reaches the kernel before the ring is touched: a killed process leaves either the
        # whole record or one without its tail (ignored: its rows were not yet overwritten).
        self._log.write(_RECORD_HEAD + struct.pack("<q", len(index)))
        self._log.write(memoryview(index.to(torch.int64).numpy()).cast("B"))
        for _, t in _leaves(rows):
            self._log.write(memoryview(np.ascontiguousarray(t.numpy())).cast("B"))
        self._log.write(_RECORD_TAIL)
        self._log.flush()

    def _read(self, path: Path, td: TensorDict):
        """Yield ``(index, rows)`` for every whole record of the undo log at ``path``, reading one record at a time."""
        leaves = [(k, t.dtype, tuple(t.shape[1:]), t[0].numel() * t.element_size()) for k, t in _leaves(td)]
        per_row = sum(n for *_, n in leaves)
        with open(path, "rb") as f:
            while True:
                head = f.read(16)
                if len(head) < 16 or head[:8] != _RECORD_HEAD:
                    return
                (n,) = struct.unpack("<q", head[8:])
                size = 8 * n + n * per_row + len(_RECORD_TAIL)
                body = f.read(size) if n >= 0 else b""
                if n < 0 or len(body) < size or body[-len(_RECORD_TAIL):] != _RECORD_TAIL:
                    return
                index = torch.from_numpy(np.frombuffer(body, np.int64, n, 0).copy())
                at, rows = 8 * n, TensorDict(batch_size=[n])
                for key, dtype, shape, row_size in leaves:
                    array = np.frombuffer(body, _numpy_dtype(dtype), n * row_size // dtype.itemsize, at)
                    rows.set(tuple(key.split(".")), torch.from_numpy(array.reshape(n, *shape).copy()))
                    at += n * row_size
                yield index, rows


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty((), dtype=dtype).numpy().dtype


def _reserve(filename: str, size: int) -> None:
    """Give the file its full ``size`` on disk (not a sparse file); raises OSError (ENOSPC) when the disk is too small."""
    if not hasattr(os, "posix_fallocate") or size == 0:
        return
    fd = os.open(filename, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem without preallocation: keep it sparse
            raise
    finally:
        os.close(fd)


def _fsync(filename: str) -> None:
    fd = os.open(filename, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_memmap_checked(ring_dir: Path) -> TensorDict:
    """Return ``TensorDict.load_memmap(ring_dir)`` after checking every field's file holds its full size.

    Mapping a truncated file would succeed, and reading past its end would
    kill the process with SIGBUS: a short file is an error here instead.
    """
    def check(directory: Path) -> None:
        meta = json.loads((directory / "meta.json").read_text())
        for key, entry in meta.items():
            if isinstance(entry, dict) and entry.get("type") == "TensorDict":
                check(directory / key)
            elif isinstance(entry, dict) and "dtype" in entry:
                path = directory / f"{key}.memmap"
                dtype = getattr(torch, entry["dtype"].split(".")[-1])
                expected = int(np.prod(entry["shape"])) * torch.empty((), dtype=dtype).element_size()
                actual = path.stat().st_size if path.exists() else -1
                if actual < expected:
                    what = "missing" if actual < 0 else f"truncated ({actual:,} of {expected:,} bytes)"
                    raise ReplayFilesError(f"replay file {path} is {what}; the replay cannot be restored")

    check(ring_dir)
    return TensorDict.load_memmap(ring_dir)
