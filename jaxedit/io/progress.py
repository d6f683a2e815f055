"""A tiny progress display for long jobs (no tqdm): one updating line on a TTY, plain lines otherwise.

    bar = Progress(total=1000, unit="kimg", desc="train-gan")
    bar.update(12.5, G=0.71, D=1.32)     # cheap to call often; redraws at most every `interval` s
    bar.write("checkpoint saved")        # a message that does not garble the bar
    bar.close()

On a TTY the line is redrawn in place (``\\r`` + erase to end of line) at most every 0.25 s;
on a pipe or file (a background run's log) a complete line is printed at most every
``interval`` seconds (default 30), so logs stay readable. The rate (``unit``/s) is measured
over a sliding window of recent updates, so it reflects the current speed after a resume or
a compile rather than the whole run's average.
"""

from __future__ import annotations

import collections
import math
import sys
import time
from typing import IO, Any


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


class Progress:
    """Progress of ``done`` out of ``total`` units, with rate, ETA and arbitrary scalar fields."""

    def __init__(self, total: float | None, unit: str = "it", desc: str = "", stream: IO[str] | None = None,
                 interval: float | None = None, window: float = 30.0, initial: float = 0.0):
        self.total = total
        self.unit = unit
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.interval = interval if interval is not None else (0.25 if self.tty else 30.0)
        self.window = window
        self.t0 = time.perf_counter()
        self.done = initial
        self.fields: dict[str, Any] = {}
        self._hist: collections.deque[tuple[float, float]] = collections.deque([(self.t0, initial)])
        self._last_draw = -math.inf
        self._line_len = 0
        self.closed = False

    # ------------------------------------------------------------------ state
    def rate(self) -> float:
        """Units per second over the sliding window (nan until two updates are apart in time)."""
        (t0, d0), (t1, d1) = self._hist[0], self._hist[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else math.nan

    def restart_rate(self, done: float) -> None:
        """Forget the rate history (e.g. after a compile): the rate is measured from now on."""
        self._hist.clear()
        self._hist.append((time.perf_counter(), done))

    def update(self, done: float, force: bool = False, **fields: Any) -> None:
        """Set the absolute progress (and fields); redraw if the display interval has passed."""
        now = time.perf_counter()
        self.done = done
        self.fields.update(fields)
        self._hist.append((now, done))
        while len(self._hist) > 2 and now - self._hist[1][0] >= self.window:
            self._hist.popleft()
        if force or now - self._last_draw >= self.interval:
            self._draw(now)

    def line(self) -> str:
        rate = self.rate()
        parts = [self.desc] if self.desc else []
        scale = self.total or self.done
        digits = 1 if scale >= 10 else 2 if scale >= 1 else 3
        if self.total:
            pct = 100.0 * self.done / self.total
            parts.append(f"{self.done:.{digits}f}/{self.total:g} {self.unit} ({pct:.1f}%)")
        else:
            parts.append(f"{self.done:.{digits}f} {self.unit}")
        if math.isfinite(rate):
            parts.append(f"{rate:.3g} {self.unit}/s")
            if self.total and rate > 0:
                parts.append(f"eta {format_duration((self.total - self.done) / rate)}")
        parts.append(f"elapsed {format_duration(time.perf_counter() - self.t0)}")
        if self.fields:
            parts.append(" ".join(f"{k} {_fmt_value(v)}" for k, v in self.fields.items()))
        return "  ".join(parts)

    # ---------------------------------------------------------------- output
    def _draw(self, now: float) -> None:
        if self.closed:
            return
        self._last_draw = now
        text = self.line()
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K")
            self._line_len = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def write(self, message: str) -> None:
        """Print a message on its own line (the bar is redrawn below it on a TTY)."""
        if self.tty and self._line_len:
            self.stream.write("\r\x1b[K")
        self.stream.write(message + "\n")
        if self.tty and self._line_len and not self.closed:
            self.stream.write(self.line())
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self.closed:
            return
        self._draw(time.perf_counter())
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
        self.closed = True

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
