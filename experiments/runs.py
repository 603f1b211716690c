"""Reading run directories: what a run was (task, variant, seed), how far it got, and its evaluation curve.

A run is **complete** when it wrote ``final.pt`` and its last evaluation is at
its last step (``steps``); **failed** when its job wrote ``error.txt`` (the
comparison's job does, with the traceback) or never started; **incomplete**
otherwise: still running, killed, or stopped early by ``train_minutes``.
Only complete runs enter the statistics; the others are listed with the reason.
"""
from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from experiments.variants import Variant, variant_of_run

#: file the comparison's job writes into a run directory when the run raised
ERROR_FILE = "error.txt"

COMPLETE, INCOMPLETE, FAILED = "complete", "incomplete", "failed"


@dataclass
class RunRecord:
    """One run as the comparison sees it."""

    task: str
    variant: str  # the variant's label (experiments.variants.Variant.label)
    seed: int
    run_dir: Path
    status: str  # complete | incomplete | failed
    reason: str = ""  # why a run is not complete
    steps: int | None = None  # environment steps the run was asked for
    evals: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["step", "episode_reward"]))
    wall_clock_s: float | None = None  # seconds from the start of training to the last evaluation
    updates: int | None = None  # gradient updates at the last evaluation

    @property
    def updates_per_s(self) -> float | None:
        """Return gradient updates per second of wall-clock (evaluation and acting included), or None."""
        if not self.updates or not self.wall_clock_s:
            return None
        return self.updates / self.wall_clock_s


def is_run_dir(path: Path) -> bool:
    """Return whether ``path`` holds a run (its resolved ``config.yaml``, or the error of its job)."""
    return (path / "config.yaml").is_file() or (path / ERROR_FILE).is_file()


def find_run_dirs(patterns: list[str]) -> tuple[list[Path], list[str]]:
    """Return ``(run directories, patterns that matched none)`` for glob ``patterns``.

    A match that is not itself a run directory is searched for run
    directories below it, so the ``runs/`` folder of an earlier comparison can
    be given whole.
    """
    found: dict[Path, None] = {}
    unmatched = []
    for pattern in patterns:
        hits = [Path(p) for p in sorted(glob.glob(str(Path(pattern).expanduser()), recursive=True))]
        dirs = []
        for hit in hits:
            if not hit.is_dir():
                continue
            if is_run_dir(hit):
                dirs.append(hit)
            else:
                dirs += sorted(p.parent for p in hit.rglob("config.yaml") if is_run_dir(p.parent))
                dirs += sorted(p.parent for p in hit.rglob(ERROR_FILE) if not (p.parent / "config.yaml").exists())
        if not dirs:
            unmatched.append(pattern)
        for d in dirs:
            found[d.resolve()] = None
    return list(found), unmatched


def expected_eval_steps(steps: int, eval_freq: int) -> list[int]:
    """Return the environment steps at which a complete run of ``steps`` evaluates (tdmpc2/trainer.py)."""
    periodic = list(range(eval_freq, steps + 1, eval_freq)) if eval_freq else []
    return periodic if periodic and periodic[-1] == steps else [*periodic, steps]


def read_evals(run_dir: Path) -> pd.DataFrame:
    """Return ``eval.csv`` of a run (``step``, ``episode_reward``, ``updates``, ``elapsed``, ...), empty when absent."""
    path = run_dir / "eval.csv"
    if not path.is_file():
        return pd.DataFrame(columns=["step", "episode_reward"])
    try:
        table = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=["step", "episode_reward"])
    return table.sort_values("step").drop_duplicates("step", keep="last").reset_index(drop=True)


def error_summary(run_dir: Path) -> str:
    """Return the last line of a run's ``error.txt`` (the exception), or an empty string."""
    path = run_dir / ERROR_FILE
    if not path.is_file():
        return ""
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "error.txt is empty"


def read_run(run_dir: str | Path, task: str | None = None, variant: Variant | None = None,
             seed: int | None = None) -> RunRecord:
    """Return the :class:`RunRecord` of ``run_dir``.

    ``task``, ``variant`` and ``seed`` name a run that the comparison planned;
    they are needed only when the run died before writing its config.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    cfg = OmegaConf.load(config_path) if config_path.is_file() else None
    if cfg is not None:
        task = str(cfg.task)
        variant = variant_of_run(cfg.variant, cfg.aux)
        seed = int(cfg.seed)
    record = RunRecord(task=task or "?", variant=variant.label if variant else "?", seed=-1 if seed is None else seed,
                       run_dir=run_dir, status=INCOMPLETE, steps=int(cfg.steps) if cfg is not None else None)
    error = error_summary(run_dir)
    if not run_dir.is_dir():
        record.status, record.reason = FAILED, "its directory was never written (the job did not start)"
        return record
    record.evals = read_evals(run_dir)
    if len(record.evals):
        last = record.evals.iloc[-1]
        record.wall_clock_s = float(last["elapsed"]) if "elapsed" in last else None
        record.updates = int(last["updates"]) if "updates" in last else None
    if error:
        record.status, record.reason = FAILED, error
    elif cfg is None:
        record.reason = "no config.yaml: stopped before training started"
    elif not (run_dir / "final.pt").is_file():
        done = int(record.evals["step"].iloc[-1]) if len(record.evals) else 0
        record.reason = f"no final.pt (still running or killed); last evaluation at step {done:,} of {cfg.steps:,}"
    else:
        wanted = expected_eval_steps(int(cfg.steps), int(cfg.eval_freq)) if cfg.eval_episodes else []
        seen = [int(s) for s in record.evals["step"]]
        if not wanted:
            record.reason = "eval_episodes=0: the run has no evaluation"
        elif not seen or seen[-1] != cfg.steps:
            at = f"step {seen[-1]:,}" if seen else "no evaluation"
            record.reason = f"stopped early ({at} of {cfg.steps:,}; train_minutes={cfg.get('train_minutes')})"
        elif len(seen) < len(wanted):
            record.reason = f"{len(seen)} of {len(wanted)} evaluations in eval.csv"
        else:
            record.status = COMPLETE
    return record
