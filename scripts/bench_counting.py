"""Speed of the counting environment and of its batch renderer.

Prints one table: environment steps per second (random actions, resets
included whenever an episode ends) and render_batch images per second, at
each image size, as the median over several repeats. Rates are given per
wall-clock second and per second of this process's CPU time; on a shared
machine the second is the steadier figure.

    python scripts/bench_counting.py [--repeats 7] [--steps 20000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envs.counting import SHAPES, make_counting_env, render_batch  # noqa: E402


def env_steps_per_second(image_size: int, steps: int, seed: int) -> tuple[float, float]:
    """Return env.step calls per (wall, CPU) second over `steps` random actions."""
    env = make_counting_env({"image_size": image_size}, seed=seed)
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1.0, 1.0, size=(steps, 1)).astype(np.float32)
    env.reset()
    wall, cpu = time.perf_counter(), time.process_time()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - wall), steps / (time.process_time() - cpu)


def render_images_per_second(image_size: int, batch: int, seed: int) -> tuple[float, float]:
    """Return images per (wall, CPU) second of render_batch calls of `batch`
    images (as many calls as make at least 8,192 images)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 9, size=batch)
    shapes = rng.integers(0, len(SHAPES), size=batch)
    colours = rng.integers(30, 226, size=(batch, 3)).astype(np.uint8)
    calls = max(1, 8192 // batch)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        render_batch(counts, shapes, colours, rng, image_size=image_size)
    images = calls * batch
    return images / (time.perf_counter() - wall), images / (time.process_time() - cpu)


def median_of(measure, repeats: int) -> tuple[float, float]:
    """Return the medians of the (wall, CPU) rates of `repeats` calls of
    measure(repeat_index)."""
    rates = [measure(i) for i in range(repeats)]
    return statistics.median(r[0] for r in rates), statistics.median(r[1] for r in rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20_000, help="env steps per repeat")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 32])
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 4096])
    args = parser.parse_args()

    rows = []
    for size in args.sizes:
        wall, cpu = median_of(lambda i: env_steps_per_second(size, args.steps, i), args.repeats)
        rows.append((f"env.step ({size}x{size})", "1", "steps/s", f"{wall:,.0f}", f"{cpu:,.0f}"))
    for size in args.sizes:
        for batch in args.batches:
            render_batch(np.zeros(batch, int), np.zeros(batch, int),
                         np.full((batch, 3), 100, np.uint8), np.random.default_rng(0),
                         image_size=size)  # warm-up: page in the output size once
            wall, cpu = median_of(lambda i: render_images_per_second(size, batch, i), args.repeats)
            rows.append(
                (f"render_batch ({size}x{size})", str(batch), "images/s", f"{wall:,.0f}", f"{cpu:,.0f}")
            )

    print(f"median of {args.repeats} repeats; env steps per repeat: {args.steps}")
    header = ("what", "batch", "unit", "per wall s", "per CPU s")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    print("  ".join(h.rjust(w) if i > 2 else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths))))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.rjust(w) if i > 2 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))


if __name__ == "__main__":
    main()
