"""Video frames: what a person watching an evaluation episode sees, as uint8 (H, W, 3) arrays.

Only the counting task needs help here: its observations are tiny (32x32 or
64x64), so its video frame is the observation enlarged without smoothing,
with the number of objects written under it.
"""
from __future__ import annotations

import functools

import numpy as np

#: side, in pixels, that counting frames are enlarged towards (by a whole factor)
COUNTING_VIDEO_SIDE = 256
#: height of the caption strip under a frame
CAPTION_HEIGHT = 32


def enlarge(frame: np.ndarray, factor: int) -> np.ndarray:
    """Return the HxWx3 ``frame`` enlarged ``factor`` times by repeating pixels (no smoothing)."""
    if factor < 1:
        raise ValueError(f"enlarge: factor must be a positive integer, got {factor!r}")
    return np.repeat(np.repeat(frame, factor, axis=0), factor, axis=1)


@functools.lru_cache(maxsize=4)
def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def caption(frame: np.ndarray, text: str, height: int = CAPTION_HEIGHT) -> np.ndarray:
    """Return ``frame`` (HxWx3 uint8) with a black strip of ``height`` pixels below it holding ``text`` in white."""
    from PIL import Image, ImageDraw

    width = frame.shape[1]
    strip = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(strip)
    font = _font(max(8, round(height * 0.65)))
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text(((width - (right - left)) / 2 - left, (height - (bottom - top)) / 2 - top), text, fill=(255, 255, 255),
              font=font)
    return np.concatenate([frame, np.asarray(strip, dtype=np.uint8)], axis=0)


def counting_frame(env) -> np.ndarray:
    """Return the counting environment's current frame enlarged towards 256 pixels, with ``count <k>`` under it.

    ``env`` is a :class:`envs.counting.CountingEnv` made with ``render_mode="rgb_array"`` and reset.
    """
    frame = env.render()
    if frame is None:
        raise RuntimeError("counting: no frame to show; make the env with render_mode='rgb_array' and reset it first")
    factor = max(1, COUNTING_VIDEO_SIDE // frame.shape[0])
    return caption(enlarge(frame, factor), f"count {env.count}")
