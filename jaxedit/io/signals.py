"""SIGINT and SIGTERM deferred to a safe point, so a long command never stops half-way through a write.

While :class:`DeferredSignals` is active a signal only records itself; the command calls
:meth:`~DeferredSignals.check` between units of work (a compiled program, a chunk, a file, a
training step), where SIGINT raises ``KeyboardInterrupt`` (the CLI exits 130) and SIGTERM
``SystemExit(143)``. A second signal raises at once. Contexts nest (a trainer's inside the CLI's): a signal recorded by
either is seen by both. (A signal cannot stop a compiled program
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
            self.requested = self._outer().requested if self._outer() else None  # a signal that came before
        return self

    def _outer(self) -> "DeferredSignals | None":
        """The enclosing DeferredSignals (nested: the CLI's around a trainer's), if any."""
        outer = getattr(self._old.get(signal.SIGINT), "__self__", None)
        return outer if isinstance(outer, DeferredSignals) else None

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
        outer = self._outer()
        if outer is not None and outer.requested is None:
            outer.requested = self.requested  # the enclosing context still sees it
        for sig, old in self._old.items():
            signal.signal(sig, old)
