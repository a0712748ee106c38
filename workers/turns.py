"""Turns at SQLite's one write lock for the threads of a worker process.

SQLite lets one connection write at a time; the others wait in its busy handler, which sleeps
between tries in growing steps (up to 100 ms) rather than waking when the lock is free. With a
worker's threads all writing their rounds, most of their time went to those sleeps (py-spy:
SQLite's execute was the first line of the profile). Taking turns on a Python lock first hands
the write lock from thread to thread of a process at once; only the other processes (the intake,
other workers) still meet SQLite's busy handler. PostgreSQL locks rows, not the database: there
the turns are no-ops.

Only the processing threads take turns. A thread must take its turn *before* it holds SQLite's
lock, never while: the lease keeper and the recovery sweep write without a turn, so that a
thread holding the lock never waits for a turn, and no two threads can wait for each other.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine


class WriteTurns:
    """A process-wide lock around write transactions, on SQLite only."""

    def __init__(self, engine: Engine) -> None:
        self._lock = threading.Lock() if engine.dialect.name == "sqlite" else None

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Hold the turn for the block: take it before the transaction's first write."""
        if self._lock is None:
            yield
            return
        with self._lock:
            yield
