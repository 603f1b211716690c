"""Run logging: coloured console lines, CSV files (pandas) in the run directory, and the run's trackers."""
from __future__ import annotations

import numbers
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from termcolor import colored
from tqdm import tqdm

from tdmpc2.trackers import Tracker

# (key, console label, format) for the columns shown on the console.
_CONSOLE = {
    "train": [("step", "S", "int"), ("updates", "U", "int"), ("episode_reward", "R", "float"),
              ("total_loss", "L", "float"), ("consistency_loss", "cons", "float"),
              ("steps_per_second", "sps", "float"), ("updates_per_second", "ups", "float"), ("elapsed", "T", "time")],
    "eval": [("step", "S", "int"), ("episode_reward", "R", "float"), ("success", "succ", "float"), ("elapsed", "T", "time")],
    "analysis": [("updates", "U", "int"), ("nc_accuracy", "acc", "float"), ("distance_ratio", "ratio", "float"),
                 ("effective_rank", "rank", "float"), ("distinct_clusters", "clusters", "int"), ("elapsed", "T", "time")],
}
_COLOURS = {"train": "blue", "eval": "green", "analysis": "magenta"}


def _fmt(value, kind: str) -> str:
    if kind == "int":
        return f"{int(value):,}"
    if kind == "time":
        s = int(value)
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{value:.3f}" if abs(value) < 1e4 else f"{value:.3g}"


def tracker_step(row: dict) -> int:
    """Return the trackers' x value of ``row``: its gradient updates, else its environment step, else 0."""
    for key in ("updates", "step"):
        if row.get(key) is not None:
            return int(row[key])
    return 0


def scalars(row: dict) -> dict[str, float]:
    """Return the numeric entries of ``row`` as floats (NaN kept; None and text left out)."""
    return {k: float(v) for k, v in row.items() if isinstance(v, numbers.Real)}


class Logger:
    """Appends rows to ``<run_dir>/<kind>.csv``, prints a coloured summary line and forwards both to ``trackers``.

    Console lines go through ``tqdm.write``, so that they print above the
    run's progress bar instead of through it.
    """

    def __init__(self, run_dir: str | Path, quiet: bool = False, trackers: Sequence[Tracker] = ()):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.quiet = quiet
        self.trackers = list(trackers)
        self._rows: dict[str, list[dict]] = {}
        self._columns: dict[str, list[str]] = {}  # the header each CSV file holds

    def log(self, kind: str, row: dict) -> None:
        """Record ``row`` under ``kind`` (train, eval, analysis, ...): add it to its CSV, print it, send it to the trackers."""
        rows = self._rows.setdefault(kind, [])
        rows.append(dict(row))
        if set(row) <= set(self._columns.get(kind, ())):
            self._append(kind)
        else:
            self._write(kind)
        if self.trackers:
            values, step = scalars(row), tracker_step(row)
            for tracker in self.trackers:
                tracker.log_scalars(kind, values, step)
        if not self.quiet:
            self._print(self.format(kind, row))

    def log_video(self, name: str, path: Path, frames: Sequence[np.ndarray], fps: float, step: int) -> None:
        """Send the video written at ``path`` (``frames`` at ``fps``) to the trackers as ``name`` at x = ``step``."""
        for tracker in self.trackers:
            tracker.log_video(name, path, frames, fps, step)

    def _write(self, kind: str) -> None:
        # A temporary file renamed into place: a run killed while writing keeps the previous CSV whole.
        path = self.run_dir / f"{kind}.csv"
        tmp = path.with_name(f".{path.name}.tmp")
        frame = pd.DataFrame(self._rows[kind])
        try:
            frame.to_csv(tmp, index=False)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self._columns[kind] = list(frame.columns)

    def _append(self, kind: str) -> None:
        # One line per row, so that logging costs the same at row 10 and at row 100,000; the file is rewritten
        # only when a row brings a new column. A run killed mid-line leaves a partial last row, which
        # restore() drops: the checkpoint never counts a row that was still being written.
        line = pd.DataFrame(self._rows[kind][-1:], columns=self._columns[kind]).to_csv(index=False, header=False)
        with open(self.run_dir / f"{kind}.csv", "a") as f:
            f.write(line)

    def row_counts(self) -> dict[str, int]:
        """Return how many rows each CSV holds, by kind."""
        return {kind: len(rows) for kind, rows in self._rows.items()}

    def restore(self, counts: dict[str, int]) -> None:
        """Continue the CSVs of an earlier run from ``counts`` (:meth:`row_counts` output): keep their first rows, drop later ones.

        Every ``<kind>.csv`` in the run directory is cut to ``counts[kind]``
        rows (0 when the kind is not counted: the file is removed). Raises
        ValueError if a CSV holds fewer rows than its count.
        """
        frames = {p.stem: pd.read_csv(p, float_precision="round_trip") if p.stat().st_size else pd.DataFrame() for p in self.run_dir.glob("*.csv")}
        for kind, keep in counts.items():
            found = len(frames.get(kind, ()))
            if found < keep:
                raise ValueError(f"{self.run_dir / kind}.csv holds {found} rows; the checkpoint recorded {keep}")
        self._rows, self._columns = {}, {}
        for kind, frame in sorted(frames.items()):
            if counts.get(kind, 0) == 0:
                (self.run_dir / f"{kind}.csv").unlink()
                continue
            self._rows[kind] = frame.iloc[: counts[kind]].to_dict("records")
            self._write(kind)

    def info(self, message: str, colour: str = "cyan") -> None:
        """Print a coloured message."""
        if not self.quiet:
            self._print(colored(message, colour))

    def flush(self) -> None:
        """Have every tracker hand over what it holds (the CSV files are complete after every row); return None."""
        for tracker in self.trackers:
            tracker.flush()

    def close(self) -> None:
        """Close the trackers (each once; the CSV files are complete after every row)."""
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.close()

    @staticmethod
    def _print(line: str) -> None:
        tqdm.write(line, file=sys.stdout)
        sys.stdout.flush()

    @staticmethod
    def format(kind: str, row: dict) -> str:
        """Return the console line for ``row``."""
        parts = [colored(f"{kind:<8}", _COLOURS.get(kind, "white"), attrs=["bold"])]
        for key, label, fmt in _CONSOLE.get(kind, [(k, k, "float") for k in row]):
            if key in row and row[key] is not None:
                parts.append(f"{colored(label + ':', 'grey')} {_fmt(row[key], fmt)}")
        return "  ".join(parts)
