"""Experiment trackers beside the CSV files: Weights & Biases and TensorBoard, chosen with ``loggers=[...]``.

Each tracker has the same small interface (:class:`Tracker`); the run's
:class:`tdmpc2.logger.Logger` forwards every CSV row and every evaluation
video to the trackers made here by :func:`create_trackers`. A row of kind
``train`` becomes the scalars ``train/<column>``. The x axis of every tracker
is the number of gradient updates (the environment step is logged beside it
as ``<kind>/step``): in the counting presets all updates happen at one
environment step, at the end of seeding.

Each backend is an optional extra (``pip install -e ".[wandb]"``,
``".[tensorboard]"``); its package is imported only when the tracker is made.

A resumed run (``resume=...``) continues its trackers: W&B the same W&B run
(its id is kept in ``<run dir>/wandb/run_id``), TensorBoard the same folder,
in a new event file that starts with TensorBoard's restart marker at the
checkpoint's updates + 1. Rows the CSV files already hold are not sent again;
rows a killed run logged after its last checkpoint are sent again by the
resumed one (the same values on the CPU).
"""
from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from omegaconf import OmegaConf

from tdmpc2.extras import require

#: the names ``loggers`` accepts
TRACKER_NAMES = ("wandb", "tensorboard")

#: ``wandb.mode`` values (null: wandb's own choice, ``WANDB_MODE`` from the environment, else online)
WANDB_MODES = (None, "online", "offline")

#: longest side of the GIF that TensorBoard shows for an evaluation video (the mp4 keeps full size)
TENSORBOARD_VIDEO_SIDE = 256


class TrackerError(RuntimeError):
    """A tracker could not start (not logged in, no network in online mode, ...); the message says what to do."""


class Tracker(Protocol):
    """What the logger needs from a tracking backend."""

    def log_scalars(self, kind: str, values: Mapping[str, float], step: int) -> None:
        """Record ``values`` (one CSV row of ``kind``) as ``<kind>/<name>`` at x = ``step``."""

    def log_video(self, name: str, path: Path, frames: Sequence[np.ndarray], fps: float, step: int) -> None:
        """Record the video written at ``path`` (its ``frames``, uint8 HxWx3, at ``fps``) under ``name``."""

    def attach_config(self, config: dict) -> None:
        """Attach the run's resolved config."""

    def flush(self) -> None:
        """Hand everything recorded so far to the backend's files or service (before each checkpoint)."""

    def close(self) -> None:
        """Flush and finish."""


def names_problem(names) -> str | None:
    """Return why ``names`` is not a valid ``loggers`` value (a list of distinct tracker names), or None."""
    if isinstance(names, str) or not isinstance(names, Sequence):
        return (f"loggers must be a list such as loggers=[wandb,tensorboard] (or [] for CSV only), got {names!r}; "
                f"allowed names: {', '.join(TRACKER_NAMES)}")
    unknown = [n for n in names if n not in TRACKER_NAMES]
    if unknown:
        return f"loggers: unknown name(s) {', '.join(map(repr, unknown))}; allowed names: {', '.join(TRACKER_NAMES)}"
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        return f"loggers names {', '.join(repeated)} more than once; list each tracker once"
    return None


def wandb_names(cfg) -> tuple[str, str]:
    """Return the W&B ``(group, run name)`` of ``cfg``: the ``wandb.group`` / ``wandb.name`` keys, else
    ``<task>-<variant>-<aux>`` and ``<group>[-<exp_name>]-s<seed>`` (exp_name unless it is ``default``)."""
    group = cfg.wandb.group or f"{cfg.task}-{cfg.get('variant')}-{cfg.get('aux')}"
    experiment = "" if cfg.exp_name == "default" else f"-{cfg.exp_name}"
    return group, cfg.wandb.name or f"{group}{experiment}-s{cfg.seed}"


class WandbTracker:
    """Logs to a Weights & Biases run whose local files live in ``<run_dir>/wandb``."""

    def __init__(self, run_dir: str | Path, project: str, entity: str | None, group: str, name: str,
                 mode: str | None = None, run_id: str | None = None):
        require("wandb", "loggers=[wandb]")
        import wandb

        self._wandb = wandb
        try:
            # With run_id (a resumed run) W&B continues that W&B run; online it ignores steps it already holds.
            self._run = wandb.init(project=project, entity=entity, group=group, name=name, mode=mode,
                                   dir=str(run_dir), job_type="train", id=run_id,
                                   resume="allow" if run_id else None)
        except Exception as err:  # wandb raises several types (UsageError, CommError, timeouts)
            raise TrackerError(f"wandb could not start: {err}. Log in with `wandb login`, or log locally with "
                               f"wandb.mode=offline (or WANDB_MODE=offline) and upload later with `wandb sync`") from err

    @property
    def run_id(self) -> str:
        """Return the W&B run's id."""
        return self._run.id

    def log_scalars(self, kind: str, values: Mapping[str, float], step: int) -> None:
        """Record ``values`` as ``<kind>/<name>`` at W&B step ``step``."""
        self._run.log({f"{kind}/{k}": v for k, v in values.items()}, step=step)

    def log_video(self, name: str, path: Path, frames: Sequence[np.ndarray], fps: float, step: int) -> None:
        """Upload the mp4 at ``path`` as ``name`` at step ``step``."""
        self._run.log({name: self._wandb.Video(str(path), format="mp4")}, step=step)

    def attach_config(self, config: dict) -> None:
        """Set the W&B run's config to ``config``."""
        self._run.config.update(config, allow_val_change=True)

    def flush(self) -> None:
        """Return None: W&B hands each record to its service process as it is logged."""

    def close(self) -> None:
        """Finish the W&B run and wait until its records are written (``finish`` alone may return earlier)."""
        self._run.finish()
        self._wandb.teardown()


class TensorBoardTracker:
    """Writes TensorBoard event files into ``<run_dir>/tensorboard`` (``tensorboard --logdir runs``)."""

    def __init__(self, run_dir: str | Path, purge_step: int | None = None):
        require("tensorboard", "loggers=[tensorboard]")
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from torch.utils.tensorboard import summary
        from torch.utils.tensorboard.writer import FileWriter

        self._summary = summary
        self.log_dir = Path(run_dir) / "tensorboard"
        self._writer = FileWriter(str(self.log_dir), flush_secs=30)  # TensorBoard sees a live run within 30 s
        if purge_step is not None:
            # A restarted run's marker (as SummaryWriter(purge_step=...) writes it): TensorBoard's event loader
            # drops the points at x >= purge_step that earlier event files hold.
            self._writer.add_event(Event(step=purge_step, file_version="brain.Event:2"))
            self._writer.add_event(Event(step=purge_step, session_log=SessionLog(status=SessionLog.START)))

    def log_scalars(self, kind: str, values: Mapping[str, float], step: int) -> None:
        """Write each value as scalar ``<kind>/<name>`` at global step ``step``."""
        for key, value in values.items():
            self._writer.add_summary(self._summary.scalar(f"{kind}/{key}", float(value)), step)

    def log_video(self, name: str, path: Path, frames: Sequence[np.ndarray], fps: float, step: int) -> None:
        """Write the frames as an animated GIF image ``name`` (TensorBoard has no mp4 player)."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        gif, height, width = _gif_bytes(frames, fps, TENSORBOARD_VIDEO_SIDE)
        image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=gif)
        self._writer.add_summary(Summary(value=[Summary.Value(tag=name, image=image)]), step)

    def attach_config(self, config: dict) -> None:
        """Write the config as the text summary ``config`` (YAML, shown verbatim)."""
        text = "\n".join("    " + line for line in OmegaConf.to_yaml(OmegaConf.create(config)).splitlines())
        self._writer.add_summary(self._summary.text("config", text), 0)

    def flush(self) -> None:
        """Write the queued events to the event file."""
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()


def _gif_bytes(frames: Sequence[np.ndarray], fps: float, side: int) -> tuple[bytes, int, int]:
    """Return ``(GIF file bytes, height, width)`` of ``frames``, shrunk so that the longer side is at most ``side``."""
    from PIL import Image

    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
    scale = min(1.0, side / max(images[0].size))
    if scale < 1.0:
        size = (max(1, round(images[0].width * scale)), max(1, round(images[0].height * scale)))
        images = [im.resize(size, Image.Resampling.BILINEAR) for im in images]
    # One palette for the whole clip, from up to eight frames spread over it: several times faster than
    # a palette per frame, and colours that appear late (the counting task's objects) are in it.
    sample = np.concatenate([np.asarray(images[i]) for i in np.linspace(0, len(images) - 1, 8).astype(int)])
    palette = Image.fromarray(sample).quantize(256)
    paletted = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in images]
    buffer = io.BytesIO()
    paletted[0].save(buffer, format="GIF", save_all=True, append_images=paletted[1:], duration=round(1000 / fps),
                     loop=0)
    return buffer.getvalue(), images[0].height, images[0].width


#: where a run keeps the id of its W&B run, relative to the run directory (a resumed run continues that W&B run)
WANDB_RUN_ID_FILE = Path("wandb") / "run_id"


def create_trackers(cfg, run_dir: str | Path, config: dict | None = None,
                    resumed_at: int | None = None) -> list[Tracker]:
    """Return one tracker per name in ``cfg.loggers`` (in that order), each given ``config`` when it is not None.

    ``resumed_at`` is None for a new run; for a resumed one, the updates of the
    checkpoint it continues from: W&B then continues the W&B run whose id the
    run directory keeps (a new one if it keeps none), and TensorBoard marks the
    restart at ``resumed_at + 1`` (the rows up to the checkpoint stay).
    Raises ValueError for an unknown name, :class:`tdmpc2.extras.MissingExtraError`
    for a backend that is not installed and :class:`TrackerError` for one that
    cannot start; trackers already started are closed first.
    """
    problem = names_problem(cfg.loggers)
    if problem:
        raise ValueError(problem)
    trackers: list[Tracker] = []
    try:
        for name in cfg.loggers:
            if name == "wandb":
                group, run_name = wandb_names(cfg)
                id_file = Path(run_dir) / WANDB_RUN_ID_FILE
                run_id = None
                if resumed_at is not None and id_file.is_file():
                    run_id = id_file.read_text().strip() or None
                tracker = WandbTracker(run_dir, cfg.wandb.project, cfg.wandb.entity, group, run_name, cfg.wandb.mode,
                                       run_id=run_id)
                id_file.parent.mkdir(parents=True, exist_ok=True)
                id_file.write_text(tracker.run_id + "\n")
            else:
                tracker = TensorBoardTracker(run_dir, purge_step=None if resumed_at is None else resumed_at + 1)
            trackers.append(tracker)
            if config is not None:
                tracker.attach_config(config)
    except BaseException:
        for tracker in trackers:
            tracker.close()
        raise
    return trackers
