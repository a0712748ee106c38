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
way. An explicit ``BEGIN IMMEDIATE`` (a round with handler sessions, a migration) is taken the
same way, within the busy timeout the connection has then. Other statements (reads, DDL) keep
the busy handler.

The threads of one process take turns first: a connection waits for its process's turn at the
database (a :class:`threading.Lock` per database file) before it polls, and gives the turn back
when its transaction ends. Only one thread of a process polls at a time, the others sleep until
the turn is theirs, and the turn passes between them at once. With eight worker threads polling
side by side, the polls and the switches of the GIL between them cost a fifth of the workers' CPU
under a burst (bench/README.md, step 13). Every write transaction of the store's connections
takes the turn, the lease keeper's and the recovery sweep's too, so none of them is starved by
the others; the wait for the turn counts against the same busy timeout.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
import time
from typing import Any, Literal

#: The first pause between two tries at the write lock; it doubles after each, up to MOST_PAUSE.
FIRST_PAUSE = 0.0001
MOST_PAUSE = 0.001

#: The statements before which Python's ``sqlite3`` begins a transaction (its ``is_dml``).
WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


@functools.lru_cache(maxsize=512)
def begins_write(sql: str) -> bool:
    return sql.lstrip()[:7].upper().startswith(WRITES)


@functools.lru_cache(maxsize=64)
def begins_immediate(sql: str) -> bool:
    """An explicit ``BEGIN IMMEDIATE`` (a round with handler sessions, a migration)."""
    return " ".join(sql.split()).upper().rstrip(";") == "BEGIN IMMEDIATE"


class PollingConnection(sqlite3.Connection):
    """A ``sqlite3`` connection whose write transactions begin by polling for the lock; pass it as
    ``factory`` to :func:`sqlite3.connect` (see :func:`gateway.database.create_store_engine`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._control = sqlite3.Cursor(self)
        self._turn = turn_at(self._control.execute("PRAGMA database_list").fetchone()[2])
        self._holds_turn = False
        #: Makes "do I hold the turn? then give it back" one step (close() may come from another thread).
        self._turn_guard = threading.Lock()

    def cursor(self, factory: Any = None) -> Any:
        return super().cursor(factory or PollingCursor)

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        return self.cursor().execute(sql, parameters)  # the C shortcut would skip cursor()

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> Any:
        return self.cursor().executemany(sql, seq_of_parameters)

    def take_write_lock(self) -> None:
        """The process's turn, then ``BEGIN IMMEDIATE``, tried until the connection's busy timeout
        has passed (then SQLite's error)."""
        control = self._control
        busy_ms: int = control.execute("PRAGMA busy_timeout").fetchone()[0]  # a migration sets its own
        deadline = time.monotonic() + busy_ms / 1000
        if not self._turn.acquire(timeout=busy_ms / 1000):
            raise sqlite3.OperationalError("database is locked")
        with self._turn_guard:
            self._holds_turn = True
        try:
            control.execute("PRAGMA busy_timeout = 0")
            try:
                self._poll(deadline)
            finally:
                control.execute(f"PRAGMA busy_timeout = {busy_ms}")
        except BaseException:
            self._give_turn()
            raise

    def _poll(self, deadline: float) -> None:
        pause = FIRST_PAUSE
        while True:
            try:
                self._control.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, MOST_PAUSE)

    def _give_turn(self) -> None:
        with self._turn_guard:
            if not self._holds_turn:
                return
            self._holds_turn = False
        self._turn.release()

    def _give_turn_if_ended(self) -> None:
        """After anything that may have ended the transaction without :meth:`commit` or
        :meth:`rollback`: a ``COMMIT`` in SQL, a script, an error SQLite rolled back."""
        if self._holds_turn and not self.in_transaction:
            self._give_turn()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._give_turn_if_ended()  # a commit that failed leaves the transaction, and the turn

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._give_turn()

    def close(self) -> None:
        """Ends the transaction first: ``sqlite3`` closes a connection whose cursors are still
        open (as the control cursor is) only once they are gone, keeping its transaction, and
        SQLite's write lock, until then."""
        try:
            with contextlib.suppress(sqlite3.Error):  # closed already, or the rollback failed
                if self.in_transaction:
                    super().rollback()
                self._control.close()
            super().close()
        finally:
            self._give_turn()

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> Literal[False]:
        """``with connection:`` commits or rolls back as ``sqlite3``'s does, through the methods
        above (its own skips them, and the turn)."""
        if kind is None:
            self.commit()
        else:
            self.rollback()
        return False

    def executescript(self, script: str, /) -> Any:
        try:
            return super().executescript(script)
        finally:
            self._give_turn_if_ended()

    def __del__(self) -> None:  # dropped without close(): the turn must not stay taken
        if getattr(self, "_holds_turn", False):
            self._give_turn()

    def _before(self, sql: str) -> bool:
        """Begin the write transaction a statement needs; whether it was an explicit ``BEGIN
        IMMEDIATE``, which this then was (the caller must not run it again)."""
        if self.in_transaction:
            return False
        if begins_immediate(sql):
            self.take_write_lock()
            return True
        if self.isolation_level is not None and begins_write(sql):
            self.take_write_lock()
        return False


#: Each database file's turn, shared by the connections of this process.
_turns: dict[str, threading.Lock] = {}
_turns_lock = threading.Lock()


def _forget_turns() -> None:
    """In a forked child: the parent's threads, and the turns they held, are not there."""
    global _turns_lock
    _turns.clear()
    _turns_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_turns)


def turn_at(path: str) -> threading.Lock:
    """The turn at the database file ``path``; an in-memory database (no path) is a database of
    its own for each connection, and so has a turn of its own."""
    if not path:
        return threading.Lock()
    with _turns_lock:
        return _turns.setdefault(path, threading.Lock())


class PollingCursor(sqlite3.Cursor):
    """A cursor of a :class:`PollingConnection`: a write outside a transaction begins one first;
    an explicit ``BEGIN IMMEDIATE`` is taken the same way."""

    connection: PollingConnection

    def execute(self, sql: str, parameters: Any = (), /) -> PollingCursor:
        connection = self.connection
        if connection._before(sql):
            return self
        try:
            return super().execute(sql, parameters)
        finally:
            connection._give_turn_if_ended()

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> PollingCursor:
        connection = self.connection
        connection._before(sql)
        try:
            return super().executemany(sql, seq_of_parameters)
        finally:
            connection._give_turn_if_ended()
