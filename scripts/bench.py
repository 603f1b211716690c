"""Benchmark the TD-MPC2 core: gradient updates per second and MPPI ``act`` latency.

    python scripts/bench.py                                   # model sizes 1 and 5, 1 and 2 threads
    python scripts/bench.py --threads 1 2 --pixels --compile  # the full table

Settings follow TD-MPC2's defaults: batch 256, horizon 3, MPPI with 6
iterations x 512 samples; a state task with a 1-D action (dm_control
cartpole-swingup when installed, else gymnasium pendulum). ``--pixels`` adds a
64x64 RGB case with the TD-MPC2 conv encoder (counting task, stock variant,
model size 5). ``--compile`` adds the same agent after ``agent.compile()``,
timed interleaved with the eager one so both see the same machine load.
Prints a table of medians over ``--repeats`` timed calls, the torch thread
count of each row, and the load average of the machine.
"""
from __future__ import annotations

import argparse
import os
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
from tdmpc2.config import _compile_default, resolve  # noqa: E402
from train import make_task_env  # noqa: E402


def build(task: str, overrides: list[str]):
    """Return ``(agent, cfg)`` for ``task`` with the stock variant and ``overrides``, eager (not compiled), seed 0."""
    with initialize_config_dir(config_dir=str(ROOT), version_base=None):
        cfg = compose(config_name="config", overrides=[f"task={task}", "variant=stock", "size=none", "device=cpu", "compile=false",
                                                           *overrides])
    with open_dict(cfg):
        cfg.aux = "none"
    cfg = resolve(cfg, make_task_env(cfg, 0).task_info)
    torch.manual_seed(0)
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


def interleaved_median_ms(fns: dict, repeats: int, warmup: int = 2) -> dict:
    """Return ``{name: median wall-clock ms}`` of each ``fns[name]()``, the calls alternating between the names."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t)
    return {name: 1000 * statistics.median(ts) for name, ts in times.items()}


def first_call_s(fn) -> float:
    """Return the seconds one call of ``fn`` takes (the compilation, for a compiled agent)."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def time_case(task: str, size: int, extra: list[str], repeats: int, with_compile: bool) -> dict:
    """Return the medians (ms) of update and act for the eager agent, and the compiled one if asked."""
    eager, cfg = build(task, [f"model_size={size}", *extra])
    batch = fake_batch(cfg)
    obs = batch["obs"][0, 0]
    agents = {"eager": eager}
    result: dict = {"cfg": cfg, "compile_s": float("nan")}
    if with_compile:
        compiled, _ = build(task, [f"model_size={size}", *extra])
        compiled.compile()
        try:
            result["compile_s"] = first_call_s(lambda: compiled.update(batch)) + first_call_s(
                lambda: compiled.act(obs, t0=True))
            agents["compiled"] = compiled
        except Exception as err:  # report, do not hide: a compile failure is a result here
            print(f"compiled agent failed for {task} size {size}: {type(err).__name__}: {str(err)[:300]}")
    for agent in agents.values():
        agent.act(obs, t0=True)
    updates = interleaved_median_ms({k: (lambda a=a: a.update(batch)) for k, a in agents.items()}, repeats)
    acts = interleaved_median_ms({k: (lambda a=a: a.act(obs)) for k, a in agents.items()}, repeats)
    for k in ("eager", "compiled"):
        result[f"{k}_update"] = updates.get(k, float("nan"))
        result[f"{k}_act"] = acts.get(k, float("nan"))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--pixels", action="store_true", help="also time a 64x64 RGB agent (model size 5)")
    parser.add_argument("--compile", action="store_true", help="also time the agent after agent.compile()")
    args = parser.parse_args()
    task = "cartpole-swingup" if "cartpole-swingup" in known_tasks() else "pendulum"
    try:
        import dm_control  # noqa: F401
    except ImportError:
        task = "pendulum"
    cases = [(task, s, []) for s in args.sizes]
    if args.pixels:
        cases.append(("counting", 5, ["obs=rgb", "counting.image_size=64"]))
    load_before = os.getloadavg()
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for task_name, size, extra in cases:
            r = time_case(task_name, size, extra, args.repeats, args.compile)
            rows.append((threads, task_name, r["cfg"].obs_type, size, r))
            print(f"done: {threads} thread(s), {task_name} size {size}", file=sys.stderr, flush=True)
    load_after = os.getloadavg()

    print(f"\nbatch 256, horizon 3, MPPI 6 x 512 samples; torch {torch.__version__}; median of {args.repeats}, "
          f"eager and compiled calls interleaved")
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f} on {os.cpu_count()} CPUs; "
          f"compile default on cpu: {_compile_default(torch.device('cpu'))}")
    print(f"{'threads':>7} {'task':<17} {'obs':<5} {'size':>4} | {'update ms':>9} {'upd/s':>6} {'act ms':>7} | "
          f"{'compiled: update ms':>19} {'upd/s':>6} {'act ms':>7} {'compile s':>9}")
    for threads, name, obs_type, size, r in rows:
        print(f"{threads:>7} {name:<17} {obs_type:<5} {size:>4} | {r['eager_update']:>9.1f} {1000 / r['eager_update']:>6.2f} "
              f"{r['eager_act']:>7.1f} | {r['compiled_update']:>19.1f} {1000 / r['compiled_update']:>6.2f} "
              f"{r['compiled_act']:>7.1f} {r['compile_s']:>9.1f}")


if __name__ == "__main__":
    main()
