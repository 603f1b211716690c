"""Train a TD-MPC2 / P-JEPA agent online.

    python train.py task=pendulum                 # stock TD-MPC2
    python train.py task=counting aux=reward      # P-JEPA, the paper's main experiment
    python train.py task=counting variant=dyn_only

Every run writes into its own directory under runs/: the resolved config,
train.csv, eval.csv (and analysis.csv on the counting task), checkpoints,
the replay (replay/) and, with save_video=true, the evaluation videos (videos/);
loggers=[wandb,tensorboard] sends the same rows to the trackers. A run stopped
by SIGTERM or SIGINT writes a resumable checkpoint and exits with code 75;
``resume=RUN_DIR`` (or ``resume=true`` with a fixed ``hydra.run.dir``)
continues it, as it does a run killed outright.
"""
from __future__ import annotations

import errno
import shlex
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from termcolor import colored

from envs import MissingDependencyError, UnknownTaskError, make_task_env, task_defaults
from pjepa_ext.plugin import build_agent
from pjepa_ext.presets import resolve_aux, resolve_size, resolve_variant
from tdmpc2 import resume
from tdmpc2.agent import NonFiniteLossError, NonFiniteWeightsError
from tdmpc2.buffer import EpisodeBuffer
from tdmpc2.checkpoint import CheckpointError, load_checkpoint
from tdmpc2.config import ConfigError, choose_device, resolve, set_threads, to_container, validate
from tdmpc2.extras import MissingExtraError, require_for_config
from tdmpc2.logger import Logger
from tdmpc2.replay_files import ReplayFilesError
from tdmpc2.seeding import seed_everything
from tdmpc2.signals import stop_on_signals
from tdmpc2.trackers import TrackerError, create_trackers
from tdmpc2.trainer import OnlineTrainer


def apply_presets(cfg: DictConfig) -> DictConfig:
    """Return ``cfg`` with ``variant``/``size``/``aux`` set to concrete presets (``auto`` resolved).

    An ``auto`` group choice is resolved from the task and device, then the
    config is composed again with the concrete choice and the user's own
    command-line overrides, so that those still win over the preset.
    """
    choices = HydraConfig.get().runtime.choices
    obs_type, _ = task_defaults(cfg.task)
    variant = resolve_variant(choices["variant"], cfg.task)
    size = resolve_size(choices["size"], variant, pixel_task=(cfg.obs or obs_type) == "rgb",
                        cuda=choose_device(cfg.device).type == "cuda")
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
    lines = [
        f"task {cfg.task} ({cfg.obs_type} {tuple(cfg.obs_shape)}, action dim {cfg.action_dim}, "
        f"episode length {cfg.episode_length}, discount {cfg.discount:.3f})",
        f"device {cfg.device}, torch threads {threads}, compile {cfg.compile}",
        f"precision {cfg.precision} ({cfg.precision_reason})",
        f"variant {cfg.variant}, size {cfg.size}, aux {cfg.aux}, encoder {cfg.encoder}",
        f"parameters: {total:,} total, encoder {enc:,}",
        "gradient gating:",
        agent.gating.table(),
    ]
    return "\n".join(lines)


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
        _drop_unused_hydra_dir(hydra_dir, Path(cfg.resume))
    run_dir, checkpoint = resume.locate(cfg.resume, hydra_dir)
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
        buffer = EpisodeBuffer(cfg.buffer_capacity, cfg.batch_size, cfg.horizon, cfg.device, seed=cfg.seed,
                               directory=run_dir / "replay")
        trainer = OnlineTrainer(cfg, env, eval_env, agent, buffer, logger, run_dir, hooks=ext.hooks)
        if payload is not None:
            logger.info(resume.restore(trainer, payload, checkpoint), "yellow")
        with stop_on_signals(trainer.request_stop):
            trainer.train()
        buffer.close()
    finally:
        logger.close()
    if trainer.stop_signal is not None:
        args = [a for a in sys.argv[1:] if not a.startswith("resume=")]
        raise RunStopped(f"stopped by {trainer.stop_signal} at step {trainer.step:,}; resume with: "
                         f"{shlex.join(['python', 'train.py', *args, f'resume={run_dir}'])}")
    return run_dir


@hydra.main(config_path=".", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except RunStopped as stopped:
        print(colored(str(stopped), "yellow"), file=sys.stderr)
        sys.exit(resume.EXIT_STOPPED)
    except (ConfigError, UnknownTaskError, MissingDependencyError, MissingExtraError, TrackerError, NonFiniteLossError,
            NonFiniteWeightsError, CheckpointError, ReplayFilesError, ValueError) as err:
        print(colored(f"error: {err}", "red"), file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(colored(f"error: {err}. Checkpoints are written atomically, so the newest one is whole: "
                      f"free space, then continue the run with resume=RUN_DIR", "red"), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
