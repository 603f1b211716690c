"""Benchmark the TD-MPC2 core: gradient updates per second and MPPI ``act`` latency.

    python scripts/bench.py                       # model sizes 1 and 5, 1 and 2 threads
    python scripts/bench.py --sizes 1 --threads 1 --pixels

Settings follow TD-MPC2's defaults: batch 256, horizon 3, MPPI with 6
iterations x 512 samples; a state task with a 1-D action (dm_control
cartpole-swingup when installed, else gymnasium pendulum). ``--pixels`` adds a
64x64 RGB update with the TD-MPC2 conv encoder (counting task, stock variant).
Prints a table of medians over ``--repeats`` timed calls.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from tensordict import TensorDict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from envs import known_tasks  # noqa: E402
from pjepa_ext.plugin import build_agent  # noqa: E402
from tdmpc2.config import resolve  # noqa: E402
from train import make_task_env  # noqa: E402


def build(task: str, overrides: list[str]):
    """Return ``(agent, cfg)`` for ``task`` with the stock variant and ``overrides``."""
    with initialize_config_dir(config_dir=str(ROOT), version_base=None):
        cfg = compose(config_name="config", overrides=[f"task={task}", "variant=stock", "size=none", "device=cpu", *overrides])
    with open_dict(cfg):
        cfg.aux = "none"
    cfg = resolve(cfg, make_task_env(cfg, 0).task_info)
    agent, _ = build_agent(cfg)
    return agent, cfg


def fake_batch(cfg) -> TensorDict:
    """Return a random replay batch ``(H+1, B)`` shaped like the real one."""
    H, B = cfg.horizon, cfg.batch_size
    obs_shape = tuple(cfg.obs_shape)
    obs = (torch.randint(0, 256, (H + 1, B, *obs_shape), dtype=torch.uint8) if cfg.obs_type == "rgb"
           else torch.randn(H + 1, B, *obs_shape))
    return TensorDict({"obs": obs, "action": torch.rand(H + 1, B, cfg.action_dim) * 2 - 1,
                       "reward": torch.randn(H + 1, B, 1), "terminated": torch.zeros(H + 1, B, 1)}, batch_size=[H + 1, B])


def median_ms(fn, repeats: int, warmup: int = 2) -> float:
    """Return the median wall-clock of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--pixels", action="store_true", help="also time a 64x64 RGB update (model size 5)")
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile-d update")
    args = parser.parse_args()
    task = "cartpole-swingup" if "cartpole-swingup" in known_tasks() else "pendulum"
    try:
        import dm_control  # noqa: F401
    except ImportError:
        task = "pendulum"
    cases = [(task, s, []) for s in args.sizes]
    if args.pixels:
        cases.append(("counting", 5, ["obs=rgb", "counting.image_size=64"]))
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for task_name, size, extra in cases:
            agent, cfg = build(task_name, [f"model_size={size}", *extra])
            batch = fake_batch(cfg)
            update = median_ms(lambda: agent.update(batch), args.repeats)
            obs = batch["obs"][0, 0]
            agent.act(obs, t0=True)
            act = median_ms(lambda: agent.act(obs), args.repeats)
            compiled = float("nan")
            if args.compile:
                agent.compile()
                try:
                    compiled = median_ms(lambda: agent.update(batch), args.repeats, warmup=3)
                except Exception as err:  # report, do not hide: compile failures are a result here
                    print(f"torch.compile failed for {task_name} size {size}: {type(err).__name__}: {str(err)[:200]}")
            rows.append((threads, task_name, cfg.obs_type, size, update, 1000 / update, act, compiled))
    print(f"\nbatch 256, horizon 3, MPPI 6 x 512 samples; torch {torch.__version__}; median of {args.repeats}")
    print(f"{'threads':>7} {'task':<17} {'obs':<5} {'size':>4} {'update ms':>10} {'updates/s':>10} {'act ms':>8} {'compiled update ms':>19}")
    for t, name, obs_type, size, upd, ups, act, comp in rows:
        print(f"{t:>7} {name:<17} {obs_type:<5} {size:>4} {upd:>10.1f} {ups:>10.2f} {act:>8.1f} {comp:>19.1f}")


if __name__ == "__main__":
    main()
