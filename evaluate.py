"""Evaluate a checkpoint: episode reward over N episodes with the planner (or the policy prior).

    python evaluate.py checkpoint=runs/pendulum/.../final.pt
    python evaluate.py checkpoint=PATH task=pendulum eval_episodes=20 mpc=false
    python evaluate.py checkpoint=PATH video=runs/pendulum/episode.mp4

The model is rebuilt from the config stored in the checkpoint; ``task`` (if
given) must match it. ``eval_episodes``, ``mpc``, ``seed``, ``device``,
``threads`` and ``precision`` (default ``auto``, chosen for this machine) may
be overridden. ``video=PATH.mp4`` records the first episode (the ``video``
extra), as training's ``save_video`` does.
"""
from __future__ import annotations

import sys

import numpy as np
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError
from termcolor import colored

from envs import MissingDependencyError, UnknownTaskError, make_task_env
from envs.gl import RenderingUnavailableError
from pjepa_ext.plugin import build_agent
from tdmpc2 import precision, video
from tdmpc2.checkpoint import CheckpointError, load_checkpoint
from tdmpc2.config import ConfigError, choose_device, set_threads
from tdmpc2.seeding import seed_everything
from tdmpc2.extras import MissingExtraError
from tdmpc2.trainer import run_episodes

OVERRIDABLE = ("task", "eval_episodes", "mpc", "seed", "device", "threads", "precision", "checkpoint", "video")


def parse_args(argv: list[str]):
    """Return the ``key=value`` arguments as an OmegaConf node; reject unknown keys."""
    bad = [a for a in argv if "=" not in a]
    if bad:
        raise ConfigError(f"arguments must be key=value, got {bad}; allowed keys: {', '.join(OVERRIDABLE)}")
    args = OmegaConf.from_dotlist(argv)
    unknown = sorted(set(args) - set(OVERRIDABLE))
    if unknown:
        raise ConfigError(f"unknown argument(s) {unknown}; allowed keys: {', '.join(OVERRIDABLE)}")
    if "checkpoint" not in args:
        raise ConfigError("checkpoint=PATH is required")
    if "video" in args and not str(args.video).endswith(".mp4"):
        raise ConfigError(f"video={args.video}: the video is written as H.264 mp4; give a path ending in .mp4")
    return args


def evaluate(argv: list[str]) -> dict:
    """Load the checkpoint named in ``argv`` and return ``{episode_reward, success, episodes}``, printing each episode.

    With ``video=PATH`` the first episode is written there and the result also holds ``video`` (the path).
    """
    args = parse_args(argv)
    if "video" in args:
        video.require_packages()  # before anything runs: a missing package costs no evaluation
    payload = load_checkpoint(args.checkpoint)
    cfg = OmegaConf.create(payload["cfg"])
    if "task" in args and args.task != cfg.task:
        raise ConfigError(f"checkpoint was trained on task '{cfg.task}', not '{args.task}'")
    with open_dict(cfg):
        for key in ("eval_episodes", "mpc", "seed", "threads"):
            if key in args:
                cfg[key] = args[key]
        device = choose_device(args.get("device", "auto"))
        cfg.device = str(device)
        cfg.precision, cfg.precision_reason = precision.choose(args.get("precision", "auto"), device)
        cfg.analysis_freq = 0
    threads = set_threads(cfg.threads)
    seed_everything(cfg.seed)
    env = make_task_env(cfg, cfg.seed + 20_000, render="video" in args)
    try:
        agent, _ = build_agent(cfg)
        agent.load_state_dict(payload["agent"])
    except (KeyError, RuntimeError, ConfigKeyError) as err:
        raise CheckpointError(f"checkpoint {args.checkpoint} does not match the model its config describes: {err}") from err
    print(colored(f"{args.checkpoint}: task {cfg.task}, {payload.get('updates', '?')} updates, "
                  f"device {cfg.device}, threads {threads}, precision {cfg.precision}, mpc {cfg.mpc}", "cyan"))
    frames = [] if "video" in args else None
    rewards, successes = run_episodes(
        env, agent, cfg.eval_episodes, lambda i, total, t: print(f"episode {i + 1:>3}: reward {total:10.3f}  steps {t}"),
        frames=frames)
    result = {"episode_reward": float(np.mean(rewards)), "success": float(np.mean(successes)), "episodes": len(rewards)}
    if frames:
        result["video"] = str(video.write_mp4(args.video, frames, video.playback_fps(env)))
        print(f"first episode: {len(frames)} frames written to {result['video']}")
    print(colored(f"mean episode reward {result['episode_reward']:.3f} over {len(rewards)} episodes "
                  f"(std {np.std(rewards):.3f}), success {result['success']:.2f}", "green"))
    return result


def main() -> None:
    try:
        evaluate(sys.argv[1:])
    except (CheckpointError, ConfigError, UnknownTaskError, MissingDependencyError, MissingExtraError,
            RenderingUnavailableError) as err:
        print(colored(f"error: {err}", "red"), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
