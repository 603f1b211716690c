"""The comparison: check the request, train every task x variant x seed through the chosen launcher, read
those runs and any given ones (``runs=[...]``), and write the report into one folder (``scripts/compare.py``)."""
from __future__ import annotations

import csv
import time
from dataclasses import replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from envs import UnknownTaskError, task_defaults
from experiments.aggregate import compare
from experiments.launch import CONTINUE, Job, Outcome, job_overrides, launch, plan, recorded_overrides
from experiments.report import write_report
from experiments.runs import COMPLETE, FAILED, RunRecord, find_run_dirs, read_run
from experiments.variants import Variant, parse_variant

#: train.py keys the comparison sets itself; ``train`` may not set them
OWN_KEYS = ("task", "variant", "aux", "seed", "steps", "eval_freq", "eval_episodes", "obs")


class CompareError(ValueError):
    """The comparison was asked for something it cannot do; the message says what is allowed."""


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CompareError(f"{name} must be a positive integer, got {value!r}")
    return value


def check(cfg: DictConfig) -> tuple[list[str], list[Variant], list[int], Variant]:
    """Return ``(tasks, variants, seeds, baseline)`` of the request; raise :class:`CompareError` on bad input."""
    tasks, seeds = list(cfg.tasks or []), list(cfg.seeds or [])
    for task in tasks:
        try:
            task_defaults(task)
        except UnknownTaskError as err:
            raise CompareError(str(err)) from err
    if len(set(tasks)) != len(tasks):
        raise CompareError(f"tasks lists a task twice: {tasks}")
    try:
        variants = [parse_variant(v) for v in cfg.variants or []]
        baseline = parse_variant(cfg.baseline)
    except ValueError as err:
        raise CompareError(str(err)) from err
    if len({v.label for v in variants}) != len(variants):
        raise CompareError(f"variants lists a variant twice: {[v.label for v in variants]} (pjepa is pjepa:reward)")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise CompareError(f"seeds must be non-negative integers, got {seed!r}")
    if len(set(seeds)) != len(seeds):
        raise CompareError(f"seeds lists a seed twice: {seeds}")
    if tasks and (not variants or not seeds):
        raise CompareError("tasks were given but no variants or no seeds: nothing to train")
    if not tasks and not cfg.runs:
        raise CompareError("nothing to compare: give tasks=[...] (with variants=[...] and seeds=[...]) to train, "
                           "and/or runs=[...] to aggregate existing run directories. Example: python "
                           "scripts/compare.py tasks=[cup-catch,reacher-easy] variants=[stock,pjepa] seeds=[1,2,3]")
    _positive_int("steps", cfg.steps)
    _positive_int("eval_episodes", cfg.eval_episodes)
    if cfg.eval_freq is not None:
        _positive_int("eval_freq", cfg.eval_freq)
    _positive_int("reps", cfg.reps)
    if not 0 < cfg.ci < 1:
        raise CompareError(f"ci must be a level between 0 and 1 (e.g. 0.95), got {cfg.ci!r}")
    if cfg.obs not in (None, "state", "rgb"):
        raise CompareError(f"obs={cfg.obs!r}; allowed values: state, rgb, null (each task's own)")
    clash = sorted(set(cfg.train or {}) & set(OWN_KEYS))
    if clash:
        raise CompareError(f"train.{clash[0]} is set by the comparison itself: use its own keys "
                           f"(tasks, variants, seeds, steps, eval_freq, eval_episodes, obs)")
    return tasks, variants, [int(s) for s in seeds], baseline


def _plain(node) -> dict:
    return {} if node is None else OmegaConf.to_container(node, resolve=True)


def common_overrides(cfg: DictConfig) -> list[str]:
    """Return the train.py overrides every run of the comparison gets."""
    from experiments.launch import flatten_overrides

    eval_freq = cfg.eval_freq or max(1, cfg.steps // 10)
    train = _plain(cfg.train)
    out = [f"steps={cfg.steps}", f"eval_freq={eval_freq}", f"eval_episodes={cfg.eval_episodes}"]
    if cfg.obs is not None:
        out.append(f"obs={cfg.obs}")
    if "threads" not in train:
        out.append(f"threads={cfg.launcher.threads}")
    return out + flatten_overrides(train)


def launcher_params(cfg: DictConfig) -> dict:
    """Return the chosen launcher's settings as plain values (``n_jobs`` filled in with the core count)."""
    import os

    params = _plain(cfg.launcher.params)
    if cfg.launcher.plugin == "joblib" and params.get("n_jobs") is None:
        params["n_jobs"] = os.cpu_count() or 1
    return params


def write_jobs(path: Path, outcomes: list[Outcome]) -> None:
    """Write what the launcher reported for each job to ``path`` (CSV); returns nothing."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task", "variant", "seed", "launcher_status", "error", "run_dir"])
        for o in outcomes:
            writer.writerow([o.job.task, o.job.variant.label, o.job.seed, o.status, o.error, o.job.run_dir])


def already_done(job: Job) -> bool:
    """Return whether ``job``'s directory holds a complete run launched with the same overrides."""
    return (recorded_overrides(job.run_dir) == job_overrides(job)
            and read_run(job.run_dir, job.task, job.variant, job.seed).status == COMPLETE)


def continuing(job: Job) -> Job:
    """Return ``job`` set to continue the run in its directory (``resume=true``) when that run was launched with the
    same overrides, else ``job`` itself.

    A run that was stopped, killed or timed out then goes on from its newest
    checkpoint (one that died before its first checkpoint starts again); a
    directory holding a run with other settings is left as it is, and the
    job fails saying so.
    """
    if recorded_overrides(job.run_dir) != job_overrides(job):
        return job
    return replace(job, overrides=(*job.overrides, CONTINUE))


def planned_record(job: Job, outcome: Outcome | None) -> RunRecord:
    """Return the record of a planned run, failed with the launcher's error when its directory does not say so."""
    record = read_run(job.run_dir, job.task, job.variant, job.seed)
    if outcome is not None and outcome.status == "failed" and record.status != FAILED:
        record.status, record.reason = FAILED, outcome.error
    elif outcome is not None and outcome.status == "unknown" and record.status != COMPLETE:
        record.reason = f"{record.reason}; {outcome.error}" if record.reason else outcome.error
    return record


def run_comparison(cfg: DictConfig, out: Path, command: str = "") -> tuple[dict[str, Path], list[RunRecord]]:
    """Train what ``cfg`` asks for, aggregate it with ``cfg.runs`` and write the report into ``out``.

    Returns the written files by name and the records of the planned runs.
    """
    tasks, variants, seeds, baseline = check(cfg)
    out = out.resolve()
    runs_dir = out / "runs"
    jobs = plan(tasks, variants, seeds, runs_dir, common_overrides(cfg))
    done = [job for job in jobs if already_done(job)]
    todo = [job for job in jobs if job not in done]
    outcomes: list[Outcome] = [Outcome(job, "reused") for job in done]
    if jobs:
        print(f"{len(jobs)} runs ({len(tasks)} tasks x {len(variants)} variants x {len(seeds)} seeds, "
              f"{cfg.steps:,} steps each) into {runs_dir}", flush=True)
    if done:
        print(f"{len(done)} of them already complete there with the same settings: reused", flush=True)
    if todo:
        print(f"launching {len(todo)} with launcher {cfg.launcher.plugin}", flush=True)
        start = time.time()
        launched = {continuing(job): job for job in todo}
        continued = sum(CONTINUE in job.overrides for job in launched)
        if continued:
            print(f"{continued} of them continue the run in their folder (launched with the same settings, "
                  f"not complete)", flush=True)
        outcomes += [replace(o, job=launched[o.job])
                     for o in launch(list(launched), cfg.launcher.plugin, launcher_params(cfg), runs_dir)]
        print(f"runs ended after {(time.time() - start) / 60:.1f} min", flush=True)
    if jobs:
        write_jobs(out / "jobs.csv", [o for job in jobs for o in outcomes if o.job == job])
    by_job = {o.job: o for o in outcomes}
    planned = [planned_record(job, by_job.get(job)) for job in jobs]
    seen = {r.run_dir.resolve() for r in planned}
    given, unmatched = find_run_dirs(list(cfg.runs or []))
    extra = [read_run(d) for d in given if d.resolve() not in seen]
    comparison = compare(planned + extra, tasks, [v.label for v in variants], baseline.label,
                         reps=cfg.reps, level=cfg.ci, seed=cfg.bootstrap_seed)
    for pattern in unmatched:
        comparison.notes.append(f"runs pattern {pattern!r} matched no run directory.")
    return write_report(comparison, out, command), planned


def summary_lines(paths: dict[str, Path], planned: list[RunRecord]) -> list[str]:
    """Return the lines printed at the end: the files written and the planned runs that did not complete."""
    lines = [f"report: {paths['report']}", f"summary: {paths['summary']}", f"curves: {paths['curves']}"]
    if "aggregate" in paths:
        lines.append(f"aggregate: {paths['aggregate']}")
    bad = [r for r in planned if r.status != COMPLETE]
    if bad:
        lines.append(f"{len(bad)} of {len(planned)} runs did not complete (listed in the report):")
        lines += [f"  {r.task} {r.variant} seed {r.seed}: {r.status}: {r.reason}" for r in bad]
    return lines
