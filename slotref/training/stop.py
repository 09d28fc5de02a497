"""Ctrl-C and SIGTERM during training: finish the step, save, stop."""

from __future__ import annotations

import signal
import threading


class StopRequest:
    """Ctrl-C or SIGTERM finishes the current step, saves a checkpoint, then stops; a second one stops
    at once, without saving (the last checkpoint, written whole or not at all, is kept)."""

    SIGNALS = {signal.SIGINT: "interrupted (Ctrl-C)", signal.SIGTERM: "terminated (SIGTERM)"}

    def __init__(self):
        self.requested = False
        self.reason = "interrupted"
        self._previous = {}

    def _handler(self, signum, frame):
        if self.requested:
            self._restore()
            raise KeyboardInterrupt(f"{self.SIGNALS.get(signum, 'stopped')} a second time: stopped at once, "
                                    "without saving the step in progress; checkpoint.h5 holds the last saved step")
        self.requested = True
        self.reason = self.SIGNALS.get(signum, "stopped")

    def _restore(self):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        self._restore()
        return False
