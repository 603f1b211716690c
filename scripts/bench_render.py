"""Speed of pixel dm_control, and the replay's bytes per stored pixel step.

Prints two tables. The first: MuJoCo frames per second at 64x64 (the
observation size) for a few tasks, ``physics.render`` alone and a whole
pixel ``env.step`` (two physics steps, one render, the frame stack), as the
median over several repeats, per wall-clock second and per second of this
process's CPU time (software EGL renders on threads of this process). The
second: bytes per stored step of a pixel task's replay, with single frames
stacked on sampling (what training uses) and with whole 9x64x64 stacks.

    python scripts/bench_render.py [--tasks cartpole-swingup walker-walk] [--frames 200] [--repeats 5]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envs import gl, make_env  # noqa: E402
from tdmpc2.buffer import EpisodeBuffer  # noqa: E402
from tdmpc2.stacked_replay import FrameStackBuffer  # noqa: E402
from tdmpc2.trainer import EpisodeRecorder  # noqa: E402


def cpu_name() -> str:
    """Return the CPU model as lscpu names it (else the platform's processor string)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown CPU"


def rates(measure, repeats: int) -> tuple[float, float]:
    """Return the median (wall, CPU) rates of ``repeats`` calls of ``measure()``, each ``(count, wall s, CPU s)``."""
    results = [measure() for _ in range(repeats)]
    return (statistics.median(n / w for n, w, _ in results), statistics.median(n / c for n, _, c in results))


def timed(fn, count: int) -> tuple[int, float, float]:
    """Return ``(count, wall seconds, CPU seconds)`` of ``count`` calls of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        fn()
    return count, time.perf_counter() - wall, max(time.process_time() - cpu, 1e-9)


def render_rows(task: str, frames: int, repeats: int) -> list[tuple]:
    """Return the table rows of ``task``: frames/s of ``physics.render(64, 64)`` and of a pixel ``env.step``."""
    env = make_env(task, seed=0, obs="rgb")
    env.reset()
    inner = env.unwrapped
    inner.pixel_frame()  # warm-up: the first frame builds the GL context
    render = rates(lambda: timed(inner.pixel_frame, frames), repeats)
    action = np.zeros(env.action_space.shape, np.float32)
    step = rates(lambda: timed(lambda: env.step(action), frames), repeats)
    camera = f"camera {inner.camera}"
    return [(task, camera, "physics.render 64x64", f"{render[0]:,.1f}", f"{render[1]:,.1f}"),
            (task, camera, "env.step (pixels)", f"{step[0]:,.1f}", f"{step[1]:,.1f}")]


def bytes_per_step(task: str, steps: int = 500) -> list[tuple]:
    """Return table rows: replay bytes per stored step of one ``steps``-step pixel episode of ``task``.

    Frames are blank (the replay's size does not depend on what they show),
    so no rendering is needed.
    """
    env = make_env(task, seed=0, obs="rgb")
    info = env.task_info
    k = info.frame_stack
    recorder = EpisodeRecorder(info.info_keys, info.action_dim)
    stack = np.zeros(info.obs_shape, np.uint8)
    recorder.start(stack, {key: 0.0 for key in info.info_keys})
    for _ in range(steps):
        recorder.add(stack, {key: 0.0 for key in info.info_keys}, np.zeros(info.action_dim, np.float32), 0.0, False)
    episode = recorder.to_tensordict()
    rows = []
    for name, buf in (("single frames, stacked on sampling", FrameStackBuffer(10_000, 1, 3, frame_stack=k)),
                      (f"whole {'x'.join(map(str, info.obs_shape))} stacks", EpisodeBuffer(10_000, 1, 3))):
        buf.add(episode)
        buf.flush()
        stored = buf._buffer.storage._storage[: len(buf)]
        total = sum(t.numel() * t.element_size() for t in stored.values(include_nested=True, leaves_only=True))
        row = total // len(buf)
        rows.append((name, f"{row:,}", f"{total / steps:,.0f}", f"{total * 100_000 / steps / 2**30:.2f}"))
    return rows


def table(header: tuple, rows: list[tuple]) -> str:
    """Return ``rows`` under ``header`` as a Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["cartpole-swingup", "walker-walk", "quadruped-walk"])
    parser.add_argument("--frames", type=int, default=200, help="frames per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the renderer is not affected)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for i, task in enumerate(args.tasks):
        print(f"[{i + 1}/{len(args.tasks)}] {task} ...", file=sys.stderr, flush=True)
        rows += render_rows(task, args.frames, args.repeats)
    print(f"\n{cpu_name()}; {gl.current_choice().describe()}; medians of {args.repeats} x {args.frames} frames\n")
    print(table(("task", "camera", "what", "frames/s (wall)", "frames/s (CPU)"), rows))
    print(f"\nReplay of one 500-step episode of {args.tasks[0]} (obs=rgb):\n")
    print(table(("stored as", "bytes per row", "bytes per step (episode's extra rows included)", "GiB per 100k steps"),
                bytes_per_step(args.tasks[0])))


if __name__ == "__main__":
    main()
