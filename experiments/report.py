"""The comparison's files: ``report.md`` (tables per task, the aggregate, every run not measured),
``summary.csv`` (one row per run), ``curves.csv`` (every evaluation of every run) and the figures."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from experiments.aggregate import Comparison
from experiments.figures import plot_aggregate, plot_curves
from experiments.runs import COMPLETE


def _num(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _interval(value, digits: int = 0) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else value.format(digits)


def task_table(comparison: Comparison, task: str) -> str:
    """Return the Markdown table of ``task``: per variant, seeds, final return, AUC, differences from the
    baseline, wall-clock and updates per second."""
    pct = round(100 * comparison.level)
    base = comparison.baseline
    rows = comparison.table[comparison.table.task == task] if len(comparison.table) else comparison.table
    header = (f"| variant | seeds | final return [{pct}% CI] | AUC [{pct}% CI] | final - {base} [{pct}% CI] | "
              f"AUC - {base} [{pct}% CI] | wall-clock (min) | updates/s |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for row in rows.to_dict("records"):
        lines.append(f"| {row['variant']} | {row['seeds']} | {_interval(row['final'])} | {_interval(row['auc'])} | "
                     f"{_interval(row.get('diff_final'))} | {_interval(row.get('diff_auc'))} | "
                     f"{_num(row['wall_clock_min'])} | {_num(row['updates_per_s'], 2)} |")
    return "\n".join(lines)


def aggregate_table(comparison: Comparison) -> str:
    """Return the Markdown table of the across-task IQM per variant (empty when there is none)."""
    if not comparison.aggregate:
        return ""
    pct = round(100 * comparison.level)
    lines = [f"| variant | IQM of final return / task maximum [{pct}% CI] |", "|---|---|"]
    lines += [f"| {v} | {comparison.aggregate[v].format(3)} |" for v in comparison.variants if v in comparison.aggregate]
    return "\n".join(lines)


def not_measured_table(comparison: Comparison) -> str:
    """Return the Markdown table of every run that failed or is incomplete, with the reason."""
    runs = comparison.runs[comparison.runs.status != COMPLETE] if len(comparison.runs) else comparison.runs
    if not len(runs):
        return "None: every run is complete."
    lines = ["| task | variant | seed | status | reason | run directory |", "|---|---|---|---|---|---|"]
    for r in runs.sort_values(["task", "variant", "seed"]).to_dict("records"):
        reason = str(r["reason"]).replace("|", "\\|")
        lines.append(f"| {r['task']} | {r['variant']} | {r['seed']} | {r['status']} | {reason} | `{r['run_dir']}` |")
    return "\n".join(lines)


def curves_frame(comparison: Comparison) -> pd.DataFrame:
    """Return every evaluation of every run (task, variant, seed, status, step, episode_reward, ...) as one table."""
    frames = []
    for r in comparison.records:
        if len(r.evals):
            frame = r.evals.copy()
            frame.insert(0, "status", r.status)
            frame.insert(0, "seed", r.seed)
            frame.insert(0, "variant", r.variant)
            frame.insert(0, "task", r.task)
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["task", "variant", "seed", "status", "step", "episode_reward"])


def write_report(comparison: Comparison, out: Path, command: str = "") -> dict[str, Path]:
    """Write report.md, summary.csv, curves.csv, curves.png and aggregate.png (when there is an aggregate) into
    ``out``; return their paths by name."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"summary": out / "summary.csv", "curves_csv": out / "curves.csv", "report": out / "report.md"}
    comparison.runs.to_csv(paths["summary"], index=False)
    curves_frame(comparison).to_csv(paths["curves_csv"], index=False)
    paths["curves"] = plot_curves(comparison, out / "curves.png")
    aggregate = plot_aggregate(comparison, out / "aggregate.png")
    if aggregate is not None:
        paths["aggregate"] = aggregate
    elif (out / "aggregate.png").exists():
        (out / "aggregate.png").unlink()  # from an earlier aggregation of this folder

    runs = comparison.runs
    counts = runs.status.value_counts().to_dict() if len(runs) else {}
    status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: kv[0] != COMPLETE))
    pct = round(100 * comparison.level)
    parts = [f"# {' vs '.join(comparison.variants)} on {len(comparison.tasks)} task"
             f"{'s' if len(comparison.tasks) != 1 else ''}", ""]
    if command:
        parts += ["```bash", command, "```", ""]
    parts += [f"{len(runs)} runs: {status or 'none'}. Statistics use complete runs only; the others are listed "
              f"under *Runs not measured*. Intervals are {pct}% percentile-bootstrap intervals over seeds; "
              f"AUC is the mean evaluation return over the run (area under the curve / steps); differences are "
              f"from `{comparison.baseline}`, resampling the seeds of each side.", "",
              "![learning curves](curves.png)", ""]
    if comparison.aggregate:
        parts += ["## Across tasks", "",
                  f"Interquartile mean (rliable) of the final evaluation return divided by the task's maximum "
                  f"(1000 on dm_control), over {', '.join(comparison.aggregate_tasks)}, "
                  f"{comparison.aggregate_runs} run{'s' if comparison.aggregate_runs != 1 else ''} per task; "
                  f"stratified-bootstrap intervals.", "", aggregate_table(comparison), "",
                  "![aggregate](aggregate.png)", ""]
    for task in comparison.tasks:
        parts += [f"## {task}", ""]
        has = len(comparison.table) and (comparison.table.task == task).any()
        parts += [task_table(comparison, task) if has else "No complete run.", ""]
    parts += ["## Runs not measured", "", not_measured_table(comparison), ""]
    if comparison.notes:
        parts += ["## Notes", ""] + [f"- {note}" for note in comparison.notes] + [""]
    paths["report"].write_text("\n".join(parts))
    return paths
