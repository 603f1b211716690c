"""Run logging: coloured console lines and CSV files (pandas) in the run directory."""
from __future__ import annotations

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
        pd.DataFrame(rows).to_csv(self.run_dir / f"{kind}.csv", index=False)
        if not self.quiet:
            print(self.format(kind, row), flush=True)

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
