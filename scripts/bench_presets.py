"""Time one P-JEPA gradient update of each size preset on the counting task.

    python scripts/bench_presets.py                    # cpu and paper presets, one thread
    python scripts/bench_presets.py --sizes cpu --threads 1 2 --repeats 20

Uses a synthetic replay batch shaped like the real one (uint8 frames, actions,
rewards, info), so only the model's cost is measured. Prints a table of median
milliseconds per update and updates per second.
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

from pjepa_ext.plugin import build_agent  # noqa: E402
from tdmpc2.config import resolve  # noqa: E402
from train import make_task_env  # noqa: E402


def build(size: str, variant: str, compiled: bool):
    """Return ``(agent, cfg)`` for the counting task at size preset ``size``."""
    with initialize_config_dir(config_dir=str(ROOT), version_base=None):
        cfg = compose(config_name="config", overrides=["task=counting", f"variant={variant}", f"size={size}",
                                                       "device=cpu", "analysis_freq=0", f"compile={compiled}"])
    with open_dict(cfg):
        cfg.aux = "reward"
    cfg = resolve(cfg, make_task_env(cfg, 0).task_info)
    agent = build_agent(cfg)[0]
    if cfg.compile:
        agent.compile()
    return agent, cfg


def counting_batch(cfg) -> TensorDict:
    """Return a random batch ``(H+1, B)`` with the counting task's keys."""
    H, B = cfg.horizon, cfg.batch_size
    shape = (H + 1, B)
    counts = torch.randint(0, 9, shape).float()
    info = TensorDict({"count": counts, "obs_reward": (counts == 4).float(), "success": torch.zeros(shape)}, batch_size=shape)
    return TensorDict({"obs": torch.randint(0, 256, (*shape, *cfg.obs_shape), dtype=torch.uint8),
                       "action": torch.rand(*shape, 1) * 2 - 1, "reward": (counts == 4).float().unsqueeze(-1),
                       "terminated": torch.zeros(*shape, 1), "info": info}, batch_size=shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["cpu", "paper"])
    parser.add_argument("--variant", default="pjepa")
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=10, help="timed updates (the paper preset uses at most 3)")
    parser.add_argument("--compile", nargs="+", default=["false"], choices=["true", "false"],
                        help="time eager (false) and/or compiled (true) agents")
    args = parser.parse_args()
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for size in args.sizes:
            for compiled in args.compile:
                agent, cfg = build(size, args.variant, compiled == "true")
                batch = counting_batch(cfg)
                repeats = min(args.repeats, 3) if size == "paper" else args.repeats
                agent.update(batch)
                agent.update(batch)
                times = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    agent.update(batch)
                    times.append(time.perf_counter() - t)
                ms = 1000 * statistics.median(times)
                enc = sum(p.numel() for p in agent.model.encoder.parameters())
                rows.append((threads, size, compiled, cfg.counting.image_size, cfg.batch_size, enc, repeats, ms))
    print(f"\nP-JEPA update (variant {args.variant}, aux reward, decoder probe on), median; torch {torch.__version__}")
    print(f"{'threads':>7} {'size':<6} {'compile':<7} {'image':>5} {'batch':>5} {'encoder params':>15} {'n':>3} "
          f"{'ms/update':>10} {'updates/s':>10}")
    for t, size, comp, img, b, enc, n, ms in rows:
        print(f"{t:>7} {size:<6} {comp:<7} {img:>5} {b:>5} {enc:>15,} {n:>3} {ms:>10.1f} {1000 / ms:>10.2f}")


if __name__ == "__main__":
    main()
