"""Curves of one run from its CSV files (train.csv, eval.csv, analysis.csv), drawn into one PNG.

Each panel is drawn only when the run has its data: the evaluation success
only for a task that ever succeeded, the representation metrics only for a
counting run measured with ``analysis_freq > 0``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from omegaconf import OmegaConf

#: the CSV files of a run directory (``<kind>.csv``)
KINDS = ("train", "eval", "analysis")

#: x axes a run can be drawn against: value of ``x=`` -> (CSV column, axis label)
X_AXES = {"updates": ("updates", "gradient updates"), "step": ("step", "environment steps"),
          "minutes": ("elapsed", "wall-clock minutes")}

#: default file name of the figure, inside the run directory
DEFAULT_NAME = "run_curves.png"

_SKIP_AS_TERM = ("total_loss", "pi_loss")  # drawn in panels of their own


class NotARunError(ValueError):
    """The directory is not a run directory written by train.py (or holds no rows yet)."""


@dataclass(frozen=True)
class Panel:
    """One panel: the (kind, column, legend label) lines it draws, and how."""

    title: str
    lines: tuple[tuple[str, str, str], ...]
    log_y: bool = False
    needs_nonzero: bool = False  # draw only when some value is non-zero (evaluation success)


def _panels(train_columns: list[str]) -> list[Panel]:
    """Return every panel a run may have; the model-loss panel lists the loss terms this run logged."""
    terms = tuple(("train", c, c.removesuffix("_loss")) for c in train_columns
                  if c.endswith("_loss") and c not in _SKIP_AS_TERM)
    return [
        Panel("episode reward", (("eval", "episode_reward", "evaluation"),
                                 ("train", "episode_reward", "training (last 10 episodes)"))),
        Panel("evaluation success", (("eval", "success", "success rate"),), needs_nonzero=True),
        Panel("total loss", (("train", "total_loss", "total"),), log_y=True),
        Panel("model loss terms", terms, log_y=True),
        Panel("policy loss", (("train", "pi_loss", "policy"),)),
        Panel("policy entropy", (("train", "pi_entropy", "entropy of the squashed action"),)),
        Panel("gradient norm (before clipping)", (("train", "grad_norm", "model"),), log_y=True),
        Panel("updates per second", (("train", "updates_per_second", "updates"),)),
        Panel("environment steps per second", (("train", "steps_per_second", "steps"),)),
        Panel("held-out nearest-centroid accuracy", (("analysis", "nc_accuracy", "accuracy"),)),
        Panel("within / across distance", (("analysis", "distance_ratio", "ratio"),)),
        Panel("effective rank (RankMe)", (("analysis", "effective_rank", "rank"),)),
        Panel("distinct count clusters", (("analysis", "distinct_clusters", "clusters"),)),
        Panel("auxiliary head's reward reading", (("analysis", "aux_pred_target", "at the target count"),
                                                  ("analysis", "aux_pred_other", "at other counts"))),
    ]


def load_run(run_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Return ``{kind: rows}`` of the run's non-empty CSV files; raise :class:`NotARunError` when there are none."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise NotARunError(f"run directory not found: {run_dir}")
    if not run_dir.is_dir():
        raise NotARunError(f"not a directory: {run_dir}")
    names = ", ".join(f"{k}.csv" for k in KINDS)
    found = {k: run_dir / f"{k}.csv" for k in KINDS if (run_dir / f"{k}.csv").is_file()}
    if not found:
        raise NotARunError(f"{run_dir} is not a run directory: it has none of {names} (train.py writes them)")
    tables = {}
    for kind, path in found.items():
        try:
            tables[kind] = pd.read_csv(path)
        except pd.errors.EmptyDataError:
            continue
    tables = {k: t for k, t in tables.items() if len(t)}
    if not tables:
        raise NotARunError(f"{run_dir} has no rows yet in {', '.join(p.name for p in found.values())}; "
                           "is the run still starting?")
    return tables


def _series(tables: dict[str, pd.DataFrame], kind: str, column: str, x_column: str):
    """Return ``(x, y)`` arrays of ``kind``'s finite values of ``column``, or None when there are none."""
    table = tables.get(kind)
    if table is None or column not in table or x_column not in table:
        return None
    x, y = table[x_column].to_numpy(float), pd.to_numeric(table[column], errors="coerce").to_numpy(float)
    keep = np.isfinite(x) & np.isfinite(y)
    return (x[keep], y[keep]) if keep.any() else None


def _title(run_dir: Path) -> str:
    config = run_dir / "config.yaml"
    if not config.is_file():
        return run_dir.name
    cfg = OmegaConf.load(config)
    parts = [f"{k} {cfg.get(k)}" for k in ("task", "variant", "aux", "seed") if cfg.get(k) is not None]
    return f"{run_dir.name}\n" + ", ".join(parts)


def plot_run(run_dir: str | Path, out: str | Path | None = None, x: str = "updates") -> tuple[Path, list[str]]:
    """Draw the run's curves against ``x`` (updates, step or minutes) into one PNG.

    Returns ``(path written, titles of the panels drawn)``; ``out`` defaults to
    ``<run_dir>/run_curves.png``. Raises :class:`NotARunError` for a directory
    that is not a run and ValueError for an unknown ``x``.
    """
    if x not in X_AXES:
        raise ValueError(f"x={x!r} is unknown; allowed values: {', '.join(X_AXES)}")
    run_dir = Path(run_dir)
    tables = load_run(run_dir)
    x_column, x_label = X_AXES[x]
    drawn = []
    for panel in _panels(list(tables.get("train", pd.DataFrame()).columns)):
        lines = [(label, s) for kind, column, label in panel.lines
                 if (s := _series(tables, kind, column, x_column)) is not None]
        if panel.needs_nonzero:
            lines = [(label, s) for label, s in lines if np.any(s[1] != 0)]
        if lines:
            drawn.append((panel, lines))

    columns = min(3, max(1, len(drawn)))
    rows = max(1, math.ceil(len(drawn) / columns))
    fig = Figure(figsize=(4.6 * columns, 3.2 * rows + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    scale = 1 / 60 if x == "minutes" else 1
    for ax, (panel, lines) in zip(axes, drawn):
        for label, (xs, ys) in lines:
            ax.plot(xs * scale, ys, marker="o" if len(xs) < 30 else None, markersize=3, linewidth=1.2, label=label)
        if panel.log_y and all(np.all(ys > 0) for _, (_, ys) in lines):
            ax.set_yscale("log")
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(x_label, fontsize=8)
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=7)
    for ax in axes[len(drawn):]:
        ax.set_axis_off()
    if not drawn:
        axes[0].text(0.5, 0.5, f"no curves to draw against {x}", ha="center", va="center", transform=axes[0].transAxes)
    fig.suptitle(_title(run_dir), fontsize=10)
    path = Path(out) if out is not None else run_dir / DEFAULT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path, [panel.title for panel, _ in drawn]
