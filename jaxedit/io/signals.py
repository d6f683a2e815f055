"""SIGINT and SIGTERM deferred to a safe point, so a long command never stops half-way through a write.

While :class:`DeferredSignals` is active a signal only records itself; the command calls
:meth:`~DeferredSignals.check` between units of work (a compiled program, a chunk, a file, a
training step), where SIGINT raises ``KeyboardInterrupt`` (the CLI exits 130) and SIGTERM
``SystemExit(143)``. A second signal raises at once. (A signal cannot stop a compiled program
that is running: Python sees it when the program returns.)
"""

from __future__ import annotations

import signal
import threading
from typing import Any


class DeferredSignals:
    """Context manager: SIGINT/SIGTERM set ``requested`` instead of raising (main thread only)."""

    def __init__(self):
        self.requested: signal.Signals | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "DeferredSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, frame) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum)

    def raise_requested(self) -> None:
        """Raise for the recorded signal: ``KeyboardInterrupt`` (SIGINT) or ``SystemExit(143)`` (SIGTERM)."""
        if self.requested == signal.SIGINT:
            raise KeyboardInterrupt
        if self.requested is not None:
            raise SystemExit(128 + self.requested)

    def check(self) -> None:
        """A safe point: stop here if a signal came."""
        self.raise_requested()

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
