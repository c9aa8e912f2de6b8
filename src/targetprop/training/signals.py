"""Stopping a run cleanly on SIGINT or SIGTERM: :class:`SignalStop`.

While a run runs in the main thread, the first SIGINT or SIGTERM is only recorded; the loop
asks at every iteration boundary (all processes agreeing, under DDP), saves a checkpoint there
and ends the run as ``interrupted``. A second signal interrupts at once (``KeyboardInterrupt``),
without a checkpoint.
"""
from __future__ import annotations

import signal
import threading


class SignalStop:
    """While active (in the main thread): the first SIGINT or SIGTERM is recorded in ``signum``
    for the loop to stop at the next iteration boundary; a second raises ``KeyboardInterrupt`` at
    once. The previous handlers are restored on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = 0
        self._previous: dict = {}

    def __enter__(self) -> SignalStop:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                if signal.getsignal(s) is not signal.SIG_IGN:  # ignored (e.g. `cmd &` in a script): left so
                    self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
