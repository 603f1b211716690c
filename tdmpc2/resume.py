"""Resuming a run: what a resumable checkpoint holds, how it is written and read, and which config keys may change.

A resumable checkpoint (``step_<N>.pt``, ``final.pt``) is an ordinary
checkpoint (:mod:`tdmpc2.checkpoint`: agent, config, counters) whose payload
also has a ``resume`` entry with everything else the run was made of:

=============== =================================================================================
``trainer``     the loop's counters: step (and whether its updates were cut short), last evaluation
                and periodic save, skipped short episodes, recent episode rewards, metrics since the
                last ``train.csv`` row, seconds of ``train_minutes`` spent, the random policy's
                generator and held action
``loop``        the episode in progress (every observation, action, reward, flag and info so far)
                and whether it has ended
``envs``        the training env's random state when that episode began (or now, between episodes)
                and the evaluation env's
``rng``         Python's, NumPy's and torch's global generators (CUDA's too when in use)
``replay``      the replay's commit (:meth:`tdmpc2.buffer.EpisodeBuffer.commit`): length, write
                cursor, episode count, sampler generator, SHA-1 of the rows
``logs``        the row count of every CSV
``hooks``       each training hook's ``state_dict()`` (the best score behind ``best.pt``)
``checkpoints`` the resumable checkpoints kept, by replay commit
=============== =================================================================================

Checkpoints are written at points of the loop that an uninterrupted run and a
resumed one both pass through in the same state, so that (on the CPU, with
``compile=false``) a resumed run writes the same rows as one never stopped. A
resumed run returns the training env to the middle of its episode by restoring
the env's random state from the episode's start and replaying the recorded
actions (the observations must come out the same). The replay is committed
before the checkpoint is written; the checkpoint file, renamed into place
atomically, is the commit record.

A run directory is held by one process at a time (:func:`hold`): a second
command resuming the same run while the first still trains is refused
instead of writing into the same replay and logs.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, open_dict

from tdmpc2.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tdmpc2.config import flatten, to_container
from tdmpc2.seeding import global_rng_state, set_global_rng_state

try:
    import fcntl
except ImportError:  # not on POSIX: run directories are not locked
    fcntl = None

#: Config keys that may differ between a run and its resumption: when the run stops, what it logs
#: (trackers, videos), evaluates and keeps, and how it computes. Every other key (derived ones included)
#: must match. ``wandb`` stands for its whole group (``wandb.project``, ``wandb.mode``, ...).
#: ``buffer_capacity`` (derived from ``steps``) keeps the run's value: the replay on disk has that size.
MAY_CHANGE = ("steps", "train_minutes", "eval_episodes", "eval_freq", "log_freq", "save_freq", "keep_checkpoints",
              "analysis_freq", "threads", "device", "compile", "precision", "precision_reason", "resume",
              "save_video", "loggers", "wandb")

#: The exit code of a run stopped by SIGTERM or SIGINT after writing a resumable checkpoint
#: (``EX_TEMPFAIL``: try again later), for requeue scripts.
EXIT_STOPPED = 75

_FORMAT = 1
_RUN_FILES = ("config.yaml", "*.csv", "*.pt", "replay")
_LOCK = ".lock"


class ResumeError(ValueError):
    """A run cannot be resumed as asked (nothing to resume, a config that differs, an env that does not replay)."""


# -- writing ------------------------------------------------------------------

def save(trainer, name: str, episode=None, done: bool = True) -> Path:
    """Write ``<run_dir>/<name>.pt``, resumable from this point of the loop; return its path.

    ``episode`` is the loop's episode recorder and ``done`` whether that episode
    has ended. The agent's weights are checked first (no checkpoint of a
    non-finite model is written), then the replay is committed and the file
    written atomically. Periodic checkpoints beyond ``keep_checkpoints`` are
    then deleted, with the replay's undo logs only they needed.
    """
    payload = trainer.checkpoint_payload()
    trainer.logger.flush()  # the trackers hold every row up to the checkpoint: a resumed run does not send them again
    commit = trainer.buffer.commit()
    between_episodes = done or episode is None or not len(episode)
    payload["resume"] = {
        "format": _FORMAT,
        "trainer": trainer.state_dict(),
        "loop": {"episode": None if episode is None else episode.state_dict(), "done": bool(done)},
        "envs": {"train": trainer.env.rng_state() if between_episodes else trainer.env.episode_start_state,
                 "eval": trainer.eval_env.rng_state()},
        "rng": global_rng_state(),
        "replay": commit,
        "logs": trainer.logger.row_counts(),
        "hooks": {_hook_key(i, h): h.state_dict() for i, h in enumerate(trainer.hooks) if hasattr(h, "state_dict")},
        "checkpoints": {**trainer.checkpoints, name: commit.get("serial", 0)},
    }
    try:
        path = save_checkpoint(trainer.run_dir / f"{name}.pt", payload)
    except OSError as err:
        raise OSError(err.errno, f"{err.strerror or err} while writing {trainer.run_dir / name}.pt") from err
    trainer.checkpoints = payload["resume"]["checkpoints"]
    _prune(trainer)
    return path


def _hook_key(index: int, hook) -> str:
    return f"{index}:{type(hook).__name__}"


def _step_of(path: Path) -> int:
    try:
        return int(path.stem.split("_", 1)[1])
    except (IndexError, ValueError):
        return -1


def _prune(trainer) -> None:
    """Delete periodic checkpoints beyond ``keep_checkpoints`` (0: keep all) and undo logs no kept checkpoint needs."""
    keep = trainer.cfg.get("keep_checkpoints", 0)
    periodic = sorted((p for p in trainer.run_dir.glob("step_*.pt") if _step_of(p) >= 0), key=_step_of)
    if keep:
        for path in periodic[:-keep]:
            path.unlink(missing_ok=True)
    trainer.checkpoints = {n: s for n, s in trainer.checkpoints.items() if (trainer.run_dir / f"{n}.pt").exists()}
    if trainer.checkpoints:
        trainer.buffer.forget_commits_before(min(trainer.checkpoints.values()))


# -- holding a run directory ---------------------------------------------------

@contextlib.contextmanager
def hold(run_dir: str | Path):
    """Return a context manager under which this process alone uses ``run_dir`` (a no-op if it does not exist yet).

    The hold is an exclusive ``flock`` on ``<run_dir>/.lock``, which holds the
    holder's pid; the kernel releases it when the holder exits, killed or not,
    so a dead run never blocks its own resumption. Raises :class:`ResumeError`
    naming the holder's pid if another process holds the directory.
    """
    run_dir = Path(run_dir)
    if fcntl is None or not run_dir.is_dir():
        yield
        return
    with open(run_dir / _LOCK, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            raise ResumeError(f"{run_dir} is in use by another process (pid {holder}): wait for it to end, or stop it "
                              f"(SIGTERM writes a resumable checkpoint) and resume then") from None
        try:
            lock.truncate(0)
            lock.write(f"{os.getpid()}\n")
            lock.flush()
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# -- finding what to resume ---------------------------------------------------

def _candidates(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.glob("step_*.pt") if _step_of(p) >= 0] + [p for p in [run_dir / "final.pt"] if p.exists()]


def newest_checkpoint(run_dir: str | Path, log=print) -> Path | None:
    """Return the newest readable resumable checkpoint in ``run_dir`` (by replay commit), or None.

    A candidate that cannot be read (truncated, damaged) is renamed to
    ``<name>.corrupt`` with a message through ``log``, and the next newest is taken.
    """
    found = []
    for path in _candidates(Path(run_dir)):
        try:
            payload = load_checkpoint(path, mmap=True)
        except CheckpointError as err:
            corrupt = path.with_name(path.name + ".corrupt")
            path.rename(corrupt)
            log(f"skipping {path.name}: {err}; renamed to {corrupt.name}")
            continue
        if "resume" in payload:
            found.append((payload["resume"]["replay"].get("serial", 0), payload["step"], path))
    return max(found)[2] if found else None


def locate(resume, default_dir: str | Path, log=print) -> tuple[Path, Path | None]:
    """Return ``(run directory, checkpoint to resume from or None)`` for the config value ``resume``.

    ``resume`` null/false: a new run in ``default_dir``, which must not hold
    one already. ``true``: the run in ``default_dir`` if it has a resumable
    checkpoint; otherwise a new run there (the files of an attempt that died
    before its first checkpoint are removed; checkpoints without resume state
    are an error). A path: that run directory, which must hold a resumable
    checkpoint. Raises :class:`ResumeError`.
    """
    default_dir = Path(default_dir)
    if resume is None or resume is False:
        _check_new(default_dir)
        return default_dir, None
    run_dir = default_dir if resume is True else Path(resume)
    if not run_dir.is_dir():
        if resume is True:
            return run_dir, None
        raise ResumeError(f"resume={resume}: there is no run directory {run_dir}")
    checkpoint = newest_checkpoint(run_dir, log)
    if checkpoint is not None:
        return run_dir, checkpoint
    if resume is not True:
        raise ResumeError(f"resume={resume}: {run_dir} holds no resumable checkpoint (step_<N>.pt or final.pt written "
                          f"with resume state); nothing to resume")
    older = sorted(p.name for p in _candidates(run_dir))
    if older:
        raise ResumeError(f"{run_dir} holds checkpoints without resume state ({', '.join(older)}), which cannot be "
                          f"continued; choose another hydra.run.dir")
    leftovers = _run_files(run_dir)
    if leftovers:
        log(f"{run_dir} holds no resumable checkpoint: starting a new run there (removing {', '.join(leftovers)})")
        for name in leftovers:
            path = run_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return run_dir, None


def finished(checkpoint: str | Path, payload: dict, cfg) -> bool:
    """Return whether ``checkpoint`` is the ``final.pt`` of a run with nothing left to do under ``cfg``.

    A finished run continues only when ``steps`` or ``train_minutes`` was raised past where it ended.
    """
    if Path(checkpoint).name != "final.pt":
        return False
    out_of_time = cfg.train_minutes is not None and payload["elapsed"] >= 60 * cfg.train_minutes
    return payload["step"] >= cfg.steps or out_of_time


def _run_files(run_dir: Path) -> list[str]:
    return sorted({p.name for pattern in _RUN_FILES for p in run_dir.glob(pattern)})


def _check_new(run_dir: Path) -> None:
    found = _run_files(run_dir) if run_dir.is_dir() else []
    if found:
        raise ResumeError(f"{run_dir} already holds a run ({', '.join(found[:5])}); continue it with resume=true, "
                          f"or choose another hydra.run.dir")


# -- the config ----------------------------------------------------------------

def merge_config(saved: dict, cfg: DictConfig) -> DictConfig:
    """Return ``cfg`` (resolved) for continuing a run whose checkpoint holds the resolved config ``saved``.

    Keys in :data:`MAY_CHANGE` take ``cfg``'s values; ``buffer_capacity`` keeps
    the run's. Raises :class:`ResumeError` listing every other key whose value
    differs, with both values.
    """
    old, new = flatten(saved), flatten(to_container(cfg))
    absent = "(absent)"
    differ = [k for k in sorted(set(old) | set(new))
              if k.split(".")[0] not in MAY_CHANGE and k != "buffer_capacity" and old.get(k, absent) != new.get(k, absent)]
    if differ:
        lines = [f"  {k}: the run has {old.get(k, absent)!r}, this command {new.get(k, absent)!r}" for k in differ]
        raise ResumeError("the config differs from the run being resumed:\n" + "\n".join(lines)
                          + f"\nonly these keys may change on resume: {', '.join(MAY_CHANGE)}")
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.buffer_capacity = saved["buffer_capacity"]
    return cfg


# -- restoring -----------------------------------------------------------------

def restore(trainer, payload: dict, path: str | Path = "checkpoint") -> str:
    """Return ``trainer`` (new, built from the run's config) to the checkpoint ``payload``; return a one-line summary.

    Restores the agent, the loop's counters, the replay (rolled back to the
    commit and checked against its SHA-1), the CSVs (cut to the recorded rows),
    the hooks, the environments (the training env replays the episode in
    progress) and, last, the global generators. Raises :class:`ResumeError` if
    the checkpoint has no resume state or the env does not replay identically,
    and :class:`~tdmpc2.replay_files.ReplayFilesError` if the replay cannot be restored.
    """
    name = Path(path).name
    state = payload.get("resume")
    if state is None:
        raise ResumeError(f"{name} was written without resume state (best.pt, or an older version); it cannot be resumed")
    if state["format"] != _FORMAT:
        raise ResumeError(f"{name} has resume format {state['format']}; this code reads format {_FORMAT}")
    _remove_temporaries(trainer.run_dir)
    trainer.agent.load_state_dict(payload["agent"])
    trainer.load_state_dict(state["trainer"])
    rolled_back = trainer.buffer.restore(state["replay"])
    trainer.logger.restore(state["logs"])
    for i, hook in enumerate(trainer.hooks):
        key = _hook_key(i, hook)
        if hasattr(hook, "load_state_dict") and key in state["hooks"]:
            hook.load_state_dict(state["hooks"][key])
    trainer.eval_env.set_rng_state(state["envs"]["eval"])
    loop = state["loop"]
    _return_env(trainer.env, state["envs"]["train"], loop, name)
    trainer.resume_loop = loop if loop["episode"] is not None else None
    # Continuing from final.pt leaves it behind: the undo logs are kept for the periodic checkpoints only.
    trainer.checkpoints = {n: s for n, s in state["checkpoints"].items() if not (n == "final" and name == "final.pt")}
    set_global_rng_state(state["rng"])
    replay = state["replay"]
    return (f"resumed from {name}: step {payload['step']:,}, {payload['updates']:,} updates, "
            f"{replay['length']:,} replay rows ({rolled_back:,} put back from undo logs; SHA-1 "
            f"{str(replay['hash'])[:12]} matches), "
            f"{payload['elapsed'] / 60:.1f} min of training spent")


def _return_env(env, env_state: dict, loop: dict, name: str) -> None:
    """Put the training env where the checkpoint left it: between episodes, or mid-episode by replaying its actions."""
    env.set_rng_state(env_state)
    episode = loop["episode"]
    if loop["done"] or episode is None or not episode["obs"]:
        return
    obs, _ = env.reset()
    steps = [(obs, None)] + [(env.step(action)[0:2]) for action in episode["action"][1:]]
    for t, ((got, reward), expected, recorded) in enumerate(zip(steps, episode["obs"], episode["reward"])):
        if not np.array_equal(got, expected) or (t and float(reward) != recorded):
            raise ResumeError(f"{name}: the environment did not replay the interrupted episode identically (step {t}); "
                              f"it is not deterministic given its random state, so this run cannot be resumed exactly")


def _remove_temporaries(run_dir: Path) -> None:
    """Delete the temporary files of writes a killed run left unfinished."""
    for path in run_dir.glob(".*.tmp"):
        path.unlink(missing_ok=True)
