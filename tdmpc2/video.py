"""Evaluation videos: frames (uint8 HxWx3) to an H.264 mp4 with imageio's ffmpeg plugin (the ``video`` extra)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from tdmpc2.extras import require

#: H.264 encodes in 16x16 macro-blocks; frames are padded (black, right and bottom) to a multiple of this
MACRO_BLOCK = 16
#: playback speed of videos when the task does not say (``metadata["render_fps"]``)
DEFAULT_FPS = 30


def playback_fps(env) -> float:
    """Return the frames per second a video of ``env`` plays at: its ``render_fps``, else :data:`DEFAULT_FPS`."""
    return env.metadata.get("render_fps") or DEFAULT_FPS


def require_packages() -> None:
    """Return None when imageio and its ffmpeg plugin are installed; else raise MissingExtraError."""
    require("video", "save_video=true")


def pad_frame(frame: np.ndarray, multiple: int = MACRO_BLOCK) -> np.ndarray:
    """Return ``frame`` (HxWx3 uint8) padded with black to height and width multiples of ``multiple``."""
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"video frames must be uint8 arrays of shape (H, W, 3), got {frame.dtype} {frame.shape}")
    h, w = frame.shape[:2]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h or pad_w:
        frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)))
    return frame


def write_mp4(path: str | Path, frames: Sequence[np.ndarray], fps: float) -> Path:
    """Write ``frames`` (uint8 HxWx3, all of one size) as an H.264 mp4 at ``fps``; return the path.

    Frames are padded to multiples of 16 pixels rather than resized, so that
    pixels (the counting task's objects) stay sharp.
    """
    require_packages()
    import imageio.v2 as imageio

    if not len(frames):
        raise ValueError("write_mp4: no frames to write")
    if not fps > 0:
        raise ValueError(f"write_mp4: fps must be positive, got {fps!r}")
    shape = np.shape(frames[0])
    for frame in frames:  # every frame is checked before ffmpeg starts: bad input writes nothing
        if np.shape(frame) != shape:
            raise ValueError(f"write_mp4: frames differ in size: {np.shape(frame)} after {shape}")
        if np.asarray(frame).dtype != np.uint8:
            pad_frame(frame)  # raises its error for a frame that is not uint8 (H, W, 3)
    pad_frame(frames[0])  # the same for the shape, common to all
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name and renamed into place: a run killed while writing leaves no truncated video.
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        with imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", macro_block_size=MACRO_BLOCK,
                                ffmpeg_log_level="error") as writer:
            for frame in frames:
                writer.append_data(pad_frame(frame))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
