"""A progress display for long CLI commands (a bulk replay), on stderr so that stdout keeps only
the result.

On a terminal it is one bar redrawn in place (``\\r``). Anywhere else (a log file, CI, a pipe)
it is plain lines, one each time another tenth of the work is done, so that a log shows the
progress without one line per batch.
"""

from __future__ import annotations

import sys
from typing import TextIO

WIDTH = 30


class ProgressBar:
    """``[#########.....................]  30%  360/1200 events``."""

    def __init__(self, total: int, *, label: str = "events", out: TextIO | None = None) -> None:
        self.total = total
        self.label = label
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self._tenth = -1
        self._drawn = False

    def line(self, done: int) -> str:
        share = min(done / self.total, 1.0) if self.total else 1.0
        filled = round(WIDTH * share)
        return f"[{'#' * filled}{'.' * (WIDTH - filled)}] {share:4.0%}  {done}/{self.total} {self.label}"

    def update(self, done: int, total: int | None = None) -> None:
        """Show ``done`` of the total (``total``, when given, replaces it)."""
        if total is not None:
            self.total = total
        if self.tty:
            self.out.write("\r" + self.line(done))
            self._drawn = True
        else:
            tenth = int(10 * done / self.total) if self.total else 10
            if tenth == self._tenth:
                return
            self._tenth = tenth
            self.out.write(self.line(done) + "\n")
        self.out.flush()

    def finish(self) -> None:
        """End the bar's line on a terminal, so that what follows starts on a line of its own."""
        if self.tty and self._drawn:
            self.out.write("\n")
            self.out.flush()
            self._drawn = False
