"""Checkpoints: written atomically, read back with clear errors."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

FORMAT = "pjepa-tdmpc2-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or not one of ours."""


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    """Write ``payload`` to ``path`` atomically (temporary file in the same folder, then rename); return the path.

    A run killed while saving leaves the previous file at ``path`` intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, "version": VERSION, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        _test_pause(path)
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself survives a crash of the machine
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot sync a directory
    finally:
        os.close(fd)


#: Test hook: ``NAME:SECONDS`` makes the save of checkpoint file NAME wait SECONDS after its temporary
#: file is complete and before the rename, so that a test can kill the run while a checkpoint is being written.
PAUSE_ENV = "TDMPC2_TEST_PAUSE_BEFORE_RENAME"


def _test_pause(path: Path) -> None:
    name, _, seconds = os.environ.get(PAUSE_ENV, "").partition(":")
    if name and name == path.name:
        time.sleep(float(seconds or 60))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict:
    """Return the payload saved by :func:`save_checkpoint`; raise :class:`CheckpointError` if it cannot be used.

    ``mmap=True`` maps the tensors' bytes instead of reading them: a quick look at the other entries.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    except Exception as err:  # torch.load fails in many ways on foreign or damaged files
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint written by this project")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {payload.get('version')}; this code reads version {VERSION}")
    return payload
