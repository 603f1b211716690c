"""Facts about resuming a run in-process (tdmpc2/resume.py): a stopped run continues exactly, keys that may change,
where a run is found, which checkpoints are kept, and what a non-finite model leaves behind.

Runs are tiny stock TD-MPC2 agents on the counting task (16x16 frames, up to 4
objects): pixels, episodes of 1-4 steps, termination, and a replay small
enough to wrap several times, so commits roll undo logs back.
"""
from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys

import pandas as pd
import pytest
import torch

from envs import make_task_env
from tdmpc2 import resume
from tdmpc2.agent import NonFiniteLossError, NonFiniteWeightsError
from tdmpc2.buffer import EpisodeBuffer
from tdmpc2.checkpoint import load_checkpoint, save_checkpoint
from tdmpc2.config import ConfigError, resolve, to_container
from tdmpc2.logger import Logger
from tdmpc2.seeding import seed_everything
from tdmpc2.signals import stop_on_signals
from tdmpc2.trainer import OnlineTrainer

COUNTING = ("task=counting", "counting.image_size=16", "counting.max_count=4", "counting.target=2", "conv_padding=true",
            "num_channels=8", "batch_size=8", "device=cpu", "compile=false", "mpc=false", "steps=160", "seed_steps=40",
            "pretrain_updates=12", "buffer_size=60", "log_freq=10", "eval_freq=50", "eval_episodes=2", "save_freq=30",
            "keep_checkpoints=0")
#: Planning on, small: acting then depends on the plan's warm start and draws torch numbers.
PLANNING = ("mpc=true", "iterations=2", "num_samples=32", "num_elites=8", "num_pi_trajs=4")
#: Columns measured in wall-clock time, which differ between any two runs.
WALL_CLOCK = ["elapsed", "steps_per_second", "updates_per_second"]


class StopAt:
    """A training hook that asks the trainer to stop at one update, as a SIGTERM handler would."""

    def __init__(self, update: int | None):
        self.update = update

    def on_update(self, trainer) -> None:
        if trainer.agent.num_updates == self.update:
            trainer.request_stop("SIGTERM")

    def on_end(self, trainer) -> None:
        pass


def make_trainer(builders, run_dir, *overrides, stop_at: int | None = None, disk: bool = True) -> OnlineTrainer:
    """Return a new trainer for the tiny counting run in ``run_dir``, built as train.py builds one."""
    cfg = builders.compose_config(*builders.tiny_model, *COUNTING, *overrides)
    env, eval_env = make_task_env(cfg, cfg.seed), make_task_env(cfg, cfg.seed + 10_000)
    cfg = resolve(cfg, env.task_info)
    seed_everything(cfg.seed)
    agent = builders.make_agent(cfg, seed=cfg.seed)
    buffer = EpisodeBuffer(cfg.buffer_capacity, cfg.batch_size, cfg.horizon, seed=cfg.seed,
                           directory=run_dir / "replay" if disk else None)
    return OnlineTrainer(cfg, env, eval_env, agent, buffer, Logger(run_dir, quiet=True), run_dir, hooks=[StopAt(stop_at)])


def resume_trainer(builders, run_dir, *overrides, checkpoint=None, disk: bool = True) -> OnlineTrainer:
    """Return a new trainer restored from ``checkpoint`` (default: the newest in ``run_dir``)."""
    trainer = make_trainer(builders, run_dir, *overrides, disk=disk)
    path = checkpoint or resume.newest_checkpoint(run_dir)
    resume.restore(trainer, load_checkpoint(path), path)
    return trainer


def rows(run_dir, kind: str) -> pd.DataFrame:
    """Return ``<kind>.csv`` without its wall-clock columns."""
    return pd.read_csv(run_dir / f"{kind}.csv", float_precision="round_trip").drop(columns=WALL_CLOCK, errors="ignore")


def assert_same_rows(a, b) -> None:
    for kind in ("train", "eval"):
        pd.testing.assert_frame_equal(rows(a, kind), rows(b, kind), check_exact=True)


@pytest.fixture(scope="module")
def reference(builders, tmp_path_factory):
    """Return the directory of an uninterrupted run with planning (every periodic checkpoint kept)."""
    run_dir = tmp_path_factory.mktemp("reference")
    make_trainer(builders, run_dir, *PLANNING).train()
    return run_dir


def test_two_runs_with_the_same_seed_write_the_same_rows(builders, reference, tmp_path):
    make_trainer(builders, tmp_path, *PLANNING).train()
    assert_same_rows(reference, tmp_path)
    assert len(rows(reference, "train")) == 13 and rows(reference, "eval")["step"].tolist() == [50, 100, 150, 160]


@pytest.mark.parametrize("update", [5, 30], ids=["during-pretraining", "after-pretraining"])
def test_a_run_stopped_by_a_signal_continues_exactly(builders, reference, tmp_path, update):
    stopped = make_trainer(builders, tmp_path, *PLANNING, stop_at=update)
    stopped.train()
    assert stopped.stop_signal == "SIGTERM" and stopped.agent.num_updates == update
    assert not (tmp_path / "final.pt").exists()
    payload = load_checkpoint(tmp_path / f"step_{stopped.step}.pt")
    assert payload["updates"] == update and payload["resume"]["trainer"]["step_open"] == (update == 5)

    resumed = resume_trainer(builders, tmp_path, *PLANNING)
    assert resumed.agent.num_updates == update
    resumed.train()
    assert resumed.stop_signal is None and (tmp_path / "final.pt").exists()
    assert_same_rows(reference, tmp_path)


def test_a_signal_during_an_evaluation_reruns_it_after_the_resume(builders, reference, tmp_path):
    stopped = make_trainer(builders, tmp_path, *PLANNING)
    calls, step = [0], stopped.eval_env.step

    def counting_step(action):
        calls[0] += 1
        if calls[0] == 7:  # inside the second evaluation (step 100)
            stopped.request_stop("SIGINT")
        return step(action)

    stopped.eval_env.step = counting_step
    stopped.train()
    assert stopped.stop_signal == "SIGINT" and stopped.step == 100
    assert rows(tmp_path, "eval")["step"].tolist() == [50]  # the interrupted evaluation wrote no row
    resume_trainer(builders, tmp_path, *PLANNING).train()
    assert_same_rows(reference, tmp_path)


def test_a_resumed_runs_progress_bar_starts_at_the_restored_step(builders, tmp_path, monkeypatch):
    from tdmpc2 import trainer as trainer_module

    bars = []

    class RecordingBar:
        def __init__(self, steps, train_minutes, enabled, phase="", **start):
            bars.append({"phase": phase, **start, "ticks": []})

        def phase(self, name):
            pass

        def tick(self, step, updates, elapsed, force=False):
            bars[-1]["ticks"].append(step)

        def close(self):
            pass

    stopped = make_trainer(builders, tmp_path, stop_at=30)
    stopped.train()
    payload = load_checkpoint(tmp_path / f"step_{stopped.step}.pt")
    monkeypatch.setattr(trainer_module, "RunProgress", RecordingBar)
    resume_trainer(builders, tmp_path).train()
    placeholder, bar = bars  # the trainer's idle bar until train() starts, then the run's bar
    assert (bar["phase"], bar["step"], bar["updates"]) == ("training", stopped.step, 30)
    assert payload["elapsed"] <= bar["elapsed"] < payload["elapsed"] + 60
    assert bar["ticks"][0] >= stopped.step and bar["ticks"][-1] == 160


def test_resuming_an_older_checkpoint_rolls_the_replay_back_through_every_newer_commit(builders, reference, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    assert len(list((run_dir / "replay").glob("undo_*.log"))) >= 3
    trainer = resume_trainer(builders, run_dir, *PLANNING, checkpoint=run_dir / "step_60.pt")
    assert trainer.step == 60 and len(rows(run_dir, "train")) == len(rows(reference, "train")[lambda r: r.step < 60])
    trainer.train()
    assert_same_rows(reference, run_dir)


def test_a_replay_kept_in_memory_travels_in_the_checkpoint(builders, tmp_path):
    reference = tmp_path / "reference"
    make_trainer(builders, reference, disk=False).train()
    stopped = tmp_path / "stopped"
    make_trainer(builders, stopped, stop_at=40, disk=False).train()
    assert not (stopped / "replay").exists()
    resume_trainer(builders, stopped, disk=False).train()
    assert_same_rows(reference, stopped)


def test_keep_checkpoints_deletes_older_periodic_checkpoints_and_their_undo_logs(builders, tmp_path):
    trainer = make_trainer(builders, tmp_path, "keep_checkpoints=2")
    trainer.train()
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["final.pt", "step_120.pt", "step_150.pt"]
    kept = {load_checkpoint(tmp_path / n)["resume"]["replay"]["serial"] for n in ("step_120.pt", "step_150.pt")}
    logs = {int(p.stem.split("_")[1]) for p in (tmp_path / "replay").glob("undo_*.log")}
    assert logs and min(logs) >= min(kept)
    # The oldest kept checkpoint can still be resumed: its undo logs are all there.
    resume_trainer(builders, tmp_path, "keep_checkpoints=2", checkpoint=tmp_path / "step_120.pt")


# ---------------------------------------------------------------- non-finite values


def test_a_non_finite_loss_stops_the_run_and_leaves_the_last_checkpoint_resumable(builders, tmp_path, monkeypatch):
    trainer = make_trainer(builders, tmp_path)
    sample = trainer.buffer.sample

    def poisoned():
        batch = sample()
        if trainer.agent.num_updates >= 50:
            batch["reward"][1:] = float("nan")
        return batch

    monkeypatch.setattr(trainer.buffer, "sample", poisoned)
    with pytest.raises(NonFiniteLossError, match="non-finite model loss at update 50"):
        trainer.train()
    assert not (tmp_path / "final.pt").exists()
    newest = resume.newest_checkpoint(tmp_path)
    assert newest.name == "step_60.pt" and load_checkpoint(newest)["updates"] == 31
    resumed = resume_trainer(builders, tmp_path)
    resumed.train()
    assert resumed.step == 160 and (tmp_path / "final.pt").exists()


def test_a_model_with_non_finite_weights_is_never_written(builders, tmp_path):
    trainer = make_trainer(builders, tmp_path, "steps=50")
    trainer.train()
    final = (tmp_path / "final.pt").read_bytes()
    with torch.no_grad():
        next(trainer.agent.model.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match="non-finite values in model"):
        trainer.save("final")
    with pytest.raises(NonFiniteWeightsError):
        trainer.checkpoint_payload()  # what best.pt is written from
    assert (tmp_path / "final.pt").read_bytes() == final
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_full_disk_stops_the_run_and_keeps_the_checkpoints_already_written(builders, tmp_path, monkeypatch):
    trainer = make_trainer(builders, tmp_path)
    save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if obj["step"] == 90:
            f.write(b"PK\x03\x04 part of a zip")
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=r"No space left on device while writing .*step_90.pt"):
        trainer.train()
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["step_30.pt", "step_60.pt"]
    assert not list(tmp_path.glob(".*.tmp"))
    resumed = resume_trainer(builders, tmp_path)
    assert resumed.step == 60
    resumed.train()
    assert (tmp_path / "final.pt").exists()


# ---------------------------------------------------------------- the config of a resumed run


def resolved(builders, *overrides):
    cfg = builders.compose_config(*builders.tiny_model, *COUNTING, *overrides)
    return resolve(cfg, make_task_env(cfg, 0).task_info)


def test_keys_that_may_change_on_resume_are_taken_from_the_new_command(builders):
    saved = to_container(resolved(builders))
    cfg = resume.merge_config(saved, resolved(builders, "steps=400", "eval_freq=20", "train_minutes=5", "threads=2",
                                              "keep_checkpoints=3", "resume=true", "log_freq=5"))
    assert (cfg.steps, cfg.eval_freq, cfg.train_minutes, cfg.keep_checkpoints, cfg.log_freq) == (400, 20, 5, 3, 5)
    assert cfg.buffer_capacity == saved["buffer_capacity"] == 60  # the replay on disk keeps its size



def test_trackers_videos_and_precision_may_change_on_resume(builders):
    saved = to_container(resolved(builders))
    cfg = resume.merge_config(saved, resolved(builders, "save_video=true", "loggers=[tensorboard,wandb]",
                                              "wandb.project=other", "wandb.mode=offline", "wandb.name=renamed",
                                              "precision=fp32"))
    assert (cfg.save_video, list(cfg.loggers), cfg.wandb.project, cfg.wandb.name) == (
        True, ["tensorboard", "wandb"], "other", "renamed")


def test_other_differences_are_listed_with_both_values(builders):
    saved = to_container(resolved(builders))
    with pytest.raises(resume.ResumeError) as err:
        resume.merge_config(saved, resolved(builders, "seed=2", "lr=1e-3", "counting.target=3"))
    message = str(err.value)
    assert "seed: the run has 1, this command 2" in message and "lr: the run has 0.0003, this command 0.001" in message
    assert "counting.target: the run has 2, this command 3" in message and "steps" in message.splitlines()[-1]


@pytest.mark.parametrize("value", [0, 2.5, ""])
def test_bad_resume_values_are_config_errors(builders, value):
    with pytest.raises(ConfigError, match="allowed values: null or false"):
        resolved(builders, f"resume={value!r}" if value == "" else f"resume={value}")


def test_keep_checkpoints_must_be_a_non_negative_integer(builders):
    with pytest.raises(ConfigError, match="keep_checkpoints must be a non-negative integer"):
        resolved(builders, "keep_checkpoints=-1")


# ---------------------------------------------------------------- finding the run to resume


def test_a_new_run_refuses_a_directory_that_holds_one(tmp_path):
    (tmp_path / "config.yaml").write_text("task: counting\n")
    (tmp_path / "train.log").write_text("")
    with pytest.raises(resume.ResumeError, match="already holds a run .*config.yaml.*resume=true"):
        resume.locate(None, tmp_path)
    assert resume.locate(None, tmp_path / "new") == (tmp_path / "new", None)


def test_resume_true_without_a_checkpoint_starts_afresh_and_clears_the_dead_attempt(tmp_path):
    (tmp_path / "config.yaml").write_text("task: counting\n")
    (tmp_path / "train.csv").write_text("step\n1\n")
    (tmp_path / "replay" / "ring").mkdir(parents=True)
    messages = []
    assert resume.locate(True, tmp_path, messages.append) == (tmp_path, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [] and "starting a new run" in messages[0]
    with pytest.raises(resume.ResumeError, match="holds no resumable checkpoint"):
        resume.locate(str(tmp_path), tmp_path / "elsewhere")
    save_checkpoint(tmp_path / "final.pt", {"step": 5})
    with pytest.raises(resume.ResumeError, match=r"checkpoints without resume state \(final.pt\)"):
        resume.locate(True, tmp_path)  # a run from before resume state existed is not cleared away
    assert (tmp_path / "final.pt").exists()
    with pytest.raises(resume.ResumeError, match="there is no run directory"):
        resume.locate(str(tmp_path / "missing"), tmp_path)


def test_a_held_run_directory_is_refused_to_a_second_holder_and_free_after(tmp_path):
    with resume.hold(tmp_path):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
        with pytest.raises(resume.ResumeError, match=rf"in use by another process \(pid {os.getpid()}\)"):
            with resume.hold(tmp_path):
                pass
    with resume.hold(tmp_path):
        pass
    with resume.hold(tmp_path / "missing"):  # a run not started yet: nothing to hold
        assert not (tmp_path / "missing").exists()


HOLDER = "import sys, time; from tdmpc2 import resume\nwith resume.hold(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)"


def test_train_py_refuses_a_run_another_process_holds_and_a_killed_holder_frees_it(builders, tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], cwd=builders.repo_root,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = builders.run_train_py("task=pendulum", f"resume={tmp_path}")
        assert result.returncode == 2, result.stderr[-2000:]
        assert f"is in use by another process (pid {holder.pid})" in result.stderr
    finally:
        holder.kill()
        holder.wait()
    with resume.hold(tmp_path):  # the kernel released the killed holder's lock
        pass


def test_a_damaged_newest_checkpoint_is_set_aside_and_the_previous_one_resumed(builders, reference, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    (run_dir / "final.pt").unlink()
    data = (run_dir / "step_150.pt").read_bytes()
    (run_dir / "step_150.pt").write_bytes(data[: len(data) // 2])
    messages = []
    assert resume.locate(str(run_dir), tmp_path, messages.append) == (run_dir, run_dir / "step_120.pt")
    assert (run_dir / "step_150.pt.corrupt").exists() and "skipping step_150.pt" in messages[0]
    trainer = resume_trainer(builders, run_dir, *PLANNING)
    trainer.train()
    assert_same_rows(reference, run_dir)


def test_a_finished_run_continues_only_with_more_steps_or_minutes(builders, reference):
    payload = load_checkpoint(reference / "final.pt")
    assert resume.finished(reference / "final.pt", payload, resolved(builders))
    assert not resume.finished(reference / "final.pt", payload, resolved(builders, "steps=400"))
    assert resume.finished(reference / "final.pt", payload, resolved(builders, "steps=400", "train_minutes=1e-6"))
    assert not resume.finished(reference / "step_150.pt", load_checkpoint(reference / "step_150.pt"), resolved(builders))


def test_a_finished_run_trains_on_when_steps_are_raised(builders, reference, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    trainer = resume_trainer(builders, run_dir, *PLANNING, "steps=220")
    assert trainer.step == 160
    trainer.train()
    assert trainer.step == 220 and load_checkpoint(run_dir / "final.pt")["step"] == 220
    updates = rows(run_dir, "train")["updates"].tolist()
    assert updates == list(range(10, trainer.agent.num_updates + 1, 10))
    assert rows(run_dir, "eval")["step"].tolist() == [50, 100, 150, 160, 200, 220]


def test_best_pt_cannot_be_resumed(builders, tmp_path):
    trainer = make_trainer(builders, tmp_path, "steps=50")
    payload = trainer.checkpoint_payload()
    with pytest.raises(resume.ResumeError, match="without resume state"):
        resume.restore(make_trainer(builders, tmp_path / "other"), payload, tmp_path / "best.pt")


# ---------------------------------------------------------------- CSVs and signals


def test_the_logs_continue_from_the_recorded_row_counts(tmp_path):
    logger = Logger(tmp_path, quiet=True)
    for i in range(5):
        logger.log("train", {"step": i, "loss": 0.1 * i + 1e-17})
    logger.log("eval", {"step": 4, "reward": 1.0})
    counts = {"train": 3}
    logger.log("analysis", {"updates": 9})
    restored = Logger(tmp_path, quiet=True)
    restored.restore(counts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.csv"]
    restored.log("train", {"step": 3, "loss": 7.0})
    frame = pd.read_csv(tmp_path / "train.csv", float_precision="round_trip")
    assert frame["step"].tolist() == [0, 1, 2, 3] and frame["loss"].tolist() == [1e-17, 0.1 + 1e-17, 0.2 + 1e-17, 7.0]
    with pytest.raises(ValueError, match="holds 4 rows; the checkpoint recorded 9"):
        Logger(tmp_path, quiet=True).restore({"train": 9})


def test_signals_request_a_stop_and_a_second_one_stops_at_once():
    requests = []
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with stop_on_signals(requests.append):
            os.kill(os.getpid(), signal.SIGTERM)
            assert requests == ["SIGTERM"]
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is previous
