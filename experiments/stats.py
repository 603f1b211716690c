"""Statistics of a comparison: bootstrap confidence intervals over seeds, areas under learning curves, and
rliable's interquartile mean across tasks with stratified-bootstrap intervals.

Per-task intervals resample seeds with replacement (percentile bootstrap,
``reps`` resamples from a NumPy generator seeded with ``seed``): with one
seed an interval is the point itself, with two it spans them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A point estimate and its confidence interval."""

    value: float
    low: float
    high: float

    def format(self, digits: int = 0) -> str:
        """Return ``value [low, high]`` rounded to ``digits`` decimals."""
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def _percentiles(samples: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    tail = 100 * (1 - level) / 2
    return np.percentile(samples, tail, axis=0), np.percentile(samples, 100 - tail, axis=0)


def bootstrap_mean(values, reps: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """Return the mean of ``values`` (one per seed) and its percentile-bootstrap interval."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"bootstrap_mean needs a non-empty 1-D array of per-seed values, got shape {values.shape}")
    curve = bootstrap_curve(values[:, None], reps, level, seed)
    return Interval(float(curve[0][0]), float(curve[1][0]), float(curve[2][0]))


def bootstrap_curve(values, reps: int = 2000, level: float = 0.95,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(mean, low, high)`` per column of ``values`` (seeds x points), resampling whole seeds."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(values), size=(reps, len(values)))
    means = values[index].mean(axis=1)  # (reps, points)
    low, high = _percentiles(means, level)
    return values.mean(axis=0), low, high


def bootstrap_difference(values, baseline, reps: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """Return ``mean(values) - mean(baseline)`` and its interval, resampling the seeds of each side independently."""
    a, b = np.asarray(values, dtype=float), np.asarray(baseline, dtype=float)
    if len(a) == 0 or len(b) == 0:
        raise ValueError("bootstrap_difference needs at least one value on each side")
    rng = np.random.default_rng(seed)
    diffs = (a[rng.integers(0, len(a), (reps, len(a)))].mean(axis=1)
             - b[rng.integers(0, len(b), (reps, len(b)))].mean(axis=1))
    low, high = _percentiles(diffs, level)
    return Interval(float(a.mean() - b.mean()), float(low), float(high))


def area_under_curve(steps, returns) -> float:
    """Return the mean return over a run: the trapezoidal area under (step, return) divided by the steps spanned
    (the single return when there is one evaluation)."""
    steps, returns = np.asarray(steps, dtype=float), np.asarray(returns, dtype=float)
    if len(steps) == 0:
        raise ValueError("area_under_curve needs at least one evaluation")
    if len(steps) == 1 or steps[-1] == steps[0]:
        return float(returns.mean())
    area = np.sum((returns[1:] + returns[:-1]) / 2 * np.diff(steps))
    return float(area / (steps[-1] - steps[0]))


def iqm_intervals(scores: dict[str, np.ndarray], reps: int = 2000, level: float = 0.95,
                  seed: int = 0) -> dict[str, list[Interval]]:
    """Return rliable's interquartile mean with stratified-bootstrap intervals for each variant.

    ``scores[variant]`` is ``(runs, tasks)`` or ``(runs, tasks, points)``
    (normalised scores; runs are resampled within each task); the result has
    one :class:`Interval` per point (one for a 2-D array).
    """
    from rliable import library, metrics  # optional: the compare extra

    logging.getLogger("absl").setLevel(logging.WARNING)  # rliable logs a line per variant

    def iqm(x: np.ndarray) -> np.ndarray:
        if x.ndim == 2:
            return np.array([metrics.aggregate_iqm(x)])
        return np.array([metrics.aggregate_iqm(x[..., j]) for j in range(x.shape[-1])])

    out = {}
    for label, matrix in scores.items():
        # rliable draws its resamples from NumPy's global generator whatever random_state says: seed that.
        np.random.seed(seed)
        points, intervals = library.get_interval_estimates({label: np.asarray(matrix, float)}, iqm, reps=reps,
                                                           confidence_interval_size=level)
        out[label] = [Interval(float(p), float(lo), float(hi))
                      for p, lo, hi in zip(points[label], intervals[label][0], intervals[label][1])]
    return out
