"""Run logging: coloured console lines and CSV files (pandas) in the run directory."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from termcolor import colored

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


class Logger:
    """Appends rows to ``<run_dir>/<kind>.csv`` and prints a coloured summary line."""

    def __init__(self, run_dir: str | Path, quiet: bool = False):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.quiet = quiet
        self._rows: dict[str, list[dict]] = {}

    def log(self, kind: str, row: dict) -> None:
        """Record ``row`` under ``kind`` (train, eval, analysis, ...): rewrite its CSV and print it."""
        rows = self._rows.setdefault(kind, [])
        rows.append(dict(row))
        self._write(kind)
        if not self.quiet:
            print(self.format(kind, row), flush=True)

    def _write(self, kind: str) -> None:
        # A temporary file renamed into place: a run killed while writing keeps the previous CSV whole.
        path = self.run_dir / f"{kind}.csv"
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            pd.DataFrame(self._rows[kind]).to_csv(tmp, index=False)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def row_counts(self) -> dict[str, int]:
        """Return how many rows each CSV holds, by kind."""
        return {kind: len(rows) for kind, rows in self._rows.items()}

    def restore(self, counts: dict[str, int]) -> None:
        """Continue the CSVs of an earlier run from ``counts`` (:meth:`row_counts` output): keep their first rows, drop later ones.

        Every ``<kind>.csv`` in the run directory is cut to ``counts[kind]``
        rows (0 when the kind is not counted: the file is removed). Raises
        ValueError if a CSV holds fewer rows than its count.
        """
        frames = {p.stem: pd.read_csv(p) if p.stat().st_size else pd.DataFrame() for p in self.run_dir.glob("*.csv")}
        for kind, keep in counts.items():
            found = len(frames.get(kind, ()))
            if found < keep:
                raise ValueError(f"{self.run_dir / kind}.csv holds {found} rows; the checkpoint recorded {keep}")
        self._rows = {}
        for kind, frame in sorted(frames.items()):
            if counts.get(kind, 0) == 0:
                (self.run_dir / f"{kind}.csv").unlink()
                continue
            self._rows[kind] = frame.iloc[: counts[kind]].to_dict("records")
            self._write(kind)

    def info(self, message: str, colour: str = "cyan") -> None:
        """Print a coloured message."""
        if not self.quiet:
            print(colored(message, colour), flush=True)

    @staticmethod
    def format(kind: str, row: dict) -> str:
        """Return the console line for ``row``."""
        parts = [colored(f"{kind:<8}", _COLOURS.get(kind, "white"), attrs=["bold"])]
        for key, label, fmt in _CONSOLE.get(kind, [(k, k, "float") for k in row]):
            if key in row and row[key] is not None:
                parts.append(f"{colored(label + ':', 'grey')} {_fmt(row[key], fmt)}")
        return "  ".join(parts)
