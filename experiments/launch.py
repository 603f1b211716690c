"""Launch training runs through a hydra launcher plugin: one after another, in parallel on this machine
(joblib), or on a Slurm cluster (submitit).

Each run is a job of train.py's own hydra app (``config.yaml``): the launcher
composes it exactly as ``python train.py -m ...`` would, from the job's
overrides, and calls :func:`train_job`, which runs ``experiments.training.run``.
Jobs are listed explicitly (not a cartesian sweep), because a variant sets
``variant`` and ``aux`` together. This uses hydra's ``Hydra`` class and
plugin registry, internal API of hydra-core 1.3 (pinned in pyproject.toml),
the same calls ``python train.py -m`` makes.
"""
from __future__ import annotations

import os
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from experiments.variants import Variant

REPO_ROOT = Path(__file__).resolve().parents[1]

#: hydra/launcher options this project uses (each from its hydra plugin)
PLUGINS = ("basic", "joblib", "submitit_slurm", "submitit_local")


@dataclass(frozen=True)
class Job:
    """One training run of a comparison: a task, a variant and a seed, run in ``run_dir`` with ``overrides``."""

    task: str
    variant: Variant
    seed: int
    run_dir: Path
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class Outcome:
    """What became of a job: ``completed`` or ``failed`` (with the error) as the launcher reported, ``unknown``
    when the launcher itself failed, ``reused`` when an earlier comparison had completed it."""

    job: Job
    status: str
    error: str = ""


def override_value(value) -> str:
    """Return ``value`` written as a hydra override value (``null``, ``true``, ``3e-4``, ``[a,b]``, quoted text)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    plain = text and all(c.isalnum() or c in "_-./:+@%" for c in text)
    return text if plain else "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def flatten_overrides(settings: dict, prefix: str = "") -> list[str]:
    """Return nested ``settings`` as ``key.sub=value`` override strings."""
    out = []
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            out += flatten_overrides(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={override_value(value)}")
    return out


def plan(tasks: list[str], variants: list[Variant], seeds: list[int], runs_dir: Path,
         common: list[str]) -> list[Job]:
    """Return one :class:`Job` per task, variant and seed, each in ``runs_dir/<task>/<variant>/s<seed>``.

    ``common`` are train.py overrides every run gets (steps, evaluation, threads, the user's own).
    """
    jobs = []
    for task in tasks:
        for variant in variants:
            for seed in seeds:
                subdir = f"{task}/{variant.dirname}/s{seed}"
                overrides = (f"task={task}", *variant.overrides(), f"seed={seed}", *common,
                             f"hydra.sweep.subdir={subdir}")
                jobs.append(Job(task, variant, int(seed), runs_dir / subdir, overrides))
    return jobs


#: file in a run directory holding the overrides its job was launched with
OVERRIDES_FILE = "overrides.yaml"


#: the override that makes a job continue the run its directory holds (tdmpc2/resume.py)
CONTINUE = "resume=true"


def recordable(overrides) -> list[str]:
    """Return ``overrides`` without the hydra ones and ``resume``: the settings that make a run what it is."""
    return [o for o in overrides if not o.startswith("hydra.") and o.split("=", 1)[0].lstrip("+~") != "resume"]


def job_overrides(job: Job) -> list[str]:
    """Return the train.py overrides of ``job`` as its run directory records them (hydra's and ``resume`` left out)."""
    return recordable(job.overrides)


def recorded_overrides(run_dir: Path) -> list[str] | None:
    """Return the overrides a run directory's job was launched with, or None when it does not say."""
    path = run_dir / OVERRIDES_FILE
    return list(OmegaConf.load(path)) if path.is_file() else None


def train_job(cfg: DictConfig) -> str:
    """Run one training job (the launchers' task function); return its run directory.

    The job's overrides go to ``<run dir>/overrides.yaml`` first (a later
    comparison into the same folder reuses the run when they match, or
    continues it when it did not complete), and the files of an earlier
    attempt that would misreport this one are removed: its error, and its
    final checkpoint unless the job continues it. When the run raises, its traceback goes
    to ``<run dir>/error.txt``, so that the comparison lists it as failed
    whoever aggregates it later.
    """
    from experiments.training import run

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "error.txt").unlink(missing_ok=True)
    if cfg.resume is not True:
        (run_dir / "final.pt").unlink(missing_ok=True)
    OmegaConf.save(OmegaConf.create(recordable(HydraConfig.get().overrides.task)), run_dir / OVERRIDES_FILE)
    try:
        return str(run(cfg))
    except Exception:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(traceback.format_exc())
        raise


def _with_repo_on_path() -> None:
    """Put the repository first on PYTHONPATH, so that job processes import this checkout's packages."""
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO_ROOT) not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *parts])


def slurm_only_settings() -> set[str]:
    """Return the submitit launcher's settings that only Slurm has (partition, account, ...)."""
    from dataclasses import fields

    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf

    return {f.name for f in fields(SlurmQueueConf)} - {f.name for f in fields(BaseQueueConf)}


def launcher_overrides(hydra, plugin: str, params: dict) -> tuple[list[str], list[str]]:
    """Return ``(hydra overrides selecting plugin with params, params left out)``.

    Unset (null or empty) params are left out, and so are Slurm's own
    settings under ``submitit_local`` (which runs the Slurm path on this
    machine); any other param the plugin does not have raises ValueError
    naming the settings it has.
    """
    from hydra.types import RunMode

    if plugin not in PLUGINS:
        raise ValueError(f"launcher.plugin={plugin!r}; allowed values: {', '.join(PLUGINS)}")
    base = hydra.compose_config("config", [f"hydra/launcher={plugin}"], run_mode=RunMode.MULTIRUN)
    known = set(base.hydra.launcher.keys()) - {"_target_"}
    out, ignored = [f"hydra/launcher={plugin}"], []
    for key, value in params.items():
        if value is None or value == {} or value == []:
            continue
        if key not in known:
            if plugin == "submitit_local" and key in slurm_only_settings():
                ignored.append(key)
                continue
            raise ValueError(f"launcher.params.{key} is not a setting of hydra/launcher={plugin}; "
                             f"its settings: {', '.join(sorted(known))}")
        out += flatten_overrides({key: value}, "hydra.launcher.")
    return out, ignored


@contextmanager
def train_app():
    """Yield train.py's hydra app (``config.yaml``) as the process's global hydra, restoring the caller's after.

    Jobs compose their config from it, in this process or (with the state
    handed over by the launcher) in another.
    """
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.singleton import Singleton

    saved = Singleton.get_state()  # the calling hydra app's own state
    try:
        GlobalHydra.instance().clear()
        yield Hydra.create_main_hydra2(task_name="train",
                                       config_search_path=create_config_search_path(f"file://{REPO_ROOT}"))
    finally:
        Singleton.set_state(saved)


def sweep_config(hydra, plugin: str, params: dict, runs_dir: Path) -> DictConfig:
    """Return train.py's config composed for a sweep into ``runs_dir`` with the launcher ``plugin`` and ``params``."""
    from hydra.types import RunMode

    chosen, ignored = launcher_overrides(hydra, plugin, params)
    if ignored:
        print(f"hydra/launcher={plugin} has no {', '.join(ignored)}: left out", flush=True)
    return hydra.compose_config("config", [*chosen, f"hydra.sweep.dir={override_value(str(runs_dir))}"],
                                run_mode=RunMode.MULTIRUN)


def launch(jobs: list[Job], plugin: str, params: dict, runs_dir: Path) -> list[Outcome]:
    """Run ``jobs`` with the hydra launcher ``plugin`` configured by ``params``; return one :class:`Outcome` each.

    Returns when every job has ended. A job that raised is ``failed`` with its
    error; if the launcher itself fails (a Slurm job killed, say) every job is
    ``unknown`` and the run directories tell the rest.
    """
    from hydra._internal.callbacks import Callbacks
    from hydra.core.plugins import Plugins
    from hydra.core.utils import JobStatus
    from hydra.types import HydraContext

    if not jobs:
        return []
    _with_repo_on_path()
    if plugin.startswith("submitit"):
        print(f"submitting {len(jobs)} jobs; waiting for them all (their logs: {runs_dir / '.submitit'})", flush=True)
    with train_app() as hydra:
        cfg = sweep_config(hydra, plugin, params, runs_dir)
        HydraConfig.instance().set_config(cfg)
        context = HydraContext(config_loader=hydra.config_loader, callbacks=Callbacks(cfg))
        launcher = Plugins.instance().instantiate_launcher(hydra_context=context, task_function=train_job, config=cfg)
        try:
            returns = launcher.launch([list(job.overrides) for job in jobs], initial_job_idx=0)
        except Exception as err:  # the launcher, not a run, failed
            return [Outcome(job, "unknown", f"launcher error: {type(err).__name__}: {err}") for job in jobs]
    outcomes = []
    for job, ret in zip(jobs, returns):
        if ret.status == JobStatus.COMPLETED:
            outcomes.append(Outcome(job, "completed"))
        else:
            err = ret._return_value  # JobReturn.return_value re-raises; the exception itself is wanted here
            outcomes.append(Outcome(job, "failed", f"{type(err).__name__}: {err}"))
    return outcomes
