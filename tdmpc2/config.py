"""Config resolution: fill derived values by code and reject bad values with clear errors."""
from __future__ import annotations

import os

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from tdmpc2 import precision, trackers
from tdmpc2.math import discount_from_episode_length

#: TD-MPC2's model sizes (millions of parameters) -> architecture.
MODEL_SIZES = {
    1: dict(enc_dim=256, mlp_dim=384, latent_dim=128, num_enc_layers=2, num_q=2),
    5: dict(enc_dim=256, mlp_dim=512, latent_dim=512, num_enc_layers=2, num_q=5),
    19: dict(enc_dim=1024, mlp_dim=1024, latent_dim=768, num_enc_layers=3, num_q=5),
    48: dict(enc_dim=1792, mlp_dim=1792, latent_dim=768, num_enc_layers=4, num_q=5),
    317: dict(enc_dim=4096, mlp_dim=4096, latent_dim=1376, num_enc_layers=5, num_q=8),
}

_POSITIVE_INTS = ("steps", "batch_size", "horizon", "iterations", "num_samples", "num_elites",
                  "buffer_size", "random_action_repeat", "simnorm_dim", "dynamics_layers", "log_freq")
_NON_NEGATIVE = ("eval_episodes", "eval_freq", "save_freq", "num_pi_trajs", "updates_per_step", "shift_pad", "analysis_freq",
                 "keep_checkpoints")
_POSITIVE_FLOATS = ("lr", "enc_lr_scale", "grad_clip_norm", "tau", "rho", "max_std", "min_std", "temperature")


class ConfigError(ValueError):
    """A config value is invalid; the message names the key and the allowed values."""


def choose_device(requested: str) -> torch.device:
    """Return the torch device for ``requested`` (``auto``: CUDA if available, else CPU)."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as err:
        raise ConfigError(f"device='{requested}' is not a device; allowed: auto, cpu, cuda, cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device='{requested}' but CUDA is not available here; use device=cpu or device=auto")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device='{requested}' is not supported; allowed: auto, cpu, cuda, cuda:N")
    return device


def set_threads(requested) -> int:
    """Set and return torch's CPU thread count (``auto``: every core of this machine)."""
    try:
        n = (os.cpu_count() or 1) if requested in (None, "auto") else int(requested)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ConfigError(f"threads must be a positive integer or auto, got {requested}")
    torch.set_num_threads(n)
    return n


def _compile_default(device: torch.device) -> bool:
    # Measured on CPU (scripts/bench.py --compile, one thread): TDMPC2.compile() makes updates
    # 1.2-1.5x and MPPI 1.4-1.6x faster than eager, after 10-80 s of one-off compilation.
    # CUDA: on, as in TD-MPC2 (not measured here: no GPU was available).
    return device.type in ("cpu", "cuda")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for any value outside its allowed range."""
    for key in _POSITIVE_INTS:
        if not _is_int(cfg[key]) or cfg[key] < 1:
            raise ConfigError(f"{key} must be a positive integer, got {cfg[key]!r}")
    for key in _NON_NEGATIVE:
        if not _is_int(cfg[key]) or cfg[key] < 0:
            raise ConfigError(f"{key} must be a non-negative integer, got {cfg[key]!r}")
    for key in _POSITIVE_FLOATS:
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], (int, float)) or not cfg[key] > 0:
            raise ConfigError(f"{key} must be a positive number, got {cfg[key]!r}")
    if cfg.model_size not in MODEL_SIZES:
        raise ConfigError(f"model_size={cfg.model_size!r} is unknown; allowed values: {', '.join(map(str, MODEL_SIZES))}")
    if cfg.compile not in ("auto", True, False):
        raise ConfigError(f"compile={cfg.compile!r}; allowed values: auto, true, false")
    if cfg.precision not in precision.CHOICES:
        raise ConfigError(f"precision={cfg.precision!r}; allowed values: {', '.join(precision.CHOICES)}")
    if cfg.obs not in (None, "state", "rgb"):
        raise ConfigError(f"obs={cfg.obs!r}; allowed values: state, rgb (or null for the task's default)")
    if cfg.encoder not in ("default", "resnet"):
        raise ConfigError(f"encoder={cfg.encoder!r}; allowed values: default, resnet")
    if cfg.num_elites > cfg.num_samples:
        raise ConfigError(f"num_elites ({cfg.num_elites}) must not exceed num_samples ({cfg.num_samples})")
    if cfg.num_pi_trajs >= cfg.num_samples:
        raise ConfigError(f"num_pi_trajs ({cfg.num_pi_trajs}) must be below num_samples ({cfg.num_samples})")
    if cfg.min_std > cfg.max_std:
        raise ConfigError(f"min_std ({cfg.min_std}) must not exceed max_std ({cfg.max_std})")
    if cfg.train_minutes is not None and not cfg.train_minutes > 0:
        raise ConfigError(f"train_minutes must be positive or null, got {cfg.train_minutes!r}")
    if not (cfg.resume is None or isinstance(cfg.resume, bool) or (isinstance(cfg.resume, str) and cfg.resume.strip())):
        raise ConfigError(f"resume={cfg.resume!r}; allowed values: null or false (a new run), true (continue the run "
                          f"in hydra.run.dir if it has a checkpoint), or the path of a run directory")
    _validate_outputs(cfg)


def _validate_outputs(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for a bad tracker list, W&B setting or video request."""
    problem = trackers.names_problem(cfg.loggers)
    if problem:
        raise ConfigError(problem)
    if cfg.wandb.mode not in trackers.WANDB_MODES:
        raise ConfigError(f"wandb.mode={cfg.wandb.mode!r}; allowed values: online, offline, null (WANDB_MODE, else online)")
    if not isinstance(cfg.wandb.project, str) or not cfg.wandb.project:
        raise ConfigError(f"wandb.project must be a non-empty name, got {cfg.wandb.project!r}")
    if cfg.save_video not in (True, False):
        raise ConfigError(f"save_video={cfg.save_video!r}; allowed values: true, false")
    if cfg.save_video and cfg.eval_episodes == 0:
        raise ConfigError("save_video=true records evaluation episodes, but eval_episodes=0 runs none; "
                          "set eval_episodes >= 1 or save_video=false")


def resolve(cfg: DictConfig, task_info) -> DictConfig:
    """Return a copy of ``cfg`` with every derived value filled in from ``task_info`` and the model size.

    Derived: obs type and shape, frames stacked per observation, action dim, episode length, episodic flag,
    sizes from ``model_size``, discount, seed steps, pretrain updates, buffer
    capacity, device, compile and precision choice (``precision_reason`` says
    why ``auto`` chose what it did), the W&B group and run name.
    """
    cfg = cfg.copy()
    validate(cfg)
    with open_dict(cfg):
        cfg.obs = task_info.obs_type
        cfg.obs_type = task_info.obs_type
        cfg.obs_shape = list(task_info.obs_shape)
        cfg.action_dim = task_info.action_dim
        cfg.episode_length = task_info.episode_length
        cfg.episodic = bool(task_info.episodic)
        cfg.info_keys = list(task_info.info_keys)
        cfg.frame_stack = int(getattr(task_info, "frame_stack", 1))
        for key, value in MODEL_SIZES[cfg.model_size].items():
            if cfg[key] is None:
                cfg[key] = value
        if cfg.simnorm and cfg.latent_dim % cfg.simnorm_dim:
            raise ConfigError(f"latent_dim ({cfg.latent_dim}) must be a multiple of simnorm_dim ({cfg.simnorm_dim})")
        if cfg.discount is None:
            cfg.discount = discount_from_episode_length(cfg.episode_length, cfg.discount_min, cfg.discount_max)
        if cfg.seed_steps is None:
            cfg.seed_steps = max(1000, 5 * cfg.episode_length)
        if cfg.seed_steps < cfg.episode_length:
            raise ConfigError(f"seed_steps ({cfg.seed_steps}) must cover at least one episode "
                              f"({cfg.episode_length} steps) so that pretraining has data")
        if cfg.pretrain_updates is None:
            cfg.pretrain_updates = cfg.seed_steps
        cfg.buffer_capacity = min(cfg.buffer_size, cfg.steps)
        device = choose_device(cfg.device)
        cfg.device = str(device)
        cfg.compile = _compile_default(device) if cfg.compile == "auto" else bool(cfg.compile)
        if cfg.precision == "auto" or "precision_reason" not in cfg:
            cfg.precision, cfg.precision_reason = precision.choose(cfg.precision, device)
        cfg.wandb.group, cfg.wandb.name = trackers.wandb_names(cfg)
    return cfg


def to_container(cfg: DictConfig) -> dict:
    """Return the resolved config as plain Python containers (for checkpoints and YAML dumps)."""
    return OmegaConf.to_container(cfg, resolve=True)


def flatten(tree, prefix: str = "") -> dict:
    """Return the nested dicts of ``tree`` (e.g. :func:`to_container` output) as one ``{"a.b.c": value}`` dict."""
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}
