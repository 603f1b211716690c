"""Speed and size of the replay kept in memory and on disk (memory-mapped, tdmpc2.replay_files).

Prints one table per observation kind (64x64 RGB frames as the counting task
stores them, and 3-float states as pendulum's): bytes per stored row, the
size of a 100k-row replay, and the medians of a sample of B sub-trajectories,
of storing one episode then sampling (the training loop's pattern, with undo
records once the ring is full), and of a commit (what a checkpoint adds for
the replay: fsync and SHA-1 of the rows on disk; a copy of the rows in memory).

    python scripts/bench_replay.py [--rows 20000] [--repeats 30] [--dir /tmp]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from tensordict import TensorDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tdmpc2.buffer import EpisodeBuffer  # noqa: E402

KINDS = {"rgb 64x64 (counting)": ((3, 64, 64), torch.uint8, 5, 1), "state 3 (pendulum)": ((3,), torch.float32, 201, 1)}


def episode(obs_shape, dtype, steps: int, action_dim: int, g: torch.Generator) -> TensorDict:
    """Return a random episode of ``steps`` rows with the fields the trainer stores."""
    obs = (torch.randint(0, 256, (steps, *obs_shape), generator=g, dtype=torch.uint8) if dtype == torch.uint8
           else torch.randn(steps, *obs_shape, generator=g))
    info = TensorDict({k: torch.zeros(steps) for k in ("obs_reward", "success", "count")}, batch_size=[steps])
    return TensorDict({"obs": obs, "action": torch.rand(steps, action_dim, generator=g), "reward": torch.rand(steps, 1, generator=g),
                       "terminated": torch.zeros(steps, 1), "info": info}, batch_size=[steps])


def median_ms(fn, repeats: int) -> float:
    """Return the median wall-clock milliseconds of ``fn()`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def measure(kind: str, rows: int, repeats: int, directory: Path | None) -> dict:
    """Return the figures of one observation kind, in memory (``directory`` None) or on disk."""
    obs_shape, dtype, length, action_dim = KINDS[kind]
    g = torch.Generator().manual_seed(0)
    buf = EpisodeBuffer(rows, batch_size=256, horizon=3, seed=0, directory=directory)
    filled = 0
    while filled < rows + length:  # full, and wrapped once: overwrites write undo records on disk
        buf.add(episode(obs_shape, dtype, length, action_dim, g))
        filled += length
    buf.sample()
    sample = median_ms(buf.sample, repeats)
    add_sample = median_ms(lambda: (buf.add(episode(obs_shape, dtype, length, action_dim, g)), buf.sample()), repeats)
    commit = median_ms(buf.commit, max(3, repeats // 10))
    return {"row_bytes": buf.row_bytes, "sample": sample, "add_sample": add_sample, "commit": commit}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000, help="replay capacity (rows) to measure with")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--dir", type=Path, default=None, help="where the on-disk replay is made (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"capacity {args.rows:,} rows, batch 256 x (horizon 3 + 1), one torch thread, medians of {args.repeats}")
    print(f"{'observation':<22} {'where':<7} {'bytes/row':>9} {'100k rows':>9} {'sample ms':>9} {'add+sample ms':>13} {'commit ms':>9}")
    for kind in KINDS:
        for where in ("memory", "disk"):
            with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
                r = measure(kind, args.rows, args.repeats, Path(tmp) / "replay" if where == "disk" else None)
            print(f"{kind:<22} {where:<7} {r['row_bytes']:>9,} {r['row_bytes'] * 1e5 / 1e9:>7.3f}GB "
                  f"{r['sample']:>9.2f} {r['add_sample']:>13.2f} {r['commit']:>9.1f}")


if __name__ == "__main__":
    main()
