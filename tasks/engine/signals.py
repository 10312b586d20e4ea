"""Ctrl-C / SIGTERM during training set a flag; the loop stops at the next step boundary.

Raising ``KeyboardInterrupt`` wherever the signal lands can split an optimiser step (the batch is
then applied twice after ``--resume``) or save BatchNorm statistics of a batch that is replayed.
A flag read between steps cannot. A second signal aborts at once, without a checkpoint.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Iterator

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopFlag:
    """Set by a signal (or by :meth:`set`); read by the loop between steps."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def __bool__(self) -> bool:
        return self.reason is not None

    def set(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason


@contextlib.contextmanager
def stop_on_signals(flag: StopFlag) -> Iterator[StopFlag]:
    """Within the block, SIGINT/SIGTERM set ``flag``; a second one raises ``KeyboardInterrupt``."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers need the main thread
        yield flag
        return

    def handler(signum: int, frame) -> None:
        if flag:
            raise KeyboardInterrupt
        flag.set(signal.Signals(signum).name)
        log.warning("%s: stopping after this step and saving a checkpoint (send it again to abort "
                    "without saving)", flag.reason)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def ignore_signals_in_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: the main process decides when to stop, so a terminal's Ctrl-C
    (sent to the whole process group) or ``timeout``'s SIGTERM must not kill a worker and print
    its traceback; the workers are shut down when the main process drops the loader."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
