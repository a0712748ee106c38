"""SQLite connections that take the database's write lock by polling it, not in SQLite's busy handler.

SQLite has one write lock per database. A writer that finds it taken waits in the busy handler,
which sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50 and then 100 ms between tries, however soon
the lock is free: with the intake's commits and eight worker threads writing, a transaction that
has lost a few tries sleeps 25 to 100 ms while the lock, held about a millisecond at a time, goes to
the writers that came after it. At a paced 500 events/s that was the intake's send p99 (118 ms)
and most of an event's wait between Redis and its handler (bench/README.md).

A :class:`PollingConnection` starts each write transaction itself, where Python's ``sqlite3``
would start it (an INSERT, UPDATE, DELETE or REPLACE outside a transaction), with ``BEGIN
IMMEDIATE`` tried without the busy handler, every :data:`FIRST_PAUSE` at first and at most
:data:`MOST_PAUSE` apart, until the connection's busy timeout has passed; then SQLite's "database
is locked" is raised, as it would have been. The transaction is otherwise the one ``sqlite3``
would have begun (deferred, at the same statement): the lock is taken at its first write either
way. Other statements (reads, DDL) keep the busy handler.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from typing import Any

#: The first pause between two tries at the write lock; it doubles after each, up to MOST_PAUSE.
FIRST_PAUSE = 0.0001
MOST_PAUSE = 0.001

#: The statements before which Python's ``sqlite3`` begins a transaction (its ``is_dml``).
WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


@functools.lru_cache(maxsize=512)
def begins_write(sql: str) -> bool:
    return sql.lstrip()[:7].upper().startswith(WRITES)


class PollingConnection(sqlite3.Connection):
    """A ``sqlite3`` connection whose write transactions begin by polling for the lock; pass it as
    ``factory`` to :func:`sqlite3.connect` (see :func:`gateway.database.create_store_engine`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._control = sqlite3.Cursor(self)
        #: The busy timeout ``sqlite3.connect`` set, restored after each time the lock is polled.
        self._busy_ms: int = self._control.execute("PRAGMA busy_timeout").fetchone()[0]

    def cursor(self, factory: Any = None) -> Any:
        return super().cursor(factory or PollingCursor)

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        return self.cursor().execute(sql, parameters)  # the C shortcut would skip cursor()

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> Any:
        return self.cursor().executemany(sql, seq_of_parameters)

    def take_write_lock(self) -> None:
        """``BEGIN IMMEDIATE``, tried until the busy timeout has passed (then SQLite's error)."""
        control, pause, deadline = self._control, FIRST_PAUSE, 0.0
        control.execute("PRAGMA busy_timeout = 0")
        try:
            while True:
                try:
                    control.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                        raise
                    now = time.monotonic()
                    deadline = deadline or now + self._busy_ms / 1000
                    if now >= deadline:
                        raise
                time.sleep(pause)
                pause = min(pause * 2, MOST_PAUSE)
        finally:
            control.execute(f"PRAGMA busy_timeout = {self._busy_ms}")

    def _before(self, sql: str) -> None:
        if self.isolation_level is not None and not self.in_transaction and begins_write(sql):
            self.take_write_lock()


class PollingCursor(sqlite3.Cursor):
    """A cursor of a :class:`PollingConnection`: a write outside a transaction begins one first."""

    connection: PollingConnection

    def execute(self, sql: str, parameters: Any = (), /) -> PollingCursor:
        self.connection._before(sql)
        return super().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> PollingCursor:
        self.connection._before(sql)
        return super().executemany(sql, seq_of_parameters)
