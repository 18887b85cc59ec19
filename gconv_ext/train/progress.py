"""A small dependency-free progress bar for stderr.

On a terminal it redraws one line with ``\\r``; otherwise (logs, pipes) it prints a line at most
every ``min_interval`` seconds, plus the final one. ``enabled=False`` makes it silent.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressBar"]


class ProgressBar:
    """Progress over ``total`` steps, written to ``stream`` (default ``sys.stderr``).

    Args:
        total: number of steps.
        desc: a prefix such as ``"epoch 3/20"``.
        enabled: write nothing when False.
        stream: where to write.
        min_interval: seconds between redraws (terminal) or lines (non-terminal).
        width: characters of the bar itself.
    """

    def __init__(
        self,
        total: int,
        desc: str = "",
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        min_interval: float | None = None,
        width: int = 24,
    ) -> None:
        self.total = max(int(total), 0)
        self.desc = desc
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval = min_interval if min_interval is not None else (0.2 if self.tty else 10.0)
        self.width = width
        self.count = 0
        self.start = time.perf_counter()
        self._last = -float("inf")
        self.postfix = ""

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        """Advance by ``n`` steps; ``postfix`` (e.g. ``"loss 0.31"``) is shown after the bar."""
        self.count = min(self.count + n, self.total) if self.total else self.count + n
        if postfix is not None:
            self.postfix = postfix
        now = time.perf_counter()
        if self.enabled and now - self._last >= self.min_interval and self.count < self.total:
            self._draw(now, final=False)
            self._last = now

    def close(self, postfix: str | None = None) -> None:
        """Draw the final state and end the line."""
        if postfix is not None:
            self.postfix = postfix
        if self.enabled:
            self._draw(time.perf_counter(), final=True)

    def _draw(self, now: float, final: bool) -> None:
        elapsed = now - self.start
        frac = self.count / self.total if self.total else 1.0
        filled = int(round(frac * self.width))
        bar = "#" * filled + "-" * (self.width - filled)
        rate = self.count / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.count) / rate if rate > 0 else 0.0
        text = (f"{self.desc} [{bar}] {self.count}/{self.total} "
                f"{elapsed:.0f}s<{eta:.0f}s {rate:.1f} it/s {self.postfix}").rstrip()
        if self.tty:
            self.stream.write("\r" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
