"""Optional extras of the package (pyproject.toml): which modules each installs, and the check made at start.

A run that asks for a tracker or a video checks here, before anything is
built, that the extra's modules can be imported; a missing one stops the run
with the install command instead of failing hours later.
"""
from __future__ import annotations

import importlib.util

#: extra of pyproject.toml -> (importable module, distribution) pairs it installs
EXTRAS = {
    "wandb": (("wandb", "wandb"),),
    "tensorboard": (("tensorboard", "tensorboard"),),
    "video": (("imageio", "imageio"), ("imageio_ffmpeg", "imageio-ffmpeg")),
    "compare": (("rliable", "rliable"), ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
                ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher")),
}


class MissingExtraError(ImportError):
    """An optional package the config asks for is not installed; the message gives the install command."""


def install_command(extra: str) -> str:
    """Return the command that installs ``extra`` into an editable checkout."""
    return f'pip install -e ".[{extra}]"'


def require(extra: str, purpose: str) -> None:
    """Return None when every module of ``extra`` is importable; else raise :class:`MissingExtraError`.

    Only looks the modules up (``importlib.util.find_spec``); importing them is
    left to their users, so that a broken installation raises its own error.
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; allowed: {', '.join(EXTRAS)}")
    missing = [dist for module, dist in EXTRAS[extra] if importlib.util.find_spec(module) is None]
    if missing:
        names = ", ".join(repr(d) for d in missing)
        raise MissingExtraError(f"{purpose} needs the optional package{'s' if len(missing) > 1 else ''} {names}, "
                                f"which {'are' if len(missing) > 1 else 'is'} not installed. "
                                f"Install it with: {install_command(extra)}")


def require_for_config(cfg) -> None:
    """Return None when the extras that ``cfg`` asks for (``loggers``, ``save_video``) are installed; else raise.

    Logger names are assumed valid (``tdmpc2.config.validate`` checks them); each
    tracker's extra has the tracker's name.
    """
    for name in cfg.loggers:
        require(name, f"loggers=[{name}]")
    if cfg.save_video:
        require("video", "save_video=true")
