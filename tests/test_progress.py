"""Facts about the run's progress bar (tdmpc2/progress.py)."""
from __future__ import annotations

import io

import pytest

from tdmpc2 import progress
from tdmpc2.progress import RunProgress, on_terminal


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(progress.time, "monotonic", fake)
    return fake


def last_line(out: io.StringIO) -> str:
    """Return the bar as last drawn."""
    return out.getvalue().replace("\n", "\r").rstrip("\r").split("\r")[-1]


def test_bar_counts_environment_steps_with_updates_and_their_rate(clock):
    out = io.StringIO()
    bar = RunProgress(steps=1000, train_minutes=None, enabled=True, phase="seeding", file=out)
    bar.tick(200, 0, 10.0)
    assert "seeding" in last_line(out) and "200/1000 steps" in last_line(out) and "0 updates" in last_line(out)
    clock.now += 2.0
    bar.phase("training")
    bar.tick(400, 20, 12.0)
    line = last_line(out)
    assert line.startswith("training") and " 40%|" in line and "400/1000 steps" in line
    assert "20 updates, 10.0 upd/s" in line  # 20 updates in 2 s
    assert "step/s" in line and "<" in line  # tqdm's rate and time left
    bar.close()
    assert out.getvalue().endswith("\n")  # the final state stays on screen


def test_bar_counts_minutes_under_train_minutes(clock):
    out = io.StringIO()
    bar = RunProgress(steps=10**6, train_minutes=10, enabled=True, phase="training", file=out)
    bar.tick(123_456, 1_500, 150.0)
    line = last_line(out)
    assert " 25%|" in line and "2.5/10 min" in line and "step 123,456, 1,500 updates" in line
    bar.tick(123_457, 1_501, 900.0, force=True)  # past the limit (a final evaluation) stays at 100%
    assert "10.0/10 min" in last_line(out)
    bar.close()


def test_a_resumed_runs_bar_starts_where_the_run_was(clock):
    out = io.StringIO()
    bar = RunProgress(steps=1000, train_minutes=None, enabled=True, phase="training", file=out,
                      step=600, updates=5_000, elapsed=300.0)
    assert "600/1000 steps" in last_line(out) and " 60%|" in last_line(out)
    clock.now += 2.0
    bar.tick(610, 5_020, 302.0)
    assert "610/1000 steps" in last_line(out) and "10.0 upd/s" in last_line(out)  # the rate counts new updates only
    bar.close()
    out = io.StringIO()
    RunProgress(steps=10**6, train_minutes=10, enabled=True, phase="training", file=out, step=5, elapsed=240.0).close()
    assert "4.0/10 min" in last_line(out)


def test_bar_redraws_at_most_once_per_interval(clock):
    out = io.StringIO()
    bar = RunProgress(steps=100, train_minutes=None, enabled=True, file=out, interval=0.5)
    bar.tick(1, 0, 0.0)
    drawn = out.getvalue()
    clock.now += 0.1
    bar.tick(2, 0, 0.1)
    assert out.getvalue() == drawn
    clock.now += 0.5
    bar.tick(3, 0, 0.6)
    assert "3/100 steps" in last_line(out)
    bar.tick(4, 0, 0.6, force=True)
    assert "4/100 steps" in last_line(out)


def test_a_disabled_bar_writes_nothing(clock):
    out = io.StringIO()
    bar = RunProgress(steps=100, train_minutes=None, enabled=False, file=out)
    bar.phase("training")
    bar.tick(50, 5, 1.0, force=True)
    bar.close()
    assert out.getvalue() == "" and not bar.enabled


def test_output_captured_by_a_file_is_not_a_terminal(capsys):
    assert on_terminal() is False
