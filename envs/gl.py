"""MuJoCo's offscreen OpenGL back-end (``MUJOCO_GL``), chosen once per process before dm_control is imported.

dm_control fixes its rendering back-end when it is first imported, from the
``MUJOCO_GL`` environment variable (unset: GLFW, which needs a display, then
EGL, then OSMesa). A headless machine renders through EGL (with Mesa's
software driver when there is no GPU) or OSMesa. When ``MUJOCO_GL`` is
unset, :func:`choose_mujoco_gl` renders one small frame in a fresh process
with each of them in turn and keeps the first that works; the choice is
printed. When none works, a task that must render stops with an error that
names the missing system library and the Debian package that provides it.
"""
from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
from dataclasses import dataclass

#: headless back-ends, in the order they are tried
BACKENDS = ("egl", "osmesa")

#: back-end -> (shared library it loads, name for ctypes.util.find_library, Debian/Ubuntu packages that provide it)
LIBRARIES = {
    "egl": ("libEGL", "EGL", "libegl1 libegl-mesa0 libgl1-mesa-dri"),
    "osmesa": ("libOSMesa", "OSMesa", "libosmesa6"),
}

# Renders one 8x8 frame of a one-sphere scene with dm_control, as a task would.
_PROBE = """
from dm_control import mujoco
xml = '<mujoco><worldbody><light pos="0 0 1"/><geom type="sphere" size=".1"/></worldbody></mujoco>'
frame = mujoco.Physics.from_xml_string(xml).render(8, 8)
assert frame.shape == (8, 8, 3), frame.shape
"""


class RenderingUnavailableError(RuntimeError):
    """MuJoCo cannot render offscreen on this machine; the message says which library to install."""


@dataclass(frozen=True)
class GLChoice:
    """The back-end this process renders with (``None`` when none works) and why."""

    backend: str | None
    reason: str

    def describe(self) -> str:
        """Return the line printed at start, e.g. ``MuJoCo renders with MUJOCO_GL=egl (...)``."""
        if self.backend is None:
            return f"MuJoCo cannot render offscreen here ({self.reason})"
        return f"MuJoCo renders with MUJOCO_GL={self.backend} ({self.reason})"


_choice: GLChoice | None = None


def probe(backend: str, timeout: float = 120.0) -> str | None:
    """Return None when dm_control renders a frame with ``backend`` in a fresh process, else why it failed.

    The reason names the back-end's shared library when the dynamic loader
    cannot find it.
    """
    library, soname, _ = LIBRARIES[backend]
    env = {**os.environ, "MUJOCO_GL": backend}
    env.pop("PYOPENGL_PLATFORM", None)  # dm_control sets it to match MUJOCO_GL
    try:
        result = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                                timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"rendering a test frame took over {timeout:.0f} s"
    if result.returncode == 0:
        return None
    if ctypes.util.find_library(soname) is None:
        return f"{library} is not installed"
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    return f"{library} is installed but rendering failed: {lines[-1] if lines else f'exit code {result.returncode}'}"


def unavailable_message(failures: dict[str, str]) -> str:
    """Return the error text for a machine where no back-end rendered: each failure, and what to install."""
    tried = "; ".join(f"MUJOCO_GL={b}: {why}" for b, why in failures.items())
    install = " or ".join(f"{LIBRARIES[b][0]} (apt-get install {LIBRARIES[b][2]})" for b in BACKENDS)
    return (f"MuJoCo cannot render offscreen on this machine ({tried}). Pixel observations and videos of "
            f"dm_control tasks need {install}; then run again, or set MUJOCO_GL to the back-end that works")


def choose_mujoco_gl(rendering: bool) -> GLChoice:
    """Return this process's MuJoCo back-end, choosing and printing it on first use.

    ``MUJOCO_GL`` set in the environment is kept as it is. Unset, EGL then
    OSMesa are tried by rendering one frame in a subprocess (about a second),
    and the first that works is written to ``MUJOCO_GL``. Raises
    :class:`RenderingUnavailableError` when ``rendering`` is needed (pixel
    observations, videos) and no back-end works; state tasks go on without one.
    """
    global _choice
    if _choice is None:
        _choice = _choose()
        print(_choice.describe(), flush=True)
    if rendering and _choice.backend is None:
        raise RenderingUnavailableError(_choice.reason)
    return _choice


def _choose() -> GLChoice:
    requested = os.environ.get("MUJOCO_GL")
    if requested:
        return GLChoice(requested, "set in the environment")
    loaded = sys.modules.get("dm_control._render")
    if loaded is not None:  # too late to choose: dm_control already fixed its back-end
        return GLChoice(loaded.BACKEND, "dm_control was imported before a back-end was chosen; if it cannot "
                                        "render, set MUJOCO_GL=egl or osmesa before starting")
    failures: dict[str, str] = {}
    for backend in BACKENDS:
        why = probe(backend)
        if why is None:
            os.environ["MUJOCO_GL"] = backend
            tried = "".join(f"; MUJOCO_GL={b} failed: {w}" for b, w in failures.items())
            return GLChoice(backend, f"MUJOCO_GL was unset; {backend} rendered a test frame{tried}")
        failures[backend] = why
    return GLChoice(None, unavailable_message(failures))


def current_choice() -> GLChoice | None:
    """Return the back-end chosen in this process so far, or None when no dm_control task was made yet."""
    return _choice


def forget_choice() -> None:
    """Forget the choice made in this process (tests use it to choose again); returns None."""
    global _choice
    _choice = None
