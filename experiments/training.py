"""One training run from a composed hydra config: what ``python train.py ...`` does, and the job that
``scripts/compare.py`` launches for every combination."""
from __future__ import annotations

import shlex
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from termcolor import colored

from envs import MissingDependencyError, UnknownTaskError, make_task_env, task_defaults
from envs.gl import RenderingUnavailableError, current_choice
from experiments.launch import recordable
from pjepa_ext.plugin import build_agent
from pjepa_ext.presets import resolve_aux, resolve_size, resolve_variant
from tdmpc2 import resume
from tdmpc2.agent import NonFiniteLossError, NonFiniteWeightsError
from tdmpc2.checkpoint import CheckpointError, load_checkpoint
from tdmpc2.config import ConfigError, choose_device, resolve, set_threads, to_container, validate
from tdmpc2.extras import MissingExtraError, require_for_config
from tdmpc2.logger import Logger
from tdmpc2.replay_files import ReplayFilesError
from tdmpc2.seeding import seed_everything
from tdmpc2.signals import stop_on_signals
from tdmpc2.stacked_replay import make_replay
from tdmpc2.trackers import TrackerError, create_trackers
from tdmpc2.trainer import OnlineTrainer

#: errors that stop a run with a one-line message (train.py exits with code 2 on them)
USER_ERRORS = (ConfigError, UnknownTaskError, MissingDependencyError, MissingExtraError, TrackerError,
               NonFiniteLossError, NonFiniteWeightsError, CheckpointError, ReplayFilesError,
               RenderingUnavailableError, ValueError)


class RunStopped(Exception):
    """A signal stopped the run after it wrote a resumable checkpoint."""


def _drop_unused_hydra_dir(hydra_dir: Path, run_dir: Path) -> None:
    """Remove the dated folder hydra made for this command when the run continues elsewhere and it holds only an empty log."""
    if hydra_dir.resolve() == run_dir.resolve() or not hydra_dir.is_dir():
        return
    files = list(hydra_dir.iterdir())
    if all(p.is_file() and p.suffix == ".log" and p.stat().st_size == 0 for p in files):
        for p in files:
            p.unlink()
        hydra_dir.rmdir()


def apply_presets(cfg: DictConfig) -> DictConfig:
    """Return ``cfg`` with ``variant``/``size``/``aux`` set to concrete presets (``auto`` resolved).

    An ``auto`` group choice is resolved from the task and device, then the
    config is composed again with the concrete choice and the user's own
    command-line overrides, so that those still win over the preset.
    """
    choices = HydraConfig.get().runtime.choices
    variant = resolve_variant(choices["variant"], cfg.task)
    task_defaults(cfg.task)  # an unknown task fails here, naming the known ones
    size = resolve_size(choices["size"], variant, cfg.task, cuda=choose_device(cfg.device).type == "cuda")
    if (variant, size) != (choices["variant"], choices["size"]):
        user = [o for o in HydraConfig.get().overrides.task if not o.startswith(("variant=", "size="))]
        cfg = hydra.compose(config_name="config", overrides=[*user, f"variant={variant}", f"size={size}"])
    with open_dict(cfg):
        cfg.variant, cfg.size = variant, size
        cfg.aux = resolve_aux(cfg.aux, variant)
    return cfg


def describe(cfg: DictConfig, agent, threads: int) -> str:
    """Return the start-of-run summary: task, device, sizes, presets and the gating table."""
    enc = sum(p.numel() for p in agent.model.encoder.parameters())
    total = sum(p.numel() for p in agent.model.parameters()) + sum(p.numel() for p in agent.extra_losses.parameters())
    stack = f", {cfg.frame_stack} frames stacked" if cfg.get("frame_stack", 1) > 1 else ""
    lines = [
        f"task {cfg.task} ({cfg.obs_type} {tuple(cfg.obs_shape)}{stack}, action dim {cfg.action_dim}, "
        f"episode length {cfg.episode_length}, discount {cfg.discount:.3f})",
        f"device {cfg.device}, torch threads {threads}, compile {cfg.compile}",
        f"precision {cfg.precision} ({cfg.precision_reason})",
        f"variant {cfg.variant}, size {cfg.size}, aux {cfg.aux}, encoder {cfg.encoder}",
        f"parameters: {total:,} total, encoder {enc:,}",
        "gradient gating:",
        agent.gating.table(),
    ]
    gl = current_choice()
    if gl is not None:
        lines.insert(2, gl.describe())
    return "\n".join(lines)


def run(cfg: DictConfig) -> Path:
    """Train with the composed config ``cfg`` (a new run, or one resumed as ``cfg.resume`` says); return the run directory.

    Raises :class:`RunStopped` when SIGTERM or SIGINT stopped the run.
    """
    cfg = apply_presets(cfg)
    validate(cfg)
    require_for_config(cfg)  # a missing tracker or video package stops the run before anything is built
    threads = set_threads(cfg.threads)
    # The evaluation env first: with save_video it chooses MuJoCo's GL back-end before dm_control is imported.
    eval_env = make_task_env(cfg, cfg.seed + 10_000, render=cfg.save_video)
    env = make_task_env(cfg, cfg.seed)
    cfg = resolve(cfg, env.task_info)
    hydra_dir = Path(HydraConfig.get().runtime.output_dir)
    if isinstance(cfg.resume, str):
        held = Path(cfg.resume)
        _drop_unused_hydra_dir(hydra_dir, held)
    else:
        held = hydra_dir
        held.mkdir(parents=True, exist_ok=True)  # a run there starts now: held from the start
    # held before locate(), which may clear a dead attempt's files, until the run has ended
    with resume.hold(held):
        run_dir, checkpoint = resume.locate(cfg.resume, hydra_dir)
        return _train(cfg, env, eval_env, threads, run_dir, checkpoint)


def _train(cfg: DictConfig, env, eval_env, threads: int, run_dir: Path, checkpoint: Path | None) -> Path:
    """Train in ``run_dir`` (from ``checkpoint`` if not None); return ``run_dir``. Raises :class:`RunStopped`."""
    payload = None
    if checkpoint is not None:
        payload = load_checkpoint(checkpoint)
        cfg = resume.merge_config(payload["cfg"], cfg)
        if resume.finished(checkpoint, payload, cfg):
            print(colored(f"{checkpoint} ended this run at step {payload['step']:,}: nothing to continue "
                          f"(raise steps or train_minutes to train on)", "yellow"))
            return run_dir
    seed_everything(cfg.seed)

    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml")
    resumed_at = None if payload is None else payload["updates"]
    logger = Logger(run_dir, trackers=create_trackers(cfg, run_dir, config=to_container(cfg), resumed_at=resumed_at))
    try:
        agent, ext = build_agent(cfg)
        if cfg.compile:
            agent.compile()
        logger.info(f"run directory: {run_dir}", "yellow")
        logger.info(describe(cfg, agent, threads))
        buffer = make_replay(cfg, directory=run_dir / "replay")
        trainer = OnlineTrainer(cfg, env, eval_env, agent, buffer, logger, run_dir, hooks=ext.hooks)
        if payload is not None:
            logger.info(resume.restore(trainer, payload, checkpoint), "yellow")
        with stop_on_signals(trainer.request_stop):
            trainer.train()
        buffer.close()
    finally:
        logger.close()
    if trainer.stop_signal is not None:
        # the job's own overrides: the command line of train.py, or the job's under scripts/compare.py
        args = recordable(HydraConfig.get().overrides.task)
        raise RunStopped(f"stopped by {trainer.stop_signal} at step {trainer.step:,}; resume with: "
                         f"{shlex.join(['python', 'train.py', *args, f'resume={run_dir}'])}")
    return run_dir
