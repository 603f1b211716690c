"""The counting environment of the paper (Sec. 2.3, Appendices C and D).

An observation is a channel-first uint8 RGB image showing ``k`` identical
objects on black, ``k`` in ``0..max_count``. A shape and a colour are drawn at
reset and kept for the episode; object positions are drawn afresh on every
step. The 1-D action adds an object when it is >= 0 and removes one when it
is < 0 (the count is clamped to ``0..max_count``). The reward of an
observation is 1 iff it shows ``target`` objects.

Episodes end with a one-step grace: the step that reaches the target returns
reward 1 and the episode terminates on the following step, whatever its
action, so reward-1 transitions reach the replay buffer. The environment also
truncates by itself after ``time_limit`` steps.

Placement is exact and never fails: the image is split into a ``grid x grid``
lattice of cells, every object gets its own cell (``k`` distinct cells drawn
at random) and a random offset inside it that always leaves the cell's last
row and column black, so two objects are never 8-neighbours. A random shift
of the whole lattice uses the pixels that the lattice leaves over.

Actions: a ``float32`` array of shape ``(1,)`` (the action space), a 0-d
array or a plain Python number. Finite values outside ``[-1, 1]`` are clipped
(only the sign matters); NaN, infinities, other shapes and non-numbers raise
``ValueError``.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding

SHAPES: tuple[str, ...] = ("triangle", "disk", "square", "bar")

COLOUR_LOW = 30  # each RGB channel is uniform on [COLOUR_LOW, COLOUR_HIGH)
COLOUR_HIGH = 226
MIN_IMAGE_SIZE = 16
MAX_IMAGE_SIZE = 1024
MIN_RADIUS = 2  # below this the four shapes are no longer told apart
_REFERENCE_RADIUS = 3  # the authors' radius at 64x64: a 7x7 bounding box
_REFERENCE_SIZE = 64


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class CountingConfig:
    """Settings of one counting environment; validated on construction.

    target: the count whose observation has reward 1 (0..max_count).
    max_count: the largest number of objects (>= 1; must fit the image).
    time_limit: steps after which the episode is truncated (>= 1).
    image_size: side S of the square (3, S, S) observation (16..1024).
    initial_count: "uniform" (uniform on 0..max_count) or a fixed int.
    """

    target: int = 4
    max_count: int = 8
    time_limit: int = 4
    image_size: int = 64
    initial_count: int | str = "uniform"

    def __post_init__(self) -> None:
        for name in ("target", "max_count", "time_limit", "image_size"):
            value = getattr(self, name)
            if not _is_int(value):
                raise ValueError(f"counting: {name} must be an int, got {value!r}")
            object.__setattr__(self, name, int(value))
        if not MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE:
            raise ValueError(
                f"counting: image_size={self.image_size} is unsupported; "
                f"allowed: an int in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}]"
            )
        if self.max_count < 1:
            raise ValueError(f"counting: max_count={self.max_count} must be >= 1")
        capacity = object_capacity(self.image_size)
        if self.max_count > capacity:
            raise ValueError(
                f"counting: max_count={self.max_count} objects do not fit a "
                f"{self.image_size}x{self.image_size} image without touching; "
                f"at most {capacity} fit at this size"
            )
        if not 0 <= self.target <= self.max_count:
            raise ValueError(
                f"counting: target={self.target} must be in 0..max_count "
                f"(0..{self.max_count})"
            )
        if self.time_limit < 1:
            raise ValueError(f"counting: time_limit={self.time_limit} must be >= 1")
        if isinstance(self.initial_count, str):
            if self.initial_count != "uniform":
                raise ValueError(
                    f"counting: initial_count={self.initial_count!r} is not allowed; "
                    f"use 'uniform' or an int in 0..{self.max_count}"
                )
        elif _is_int(self.initial_count):
            if not 0 <= self.initial_count <= self.max_count:
                raise ValueError(
                    f"counting: initial_count={self.initial_count} must be in "
                    f"0..max_count (0..{self.max_count}) or 'uniform'"
                )
            object.__setattr__(self, "initial_count", int(self.initial_count))
        else:
            raise ValueError(
                f"counting: initial_count must be 'uniform' or an int in "
                f"0..{self.max_count}, got {self.initial_count!r}"
            )


CONFIG_KEYS: tuple[str, ...] = tuple(f.name for f in fields(CountingConfig))


# --------------------------------------------------------------------------
# Geometry: object size, shape masks and the placement lattice
# --------------------------------------------------------------------------


def object_radius(image_size: int) -> int:
    """Return the object radius in pixels: the authors' 3 at 64x64, scaled with
    the image side and rounded half up, never below ``MIN_RADIUS``."""
    scaled = _REFERENCE_RADIUS * image_size / _REFERENCE_SIZE
    return max(MIN_RADIUS, int(math.floor(scaled + 0.5)))


def object_capacity(image_size: int) -> int:
    """Return how many objects fit an image of this side with one black pixel
    between any two (the number of cells of the finest lattice)."""
    box = 2 * object_radius(image_size) + 1
    per_side = image_size // (box + 1)
    return per_side * per_side


def shape_masks(radius: int) -> np.ndarray:
    """Return the 0/1 uint8 masks of every shape in SHAPES, shape
    (len(SHAPES), 2r+1, 2r+1); each mask is one 8-connected blob touching all
    four sides of its box."""
    box = 2 * radius + 1
    dy, dx = np.mgrid[0:box, 0:box]
    off_y, off_x = dy - radius, dx - radius
    masks = {
        # Apex at the top, base on the bottom row; half-width grows 1 px per 2 rows.
        "triangle": np.abs(off_x) <= dy / 2 + 0.5,
        "disk": off_y**2 + off_x**2 <= (radius + 0.5) ** 2,
        "square": np.ones((box, box), dtype=bool),
        # A 2-px-wide stroke from the top-left to the bottom-right corner.
        "bar": (dx - dy >= 0) & (dx - dy <= 1),
    }
    return np.stack([masks[name] for name in SHAPES]).astype(np.uint8)


@dataclass(frozen=True)
class _Layout:
    """Precomputed geometry for one (image_size, max_count) pair."""

    image_size: int
    max_count: int
    radius: int
    box: int
    grid: int  # cells per side
    cell: int  # cell side in pixels
    jitter: int  # number of offsets of an object inside its cell
    shift: int  # number of offsets of the whole lattice
    cell_origins: np.ndarray  # (grid*grid, 2) top-left pixel of every cell
    masks: np.ndarray  # (len(SHAPES), box, box) uint8 0/1
    slot_index: np.ndarray  # arange(max_count)
    offset_scale: np.ndarray  # (2*max_count + 2,) ranges of the jitters, then of the shift

    @property
    def n_cells(self) -> int:
        return self.grid * self.grid

    @property
    def n_uniforms(self) -> int:
        """Uniform draws needed per image: cell order, jitters, lattice shift."""
        return self.n_cells + 2 * self.max_count + 2


@functools.lru_cache(maxsize=32)
def _layout(image_size: int, max_count: int) -> _Layout:
    """Return the geometry for a validated (image_size, max_count)."""
    radius = object_radius(image_size)
    box = 2 * radius + 1
    finest = image_size // (box + 1)  # callers have checked max_count <= finest**2
    # Twice as many cells as objects where that fits, so that even a full
    # frame leaves cells empty and arrangements vary; coarser otherwise.
    needed = math.isqrt(max_count - 1) + 1
    roomy = math.isqrt(2 * max_count - 1) + 1
    grid = max(needed, min(roomy, finest))
    cell = image_size // grid
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    origins = np.stack([rows, cols], axis=1) * cell
    jitter = cell - box  # offsets 0..cell-box-1 keep the cell's last row/column black
    shift = image_size - grid * cell + 1
    return _Layout(
        image_size=image_size,
        max_count=max_count,
        radius=radius,
        box=box,
        grid=grid,
        cell=cell,
        jitter=jitter,
        shift=shift,
        cell_origins=origins.astype(np.intp),
        masks=shape_masks(radius),
        slot_index=np.arange(max_count),
        offset_scale=np.array([jitter] * (2 * max_count) + [shift] * 2, dtype=np.float64),
    )


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------


def _coloured_stamps(layout: _Layout, shapes: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Return the coloured box of each object, uint8 (N, 3, box, box):
    SHAPES[shapes[i]] in colour colours[i] on black."""
    return layout.masks[shapes][:, None, :, :] * colours[:, :, None, None]


def _object_corners(layout: _Layout, uniforms: np.ndarray) -> np.ndarray:
    """Return the top-left corners, intp (N, max_count, 2) as (row, column), of
    every object slot of N frames, from uniforms in [0, 1) of shape
    (N, layout.n_uniforms). Slot j holds the j-th object of a frame showing
    more than j objects; no two slots of a frame share a cell."""
    n, n_cells, m = uniforms.shape[0], layout.n_cells, layout.max_count
    # Distinct cells per frame: a random permutation of the cells.
    cells = np.argsort(uniforms[:, :n_cells], axis=1)[:, :m]
    # One multiply turns the remaining uniforms into jitters and the lattice shift.
    offsets = (uniforms[:, n_cells:] * layout.offset_scale).astype(np.intp)
    corners = layout.cell_origins[cells]
    corners += offsets[:, : 2 * m].reshape(n, m, 2)
    corners += offsets[:, None, 2 * m :]
    return corners


def _stamp_objects(
    layout: _Layout,
    corners: np.ndarray,
    counts: np.ndarray,
    stamps: np.ndarray,
    all_full: bool,
) -> np.ndarray:
    """Return new frames, uint8 (N, 3, S, S), with the stamps (N, 3, box, box)
    pasted at corners (N, slots, 2), slots = max(counts); slot j of frame i is
    drawn iff j < counts[i]. all_full: every count equals slots (no masking
    needed). Inputs are trusted: the callers validate them."""
    n, slots = corners.shape[0], corners.shape[1]
    size, box = layout.image_size, layout.box
    images = np.zeros((n, 3, size, size), dtype=np.uint8)
    if slots == 0:
        return images
    if all_full:
        values = stamps[:, None]  # every slot is drawn: broadcast, no copy
    else:
        # Slots beyond a frame's count stamp black over their own cell, which
        # no other object uses.
        present = (layout.slot_index[:slots] < counts[:, None]).astype(np.uint8)
        values = stamps[:, None] * present[:, :, None, None, None]

    # A writable view of every box-sized window: windows[i, c, y, x] is the
    # box whose top-left corner is (y, x) in channel c of frame i.
    s0, s1, s2, s3 = images.strides
    span = size - box + 1
    windows = np.ndarray(
        (n, 3, span, span, box, box),
        dtype=np.uint8,
        buffer=images,
        strides=(s0, s1, s2, s3, s2, s3),
    )
    windows[np.arange(n)[:, None], :, corners[..., 0], corners[..., 1]] = values
    return images


def _as_index_array(name: str, values: Any, n: int | None, low: int, high: int) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or (n is not None and array.shape[0] != n):
        expected = "(N,)" if n is None else f"({n},)"
        raise ValueError(f"render_batch: {name} must have shape {expected}, got {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"render_batch: {name} must hold integers, got dtype {array.dtype}")
    array = array.astype(np.intp, copy=False)
    if array.size and (array.min() < low or array.max() > high):
        raise ValueError(
            f"render_batch: {name} must lie in {low}..{high}, "
            f"got values in {array.min()}..{array.max()}"
        )
    return array


def render_batch(
    counts: Any,
    shapes: Any,
    colours: Any,
    rng: np.random.Generator,
    image_size: int = 64,
    max_count: int = 8,
) -> np.ndarray:
    """Render N frames at fresh random positions drawn from ``rng``.

    counts: ints (N,) in 0..max_count; shapes: ints (N,) indexing SHAPES;
    colours: uint8-valued (N, 3) RGB; ``max_count`` picks the placement
    lattice and must match the environment's to reproduce its distribution.
    Returns uint8 images of shape (N, 3, image_size, image_size); image i shows
    counts[i] objects of shape SHAPES[shapes[i]] in colour colours[i].
    """
    config = CountingConfig(image_size=image_size, max_count=max_count, target=0)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"render_batch: rng must be a numpy Generator, got {type(rng).__name__}")
    counts = _as_index_array("counts", counts, None, 0, config.max_count)
    n = counts.shape[0]
    shapes = _as_index_array("shapes", shapes, n, 0, len(SHAPES) - 1)
    colours = np.asarray(colours)
    if colours.shape != (n, 3):
        raise ValueError(f"render_batch: colours must have shape ({n}, 3), got {colours.shape}")
    if colours.dtype != np.uint8:
        if not np.issubdtype(colours.dtype, np.integer) or (
            colours.size and (colours.min() < 0 or colours.max() > 255)
        ):
            raise ValueError("render_batch: colours must be uint8 or integers in 0..255")
        colours = colours.astype(np.uint8)
    layout = _layout(config.image_size, config.max_count)
    uniforms = rng.random((n, layout.n_uniforms))
    corners = _object_corners(layout, uniforms)
    slots = int(counts.max()) if n else 0
    all_full = bool(n) and int(counts.min()) == slots
    stamps = _coloured_stamps(layout, shapes, colours)
    return _stamp_objects(layout, corners[:, :slots], counts, stamps, all_full)


# --------------------------------------------------------------------------
# The environment
# --------------------------------------------------------------------------


def _action_sign(action: Any) -> int:
    """Return +1 for an action >= 0 and -1 for one < 0, validating it."""
    if type(action) is np.ndarray and action.shape == (1,) and action.dtype.kind == "f":
        value = float(action[0])  # the common case, kept cheap
    else:
        try:
            array = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"counting: action must be a number or an array of shape (1,), got {action!r}"
            ) from error
        if array.shape not in ((), (1,)):
            raise ValueError(
                f"counting: action must have shape (1,) (or be a scalar), got shape {array.shape}"
            )
        value = float(array.reshape(-1)[0])
    if not math.isfinite(value):
        raise ValueError(f"counting: action must be finite, got {value}")
    return 1 if value >= 0.0 else -1


class CountingEnv(gymnasium.Env):
    """Images of k identical objects; actions add or remove one (see module doc).

    info (at reset and every step): "count" (objects shown), "obs_reward"
    (reward of the returned observation), "reward_pre" (reward of the
    observation before the action; 0.0 at reset), "shape" (index into
    SHAPES), "colour" (uint8 (3,)), "positions" (intp (count, 2) object
    centres as (row, column)) and "elapsed_steps".
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}
    episodic = True  # terminations are real: the trainer must not bootstrap past them
    # Object positions are drawn this many frames at a time (one vectorised
    # call), which keeps a step cheap; the stream stays seed-reproducible.
    corner_block = 128

    def __init__(
        self,
        config: CountingConfig | None = None,
        *,
        render_mode: str | None = None,
        seed: int | None = None,
    ) -> None:
        self.config = config if config is not None else CountingConfig()
        if not isinstance(self.config, CountingConfig):
            raise ValueError(f"counting: config must be a CountingConfig, got {type(config).__name__}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"counting: render_mode={render_mode!r} is not supported; "
                f"allowed: None or one of {self.metadata['render_modes']}"
            )
        self.render_mode = render_mode
        size = self.config.image_size
        self.observation_space = spaces.Box(0, 255, shape=(3, size, size), dtype=np.uint8)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self._layout = _layout(size, self.config.max_count)
        if seed is not None:
            self._np_random, self._np_random_seed = seeding.np_random(seed)

        self._count = 0
        self._counts = np.zeros(1, dtype=np.intp)  # the renderer's (N,) view of it
        self._shape = 0
        self._colour = np.zeros(3, dtype=np.uint8)
        self._stamp = np.zeros((1, 3, self._layout.box, self._layout.box), dtype=np.uint8)
        self._corners = np.zeros((0, self._layout.max_count, 2), dtype=np.intp)
        self._next_corner = 0
        self._frame: np.ndarray | None = None
        self._elapsed = 0
        self._terminate_next = False
        self._finished = True

    @property
    def max_episode_steps(self) -> int:
        """Return the episode length cap (the configured time limit)."""
        return self.config.time_limit

    @property
    def count(self) -> int:
        """Return the number of objects in the current observation."""
        return self._count

    @gymnasium.Env.np_random.setter
    def np_random(self, value: np.random.Generator) -> None:
        gymnasium.Env.np_random.fset(self, value)
        self._discard_corners()

    def rng_state(self) -> dict:
        """Return a copy of the generator's state and of the positions already drawn but not yet shown."""
        rng = self._np_random
        return {"np_random": None if rng is None else copy.deepcopy(rng.bit_generator.state),
                "corners": self._corners.copy(), "next_corner": self._next_corner}

    def set_rng_state(self, state: dict) -> None:
        """Restore a state from :meth:`rng_state`: the following frames are the ones that state would draw."""
        if state["np_random"] is None:
            self._np_random = None
        else:
            rng = np.random.Generator(getattr(np.random, state["np_random"]["bit_generator"])())
            rng.bit_generator.state = state["np_random"]
            self._np_random = rng
        self._corners = state["corners"].copy()
        self._next_corner = int(state["next_corner"])

    def _discard_corners(self) -> None:
        self._next_corner = self._corners.shape[0]

    def _take_corners(self) -> np.ndarray:
        """Return the next frame's slot corners, intp (1, max_count, 2)."""
        if self._next_corner >= self._corners.shape[0]:
            uniforms = self.np_random.random((self.corner_block, self._layout.n_uniforms))
            self._corners = _object_corners(self._layout, uniforms)
            self._next_corner = 0
        i = self._next_corner
        self._next_corner = i + 1
        return self._corners[i : i + 1]

    def _observe(self, reward_pre: float) -> tuple[np.ndarray, dict[str, Any]]:
        count = self._count
        corners = self._take_corners()[:, :count]
        self._counts[0] = count
        images = _stamp_objects(self._layout, corners, self._counts, self._stamp, True)
        self._frame = images[0]
        info = {
            "count": count,
            "obs_reward": 1.0 if count == self.config.target else 0.0,
            "reward_pre": reward_pre,
            "shape": self._shape,
            "colour": self._colour.copy(),
            "positions": corners[0] + self._layout.radius,
            "elapsed_steps": self._elapsed,
        }
        return images[0], info

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode; returns (observation, info). ``options`` may hold
        "count" (int in 0..max_count) to start from that many objects."""
        super().reset(seed=seed)
        if seed is not None:
            self._discard_corners()
        rng = self.np_random
        self._shape = int(rng.integers(len(SHAPES)))
        self._colour = rng.integers(COLOUR_LOW, COLOUR_HIGH, size=3).astype(np.uint8)
        self._stamp = _coloured_stamps(
            self._layout, np.array([self._shape]), self._colour[None, :]
        )
        initial = self.config.initial_count
        if options and "count" in options:
            initial = options["count"]
            if not _is_int(initial) or not 0 <= initial <= self.config.max_count:
                raise ValueError(
                    f"counting: reset option count={initial!r} must be an int in "
                    f"0..{self.config.max_count}"
                )
        elif initial == "uniform":
            initial = rng.integers(self.config.max_count + 1)
        self._count = int(initial)
        self._elapsed = 0
        self._finished = False
        obs, info = self._observe(reward_pre=0.0)
        self._terminate_next = info["obs_reward"] == 1.0
        return obs, info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Add (action >= 0) or remove (action < 0) one object; returns
        (obs, reward of obs, terminated, truncated, info). Terminates on the
        step after the one that reached the target; truncates (only when not
        terminating) after time_limit steps."""
        if self._finished:
            raise RuntimeError("counting: the episode is over (or never began); call reset() first")
        delta = _action_sign(action)
        reward_pre = 1.0 if self._terminate_next else 0.0
        self._count = min(max(self._count + delta, 0), self.config.max_count)
        self._elapsed += 1
        obs, info = self._observe(reward_pre=reward_pre)
        reward = info["obs_reward"]
        terminated = self._terminate_next
        truncated = (not terminated) and self._elapsed >= self.config.time_limit
        self._terminate_next = reward == 1.0
        self._finished = terminated or truncated
        return obs, reward, terminated, truncated, info

    def render(self) -> np.ndarray | None:
        """Return the current frame as an HWC uint8 array (S, S, 3) for
        render_mode "rgb_array"; None otherwise or before the first reset."""
        if self.render_mode != "rgb_array" or self._frame is None:
            return None
        return np.ascontiguousarray(self._frame.transpose(1, 2, 0))


def make_counting_env(
    options: Mapping[str, Any] | None = None,
    seed: int | None = None,
    *,
    render_mode: str | None = None,
) -> CountingEnv:
    """Return a CountingEnv built from a dict-like of CountingConfig keys
    (missing keys take their defaults); ``seed`` seeds its generator."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(
            f"counting: unknown option(s) {unknown}; allowed keys: {list(CONFIG_KEYS)}"
        )
    return CountingEnv(CountingConfig(**options), render_mode=render_mode, seed=seed)
