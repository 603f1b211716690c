"""Time one P-JEPA gradient update of each size preset on the counting task, per precision.

    python scripts/bench_presets.py                                  # cpu and paper presets, one thread, fp32
    python scripts/bench_presets.py --sizes cpu --threads 1 2 --repeats 20
    python scripts/bench_presets.py --compile false true --precision fp32 bf16
    python scripts/bench_presets.py --sizes cpu64 --threads 2 --precision bf16 --compile true \
        --overrides "" "resnet.stem_pool=avg" "resnet.stem_stride=4 resnet.stem_pool=false"

Uses a synthetic replay batch shaped like the real one (uint8 frames, actions,
rewards, info), so only the model's cost is measured. Prints the CPU, the
measured matrix-product rate of each precision, and a table of median
milliseconds per update, updates per second, and the update's floor: its
matrix-product and convolution FLOPs divided by that rate.
"""
from __future__ import annotations

import argparse
import itertools
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

from envs import make_task_env  # noqa: E402
from pjepa_ext.plugin import build_agent  # noqa: E402
from tdmpc2 import profiling  # noqa: E402
from tdmpc2.precision import DTYPES  # noqa: E402
from tdmpc2.config import resolve  # noqa: E402


def build(size: str, variant: str, compiled: bool, precision: str, overrides: list[str] = ()):
    """Return ``(agent, cfg)`` for the counting task at size preset ``size`` with hydra ``overrides``, seed 0."""
    with initialize_config_dir(config_dir=str(ROOT), version_base=None):
        cfg = compose(config_name="config", overrides=["task=counting", f"variant={variant}", f"size={size}",
                                                       "device=cpu", "analysis_freq=0", f"compile={compiled}",
                                                       f"precision={precision}", *overrides])
    with open_dict(cfg):
        cfg.aux = "reward"
    cfg = resolve(cfg, make_task_env(cfg, 0).task_info)
    torch.manual_seed(0)
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
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=list(DTYPES),
                        help="precisions to time (default: fp32)")
    parser.add_argument("--overrides", nargs="+", default=[""],
                        help="config variants to time, each a quoted, space-separated list of hydra overrides "
                             "applied on top of the size preset (default: the preset as it is)")
    args = parser.parse_args()
    rows, header = [], [profiling.machine_summary()]
    for threads in args.threads:
        torch.set_num_threads(threads)
        rates = profiling.matmul_rates({name: DTYPES[name] for name in args.precision})
        header.append(f"{threads} thread(s): 1024x512x512 matmul " +
                      ", ".join(f"{name} {rate:.0f} GFLOP/s" for name, rate in rates.items()))
        for size, extra in itertools.product(args.sizes, args.overrides):
            flops = None
            for compiled in args.compile:
                for name in args.precision:
                    agent, cfg = build(size, args.variant, compiled == "true", name, extra.split())
                    batch = counting_batch(cfg)
                    if flops is None:
                        flops = profiling.count_flops(lambda: agent.update(batch))
                    repeats = min(args.repeats, 3) if size == "paper" else args.repeats
                    agent.update(batch)
                    agent.update(batch)
                    times = []
                    for _ in range(repeats):
                        t = time.perf_counter()
                        agent.update(batch)
                        times.append(time.perf_counter() - t)
                    ms = 1000 * statistics.median(times)
                    floor = 1000 * flops / (rates[name] * 1e9)
                    enc = sum(p.numel() for p in agent.model.encoder.parameters())
                    rows.append((threads, size, compiled, name, cfg.counting.image_size, cfg.batch_size, enc, repeats, ms,
                                 floor, flops, extra))
                    print(f"done: {threads} thread(s), {size} {extra}, compile {compiled}, {name}", file=sys.stderr,
                          flush=True)
    print(f"\nP-JEPA update (variant {args.variant}, aux reward, decoder probe on), median")
    print("\n".join(header))
    print(f"{'threads':>7} {'size':<6} {'compile':<7} {'prec':<5} {'image':>5} {'batch':>5} {'encoder params':>15} {'n':>3} "
          f"{'ms/update':>10} {'updates/s':>10} {'floor ms':>9} {'GFLOP':>7}  overrides")
    for t, size, comp, name, img, b, enc, n, ms, floor, flops, extra in rows:
        print(f"{t:>7} {size:<6} {comp:<7} {name:<5} {img:>5} {b:>5} {enc:>15,} {n:>3} {ms:>10.1f} {1000 / ms:>10.2f} "
              f"{floor:>9.1f} {flops / 1e9:>7.1f}  {extra or '-'}")


if __name__ == "__main__":
    main()
