"""From run records to the comparison's numbers: per-task learning curves and tables with bootstrap
intervals over seeds, differences from the baseline variant, and the across-task IQM of normalised returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import reduce

import numpy as np
import pandas as pd

from envs import UnknownTaskError, max_return
from experiments.runs import COMPLETE, RunRecord
from experiments.stats import Interval, area_under_curve, bootstrap_curve, bootstrap_difference, bootstrap_mean, iqm_intervals


@dataclass
class Curve:
    """A variant's learning curve on one task: mean evaluation return and its interval at common steps."""

    steps: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    seeds: int


@dataclass
class Comparison:
    """Everything the report and figures show."""

    tasks: list[str]
    variants: list[str]
    baseline: str
    records: list[RunRecord]
    runs: pd.DataFrame  # one row per run (summary.csv)
    table: pd.DataFrame  # one row per task and variant with complete runs
    curves: dict[tuple[str, str], Curve]
    aggregate: dict[str, Interval] = field(default_factory=dict)  # variant -> IQM of normalised final return
    aggregate_curve: tuple[np.ndarray, dict[str, list[Interval]]] | None = None
    aggregate_tasks: list[str] = field(default_factory=list)
    aggregate_runs: int = 0  # runs per task in the aggregate
    notes: list[str] = field(default_factory=list)
    level: float = 0.95


def task_max_return(task: str) -> float | None:
    """Return the task's maximum return from the registry, None for an unknown task or one without a maximum."""
    try:
        return max_return(task)
    except UnknownTaskError:
        return None


def run_table(records: list[RunRecord]) -> pd.DataFrame:
    """Return one row per run: identity, status and reason, final return, AUC, normalised final, speed, directory."""
    rows = []
    for r in records:
        have = r.status == COMPLETE and len(r.evals) > 0
        top = task_max_return(r.task)
        final = float(r.evals["episode_reward"].iloc[-1]) if have else np.nan
        rows.append({
            "task": r.task, "variant": r.variant, "seed": r.seed, "status": r.status, "reason": r.reason,
            "final_return": final,
            "auc": area_under_curve(r.evals["step"], r.evals["episode_reward"]) if have else np.nan,
            "max_return": top if top is not None else np.nan,
            "normalised_final": final / top if have and top else np.nan,
            "steps": r.steps, "last_eval_step": int(r.evals["step"].iloc[-1]) if len(r.evals) else np.nan,
            "wall_clock_s": r.wall_clock_s, "updates": r.updates, "updates_per_s": r.updates_per_s,
            "run_dir": str(r.run_dir),
        })
    return pd.DataFrame(rows)


def _mean(column: pd.Series) -> float:
    """Return the mean of the known values of ``column`` (NaN when none is known)."""
    values = pd.to_numeric(column, errors="coerce").dropna()
    return float(values.mean()) if len(values) else float("nan")


def common_steps(runs: list[RunRecord]) -> np.ndarray:
    """Return the evaluation steps every one of ``runs`` has, sorted."""
    sets = [set(int(s) for s in r.evals["step"]) for r in runs]
    return np.array(sorted(reduce(set.intersection, sets))) if sets else np.array([], int)


def returns_at(run: RunRecord, steps: np.ndarray) -> np.ndarray:
    """Return the run's evaluation returns at ``steps`` (which it must have)."""
    table = run.evals.set_index("step")["episode_reward"]
    return table.loc[steps].to_numpy(float)


def compare(records: list[RunRecord], tasks: list[str], variants: list[str], baseline: str,
            reps: int = 2000, level: float = 0.95, seed: int = 0) -> Comparison:
    """Return the :class:`Comparison` of ``records`` (all of them listed; complete ones measured).

    ``tasks`` and ``variants`` give the order of tables and figures; tasks and
    variants found only in the records follow in sorted order.
    """
    tasks = list(dict.fromkeys([*tasks, *sorted({r.task for r in records})]))
    variants = list(dict.fromkeys([*variants, *sorted({r.variant for r in records})]))
    runs = run_table(records)
    complete = [r for r in records if r.status == COMPLETE and len(r.evals)]
    by_cell: dict[tuple[str, str], list[RunRecord]] = {}
    for r in sorted(complete, key=lambda r: r.seed):
        by_cell.setdefault((r.task, r.variant), []).append(r)

    rows, curves, notes = [], {}, []
    for task in tasks:
        base = runs[(runs.task == task) & (runs.variant == baseline) & (runs.status == COMPLETE)]
        for variant in variants:
            cell = by_cell.get((task, variant))
            if not cell:
                continue
            mine = runs[(runs.task == task) & (runs.variant == variant) & (runs.status == COMPLETE)]
            steps = common_steps(cell)
            if len(steps):
                values = np.stack([returns_at(r, steps) for r in cell])
                curves[(task, variant)] = Curve(steps, *bootstrap_curve(values, reps, level, seed), seeds=len(cell))
            if len(steps) < max(len(r.evals) for r in cell):
                notes.append(f"{task}, {variant}: the seeds' evaluations differ; the curve shows the {len(steps)} "
                             f"steps they share")
            row = {"task": task, "variant": variant, "seeds": len(cell),
                   "final": bootstrap_mean(mine.final_return, reps, level, seed),
                   "auc": bootstrap_mean(mine.auc, reps, level, seed),
                   "wall_clock_min": _mean(mine.wall_clock_s) / 60, "updates_per_s": _mean(mine.updates_per_s)}
            if variant != baseline and len(base):
                row["diff_final"] = bootstrap_difference(mine.final_return, base.final_return, reps, level, seed)
                row["diff_auc"] = bootstrap_difference(mine.auc, base.auc, reps, level, seed)
            rows.append(row)
    result = Comparison(tasks=tasks, variants=variants, baseline=baseline, records=records, runs=runs,
                        table=pd.DataFrame(rows), curves=curves, notes=notes, level=level)
    _aggregate(result, by_cell, reps, level, seed)
    return result


def _aggregate(result: Comparison, by_cell: dict, reps: int, level: float, seed: int) -> None:
    """Fill the across-task IQM of ``result`` from the complete runs ``by_cell``; leave notes for what is left out."""
    measured = [v for v in result.variants if any(key[1] == v for key in by_cell)]
    tasks, left_out = [], []
    for task in result.tasks:
        if not any(key[0] == task for key in by_cell):
            continue
        if task_max_return(task) is None:
            left_out.append(f"{task} (the task registry gives it no maximum return)")
        elif any((task, v) not in by_cell for v in measured):
            missing = [v for v in measured if (task, v) not in by_cell]
            left_out.append(f"{task} (no complete run of {', '.join(missing)})")
        else:
            tasks.append(task)
    if left_out:
        result.notes.append("Left out of the across-task aggregate: " + "; ".join(left_out) + ".")
    if not tasks:
        result.notes.append("No task enters the across-task aggregate.")
        return
    n = min(len(by_cell[(t, v)]) for t in tasks for v in measured)
    extra = sum(len(by_cell[(t, v)]) - n for t in tasks for v in measured)
    if extra:
        result.notes.append(f"The aggregate takes the first {n} seeds of every task and variant (stratified bootstrap "
                            f"needs as many runs per task); {extra} further complete runs are in the tables only.")
    finals = {v: np.array([[by_cell[(t, v)][i].evals["episode_reward"].iloc[-1] / task_max_return(t) for t in tasks]
                           for i in range(n)]) for v in measured}
    result.aggregate = {v: iv[0] for v, iv in iqm_intervals(finals, reps, level, seed).items()}
    result.aggregate_tasks, result.aggregate_runs = tasks, n
    steps = common_steps([r for t in tasks for v in measured for r in by_cell[(t, v)][:n]])
    if len(steps):
        series = {v: np.stack([np.stack([returns_at(by_cell[(t, v)][i], steps) / task_max_return(t) for t in tasks])
                               for i in range(n)]) for v in measured}
        result.aggregate_curve = (steps, iqm_intervals(series, reps, level, seed))
    else:
        result.notes.append("The aggregate has no learning curve: the runs share no evaluation step.")
