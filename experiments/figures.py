"""Figures of a comparison: the per-task learning curves (one panel per task) and the across-task aggregate."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.aggregate import Comparison, task_max_return  # noqa: E402

#: the baseline is drawn in black; other variants take these colours in order
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def colours(comparison: Comparison) -> dict[str, str]:
    """Return one colour per variant, the same in every figure (the baseline black)."""
    others = [v for v in comparison.variants if v != comparison.baseline]
    out = {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(others)}
    out[comparison.baseline] = "black"
    return out


def _steps_axis(ax) -> None:
    ax.set_xlabel("environment steps")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
        lambda x, _: f"{x / 1000:g}k" if abs(x) >= 1000 else f"{x:g}"))
    ax.grid(alpha=0.3)


def plot_curves(comparison: Comparison, path: Path) -> Path:
    """Draw one panel per task: evaluation return against steps, the mean over seeds and its interval per
    variant; write the PNG to ``path`` and return it."""
    tasks = comparison.tasks
    cols = min(3, max(1, len(tasks)))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    colour = colours(comparison)
    pct = round(100 * comparison.level)
    for ax, task in zip(axes.flat, tasks):
        drawn = False
        for variant in comparison.variants:
            curve = comparison.curves.get((task, variant))
            if curve is None:
                continue
            label = f"{variant} ({curve.seeds} seed{'s' if curve.seeds != 1 else ''})"
            ax.plot(curve.steps, curve.mean, color=colour[variant], lw=2, marker="o" if len(curve.steps) < 3 else None,
                    label=label)
            ax.fill_between(curve.steps, curve.low, curve.high, color=colour[variant], alpha=0.2, lw=0)
            drawn = True
        top = task_max_return(task)
        if top is not None:
            ax.axhline(top, color="grey", lw=0.8, ls=":")
        ax.set_title(task)
        ax.set_ylabel("evaluation return")
        _steps_axis(ax)
        if drawn:
            ax.legend(fontsize=8, loc="best")
        else:
            ax.text(0.5, 0.5, "no complete run", ha="center", va="center", transform=ax.transAxes, color="grey")
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    fig.suptitle(f"Evaluation return (mean over seeds, {pct}% CI)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_aggregate(comparison: Comparison, path: Path) -> Path | None:
    """Draw the across-task aggregate: the IQM of normalised final return per variant with its interval, and the
    IQM of normalised return against steps; write the PNG to ``path`` and return it (None without an aggregate)."""
    if not comparison.aggregate:
        return None
    colour = colours(comparison)
    variants = [v for v in comparison.variants if v in comparison.aggregate]
    pct = round(100 * comparison.level)
    with_curve = comparison.aggregate_curve is not None
    size = (11, 3.8) if with_curve else (5.5, 1.2 + 0.55 * len(variants))
    fig, axes = plt.subplots(1, 2 if with_curve else 1, figsize=size, squeeze=False)
    ax = axes[0, 0]
    for i, variant in enumerate(reversed(variants)):
        iv = comparison.aggregate[variant]
        ax.plot([iv.low, iv.high], [i, i], color=colour[variant], lw=8, alpha=0.35, solid_capstyle="butt")
        ax.plot([iv.value], [i], "|", color=colour[variant], ms=18, mew=3)
        ax.text(iv.high, i, f"  {iv.value:.3f}", va="center", fontsize=9)
    ax.set_yticks(range(len(variants)), list(reversed(variants)))
    ax.set_xlabel("IQM of final return / task maximum")
    ax.set_xlim(min(0.0, *(comparison.aggregate[v].low for v in variants)) - 0.02,
                max(1.0, *(comparison.aggregate[v].high for v in variants)) + 0.12)
    ax.set_ylim(-0.7, len(variants) - 0.3)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"final return, {pct}% stratified-bootstrap CI")
    if with_curve:
        steps, series = comparison.aggregate_curve
        ax = axes[0, 1]
        for variant in variants:
            ivs = series[variant]
            ax.plot(steps, [iv.value for iv in ivs], color=colour[variant], lw=2, label=variant,
                    marker="o" if len(steps) < 3 else None)
            ax.fill_between(steps, [iv.low for iv in ivs], [iv.high for iv in ivs], color=colour[variant], alpha=0.2,
                            lw=0)
        ax.set_ylabel("IQM of return / task maximum")
        ax.set_title("during training")
        _steps_axis(ax)
        ax.legend(fontsize=8)
    tasks = comparison.aggregate_tasks
    fig.suptitle(f"Across {len(tasks)} task{'s' if len(tasks) != 1 else ''} ({', '.join(tasks)}), "
                 f"{comparison.aggregate_runs} run{'s' if comparison.aggregate_runs != 1 else ''} per task",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
