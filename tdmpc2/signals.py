"""Stopping a run cleanly on SIGTERM or SIGINT (a cluster's preemption, Ctrl-C)."""
from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def stop_on_signals(request_stop: Callable[[str], None],
                    signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """Within the block, the first SIGTERM or SIGINT calls ``request_stop(name)``; yields nothing.

    A second signal stops at once: SIGINT raises KeyboardInterrupt, SIGTERM
    takes its default action (checkpoint writes are atomic, so nothing
    written is damaged). The previous handlers are restored on exit. Must be
    entered in the main thread.
    """
    received: list[str] = []

    def handler(signum: int, frame) -> None:
        if received:
            signal.signal(signum, signal.SIG_DFL)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        received.append(signal.Signals(signum).name)
        request_stop(received[0])

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
