"""One progress bar over the whole run: environment steps out of ``steps``, or minutes out of ``train_minutes``.

The bar shows the phase (seeding, pretraining, training, evaluating), the
fraction done, the time left, the environment step, the updates and their
rate. It is drawn only on a terminal: in CI or a Slurm log the periodic log
lines say the same.
"""
from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from tqdm import tqdm

_MINUTES_FORMAT = "{desc:<11} {percentage:3.0f}%|{bar}| {n:.1f}/{total:g} min [{elapsed}<{remaining}{postfix}]"
_STEPS_FORMAT = "{desc:<11} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def _width(file: TextIO) -> int:
    try:
        return os.get_terminal_size(file.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


def on_terminal() -> bool:
    """Return whether both stdout and stderr are terminals (the bar is drawn on stderr, log lines on stdout)."""
    return sys.stdout.isatty() and sys.stderr.isatty()


class RunProgress:
    """The run's bar; every call is a no-op when ``enabled`` is false.

    ``tick`` is cheap enough to call at every environment step and update: it
    redraws at most once per ``interval`` seconds. A resumed run's bar starts
    at the run's ``step``, ``updates`` and ``elapsed`` seconds, so that its
    rate and time left count only what this process does.
    """

    def __init__(self, steps: int, train_minutes: float | None, enabled: bool, phase: str = "",
                 file: TextIO | None = None, interval: float = 0.5, step: int = 0, updates: int = 0,
                 elapsed: float = 0.0):
        self.minutes = train_minutes
        self.interval = interval
        self._bar = None
        if enabled:
            file = file if file is not None else sys.stderr
            # Follow the terminal's size; tqdm draws nothing on a terminal that reports none (size 0x0).
            sized = _width(file) > 0
            common = dict(file=file, mininterval=0, miniters=1, dynamic_ncols=sized, ncols=None if sized else 100,
                          nrows=None if sized else 24, desc=phase, leave=True)
            if train_minutes is not None:
                self._bar = tqdm(total=float(train_minutes), initial=min(elapsed / 60.0, float(train_minutes)),
                                 bar_format=_MINUTES_FORMAT, **common)
            else:
                self._bar = tqdm(total=int(steps), initial=min(int(step), int(steps)), unit="step", unit_scale=False,
                                 bar_format=_STEPS_FORMAT, **common)
        self._next_draw = 0.0
        self._last = (time.monotonic(), updates)  # (time, updates) of the last rate measurement
        self._rate: float | None = None

    @property
    def enabled(self) -> bool:
        """Return whether the bar is drawn."""
        return self._bar is not None

    def phase(self, name: str) -> None:
        """Show ``name`` (seeding, pretraining, training, evaluating) as the bar's label, redrawn now."""
        if self._bar is not None:
            self._bar.set_description_str(name, refresh=True)

    def tick(self, step: int, updates: int, elapsed: float, force: bool = False) -> None:
        """Advance the bar to environment step ``step``, ``updates`` updates and ``elapsed`` seconds of training."""
        if self._bar is None:
            return
        now = time.monotonic()
        if not force and now < self._next_draw:
            return
        self._next_draw = now + self.interval
        last_time, last_updates = self._last
        if now - last_time >= 1.0:
            current = (updates - last_updates) / (now - last_time)
            self._rate = current if self._rate is None else 0.3 * current + 0.7 * self._rate
            self._last = (now, updates)
        rate = "" if self._rate is None else f", {self._rate:.1f} upd/s"
        if self.minutes is not None:
            target, postfix = min(elapsed / 60.0, self.minutes), f"step {step:,}, {updates:,} updates{rate}"
        else:
            target, postfix = step, f"{updates:,} updates{rate}"
        self._bar.set_postfix_str(postfix, refresh=False)
        self._bar.update(target - self._bar.n)

    def close(self) -> None:
        """Remove nothing, stop drawing: the last state of the bar stays on screen."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
