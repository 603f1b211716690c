"""Runs stopped for real: ``train.py`` in a subprocess gets SIGKILL in the middle of training, SIGKILL while it
writes a checkpoint, or SIGTERM; each is resumed and must end with the rows an uninterrupted run writes.

The run is tiny stock TD-MPC2 on the counting task (16x16 frames), with a
60-row replay that wraps many times, so every resume rolls the replay back
through its undo logs. Killing while a checkpoint is written uses the test
hook ``TDMPC2_TEST_PAUSE_BEFORE_RENAME=step_160.pt:60`` (tdmpc2/checkpoint.py):
that save waits, its temporary file complete, before the rename.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from tdmpc2 import resume
from tdmpc2.buffer import EpisodeBuffer
from tdmpc2.checkpoint import PAUSE_ENV, load_checkpoint

RUN = ("task=counting", "variant=stock", "size=none", "aux=none", "counting.image_size=16", "counting.max_count=4",
       "counting.target=2", "conv_padding=true", "num_channels=8", "model_size=1", "enc_dim=32", "mlp_dim=32",
       "latent_dim=16", "num_q=2", "batch_size=8", "mpc=false", "steps=240", "seed_steps=40", "pretrain_updates=12",
       "buffer_size=60", "log_freq=10", "eval_freq=80", "eval_episodes=2", "save_freq=40", "threads=1", "device=cpu",
       "compile=false", "precision=fp32")
WALL_CLOCK = ["elapsed", "steps_per_second", "updates_per_second"]


def launch(repo, run_dir, *extra: str, env: dict | None = None) -> subprocess.Popen:
    """Start ``train.py`` for the tiny run in ``run_dir``; its output goes to ``run_dir``'s sibling ``.log`` file."""
    return run_logged([sys.executable, "train.py", *RUN, f"hydra.run.dir={run_dir}", *extra], repo, run_dir, env)


def run_logged(command: list[str], repo, run_dir, env: dict | None = None) -> subprocess.Popen:
    """Start ``command`` in the repository, appending its output to ``<run_dir>.log``."""
    with open(f"{run_dir}.log", "a") as log:
        return subprocess.Popen(command, cwd=repo, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})


def wait_for(condition, process: subprocess.Popen, run_dir, timeout: float = 240) -> None:
    """Poll ``condition()`` until it holds; fail if the run ends first or it takes longer than ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the run ended (code {process.returncode}) before the kill:\n{read_log(run_dir)[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"waited {timeout} s in vain:\n{read_log(run_dir)[-3000:]}")
        time.sleep(0.02)


def read_log(run_dir) -> str:
    with open(f"{run_dir}.log") as f:
        return f.read()


def train_rows_after(run_dir, step: int):
    """Return a condition: train.csv has a row past ``step``."""
    def condition() -> bool:
        try:
            return (pd.read_csv(run_dir / "train.csv")["step"] > step).any()
        except (FileNotFoundError, pd.errors.EmptyDataError, KeyError):
            return False
    return condition


def finish(repo, run_dir, *extra: str) -> str:
    """Resume the run in ``run_dir`` to its end; return its output."""
    process = launch(repo, run_dir, "resume=true", *extra)
    assert process.wait(timeout=600) == 0, read_log(run_dir)[-3000:]
    return read_log(run_dir)


def rows(run_dir, kind: str) -> pd.DataFrame:
    return pd.read_csv(run_dir / f"{kind}.csv", float_precision="round_trip").drop(columns=WALL_CLOCK, errors="ignore")


def assert_same_rows(reference, run_dir) -> None:
    for kind in ("train", "eval"):
        pd.testing.assert_frame_equal(rows(reference, kind), rows(run_dir, kind), check_exact=True)


def check_the_checkpoint_resume_takes(run_dir, tmp_path, expected: str) -> dict:
    """Assert the newest checkpoint is ``expected`` and its replay, restored on a copy, has the recorded length and hash."""
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    newest = resume.newest_checkpoint(copy)
    assert newest.name == expected
    payload = load_checkpoint(newest)
    replay = payload["resume"]["replay"]
    buffer = EpisodeBuffer(replay["capacity"], 8, 3, directory=copy / "replay")
    buffer.restore(replay)
    assert len(buffer) == replay["length"] == 60 and buffer.num_episodes == replay["num_episodes"]
    assert buffer.content_hash() == replay["hash"]
    assert payload["step"] == int(expected[5:-3]) and payload["updates"] == payload["step"] - 40 + 12 - 1
    return payload


@pytest.fixture(scope="module")
def reference(builders, tmp_path_factory):
    """Return the directory of the run trained without interruption."""
    run_dir = tmp_path_factory.mktemp("kill") / "reference"
    assert launch(builders.repo_root, run_dir).wait(timeout=600) == 0, read_log(run_dir)[-3000:]
    assert rows(run_dir, "train")["updates"].tolist() == list(range(10, 212, 10))
    assert rows(run_dir, "eval")["step"].tolist() == [80, 160, 240]
    return run_dir


def test_sigkill_in_the_middle_of_training(builders, reference, tmp_path):
    run_dir = tmp_path / "run"
    process = launch(builders.repo_root, run_dir)
    wait_for(lambda: (run_dir / "step_120.pt").exists(), process, run_dir)
    wait_for(train_rows_after(run_dir, 135), process, run_dir)  # past the checkpoint, replay rows overwritten
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    assert not (run_dir / "final.pt").exists()
    payload = check_the_checkpoint_resume_takes(run_dir, tmp_path, "step_120.pt")
    output = finish(builders.repo_root, run_dir)
    assert f"resumed from step_120.pt: step 120, {payload['updates']} updates, 60 replay rows" in output
    assert_same_rows(reference, run_dir)
    assert sorted(p.name for p in run_dir.glob("*.pt")) == ["final.pt", "step_200.pt", "step_240.pt"]


def test_sigkill_while_a_checkpoint_is_written(builders, reference, tmp_path):
    run_dir = tmp_path / "run"
    process = launch(builders.repo_root, run_dir, env={PAUSE_ENV: "step_160.pt:120"})
    wait_for(lambda: any(run_dir.glob(".step_160.pt.*.tmp")), process, run_dir)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    assert not (run_dir / "step_160.pt").exists()
    check_the_checkpoint_resume_takes(run_dir, tmp_path, "step_120.pt")
    output = finish(builders.repo_root, run_dir)
    restored = int(output.split("replay rows (")[1].split(" put back")[0].replace(",", ""))
    assert restored > 0  # the commit of step_160 had overwritten rows step_120 needs
    assert not list(run_dir.glob(".*.tmp"))
    assert_same_rows(reference, run_dir)


def test_sigterm_writes_a_checkpoint_and_exits_75_with_the_resume_command(builders, reference, tmp_path):
    run_dir = tmp_path / "run"
    process = launch(builders.repo_root, run_dir)
    wait_for(train_rows_after(run_dir, 95), process, run_dir)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == resume.EXIT_STOPPED
    output = read_log(run_dir)
    stop = output[output.index("stopped by SIGTERM at step"):]
    command = shlex.split(stop.split("resume with: ")[1].splitlines()[0])
    assert command[:2] == ["python", "train.py"] and command[-1] == f"resume={run_dir}"
    step = int(stop.split("at step ")[1].split()[0].rstrip(";").replace(",", ""))
    assert (run_dir / f"step_{step}.pt").exists() and not (run_dir / "final.pt").exists()
    process = run_logged([sys.executable, *command[1:]], builders.repo_root, run_dir)
    assert process.wait(timeout=600) == 0, read_log(run_dir)[-3000:]
    assert f"resumed from step_{step}.pt" in read_log(run_dir)
    assert_same_rows(reference, run_dir)


def test_tensorboard_and_videos_carry_on_after_a_sigkill_and_resume(builders, tmp_path):
    """Killed past step_120.pt, resumed: TensorBoard ends up with exactly the CSV rows (the rows written twice
    replace the killed run's copies), and the evaluations after the resume write their videos."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, tracked = tmp_path / "run", ("loggers=[tensorboard]", "save_video=true")
    process = launch(builders.repo_root, run_dir, *tracked)
    wait_for(lambda: (run_dir / "step_120.pt").exists(), process, run_dir)
    wait_for(train_rows_after(run_dir, 125), process, run_dir)  # rows past the checkpoint reach TensorBoard
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    videos_before = {p.name for p in (run_dir / "videos").glob("*.mp4")}
    assert "eval_step_80.mp4" in videos_before and "eval_step_160.mp4" not in videos_before
    assert resume.newest_checkpoint(run_dir).name == "step_120.pt"
    resumed_at = load_checkpoint(run_dir / "step_120.pt")["updates"]
    finish(builders.repo_root, run_dir, *tracked)
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one per process

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    for kind, column in (("train", "total_loss"), ("eval", "episode_reward")):
        table = pd.read_csv(run_dir / f"{kind}.csv")
        logged = [(e.step, e.value) for e in events.Scalars(f"{kind}/{column}")]
        assert [step for step, _ in logged] == table["updates"].tolist(), kind
        assert [value for _, value in logged] == pytest.approx(table[column].tolist(), rel=1e-6), kind
        assert max(step for step, _ in logged) > resumed_at  # written after the resume
    evaluations = pd.read_csv(run_dir / "eval.csv")
    assert [e.step for e in events.Images("eval/video")] == evaluations["updates"].tolist()
    assert evaluations["step"].tolist() == [80, 160, 240]
    assert {p.name for p in (run_dir / "videos").iterdir()} == {f"eval_step_{s}.mp4" for s in (80, 160, 240)}
