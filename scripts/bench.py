"""Benchmark the TD-MPC2 core: gradient update and MPPI ``act`` times, per precision, against their floors.

    python scripts/bench.py                                          # model sizes 1 and 5, 1 and 2 threads, fp32
    python scripts/bench.py --threads 1 --precision fp32 bf16        # fp32 and bf16 side by side
    python scripts/bench.py --threads 1 2 --pixels --compile --precision fp32 bf16   # the full table

Settings follow TD-MPC2's defaults: batch 256, horizon 3, MPPI with 6
iterations x 512 samples; a state task with a 1-D action (dm_control
cartpole-swingup when installed, else gymnasium pendulum). ``--pixels`` adds a
64x64 RGB case with the TD-MPC2 conv encoder (counting task, stock variant,
model size 5). ``--compile`` adds each agent after ``agent.compile()``.
``--precision`` lists the precisions to time (``tdmpc2/precision.py``). All
agents of a case start from the same weights and are timed interleaved, so
they see the same machine load.

Prints the CPU (model and bf16/AMX flags), the measured matrix-product rate of
each precision, what ``precision=auto`` would choose, then a table of medians
over ``--repeats`` calls. ``step`` is one online step, an update plus an
``act``, of the fastest variant timed; ``floor`` is the step's matrix-product
and convolution FLOPs (counted by ``torch.utils.flop_counter``) divided by the
measured rate of its precision: no implementation that keeps those products
can be faster.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from tensordict import TensorDict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from envs import known_tasks, make_task_env  # noqa: E402
from pjepa_ext.plugin import build_agent  # noqa: E402
from tdmpc2 import precision, profiling  # noqa: E402
from tdmpc2.config import resolve  # noqa: E402


def build(task: str, overrides: list[str]):
    """Return ``(agent, cfg)`` for ``task`` with the stock variant and ``overrides``, eager (not compiled), seed 0."""
    with initialize_config_dir(config_dir=str(ROOT), version_base=None):
        cfg = compose(config_name="config", overrides=[f"task={task}", "variant=stock", "size=none", "device=cpu",
                                                       "compile=false", *overrides])
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


def time_case(task: str, size: int, extra: list[str], precisions: list[str], repeats: int, with_compile: bool) -> dict:
    """Return ``{"flops": (update, act), (precision, mode): {"update", "act", "compile_s"}}`` for one case.

    ``mode`` is ``eager`` or ``compiled``; a compile failure is printed and its row left out.
    """
    agents, result = {}, {}
    batch = obs = None
    for name in precisions:
        modes = ["eager", "compiled"] if with_compile else ["eager"]
        for mode in modes:
            agent, cfg = build(task, [f"model_size={size}", f"precision={name}", *extra])
            if batch is None:
                batch = fake_batch(cfg)
                obs = batch["obs"][0, 0]
                result["flops"] = (profiling.count_flops(lambda: agent.update(batch)),
                                   profiling.count_flops(lambda: agent.act(obs, t0=True)))
            compile_s = float("nan")
            if mode == "compiled":
                agent.compile()
                try:
                    compile_s = profiling.first_call_s(lambda: agent.update(batch)) + profiling.first_call_s(
                        lambda: agent.act(obs, t0=True))
                except Exception as err:  # report, do not hide: a compile failure is a result here
                    print(f"compiled {name} agent failed for {task} size {size}: {type(err).__name__}: {str(err)[:300]}")
                    continue
            agent.act(obs, t0=True)
            agents[(name, mode)] = agent
            result[(name, mode)] = {"compile_s": compile_s}
    updates = profiling.interleaved_median_ms({k: (lambda a=a: a.update(batch)) for k, a in agents.items()}, repeats)
    acts = profiling.interleaved_median_ms({k: (lambda a=a: a.act(obs)) for k, a in agents.items()}, repeats)
    for key in agents:
        result[key].update(update=updates[key], act=acts[key])
    return result


def format_rows(threads: int, label: str, r: dict, precisions: list[str], rates: dict[str, float]) -> list[str]:
    """Return the table lines of one case: one per precision, with its floor and its speed-up over fp32."""
    flops_update, flops_act = r["flops"]
    lines, steps = [], {}
    for name in precisions:
        eager, compiled = r.get((name, "eager"), {}), r.get((name, "compiled"), {})
        nan = float("nan")
        best_update = min(eager.get("update", nan), compiled.get("update", nan), key=lambda v: (v != v, v))
        best_act = min(eager.get("act", nan), compiled.get("act", nan), key=lambda v: (v != v, v))
        steps[name] = best_update + best_act
        floor_update, floor_act = (1000 * f / (rates[name] * 1e9) for f in (flops_update, flops_act))
        speedup = steps["fp32"] / steps[name] if "fp32" in steps else nan
        lines.append(
            f"{threads:>3} {label:<24} {name:<5} | {eager.get('update', nan):>7.1f} {compiled.get('update', nan):>7.1f} | "
            f"{eager.get('act', nan):>7.1f} {compiled.get('act', nan):>7.1f} | {steps[name]:>7.1f} {speedup:>5.2f}x | "
            f"{floor_update:>6.1f} {floor_act:>6.1f} {floor_update + floor_act:>6.1f} | "
            f"{flops_update / 1e9:>6.2f} {flops_act / 1e9:>6.2f} | {compiled.get('compile_s', nan):>6.1f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--pixels", action="store_true", help="also time a 64x64 RGB agent (model size 5)")
    parser.add_argument("--compile", action="store_true", help="also time the agent after agent.compile()")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=list(precision.DTYPES),
                        help="precisions to time side by side (default: fp32)")
    args = parser.parse_args()
    task = "cartpole-swingup" if "cartpole-swingup" in known_tasks() else "pendulum"
    try:
        import dm_control  # noqa: F401
    except ImportError:
        task = "pendulum"
    cases = [(task, s, [], f"{task} s{s}") for s in args.sizes]
    if args.pixels:
        cases.append(("counting", 5, ["obs=rgb", "counting.image_size=64"], "pixels 64x64 s5"))
    torch.set_num_threads(args.threads[0])
    auto, reason = precision.choose("auto", torch.device("cpu"))
    print(f"batch 256, horizon 3, MPPI 6 x 512 samples; median of {args.repeats}, all variants of a case interleaved")
    print(profiling.machine_summary())
    print(f"precision=auto here: {auto} ({reason})", flush=True)
    for threads in args.threads:
        torch.set_num_threads(threads)
        rates = profiling.matmul_rates({name: precision.DTYPES[name] for name in args.precision})
        print(f"\n{threads} thread(s): 1024x512x512 matmul " +
              ", ".join(f"{name} {rate:.0f} GFLOP/s" for name, rate in rates.items()))
        print(f"{'thr':>3} {'case':<24} {'prec':<5} | {'update ms':^15} | {'act ms':^15} | {'step ms, vs fp32':^15} | "
              f"{'floor ms':^20} | {'GFLOP':^13} | {'compile':>7}")
        print(f"{'':>3} {'':<24} {'':<5} | {'eager':>7} {'compil.':>7} | {'eager':>7} {'compil.':>7} | {'best':>7} {'':>6} | "
              f"{'update':>6} {'act':>6} {'step':>6} | {'update':>6} {'act':>6} | {'s':>7}", flush=True)
        for task_name, size, extra, label in cases:
            r = time_case(task_name, size, extra, args.precision, args.repeats, args.compile)
            print("\n".join(format_rows(threads, label, r, args.precision, rates)), flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")

if __name__ == "__main__":
    main()
