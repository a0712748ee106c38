"""Writing the intake's batches: one held connection, one statement or transaction a batch, and
on SQLite the WAL synced after each commit.

:class:`BatchWriter` is what the intake's committer calls for every batch. It runs on the
committer thread, or in a process of its own (:mod:`gateway.writer_process`), where its many
small waits (every ``sqlite3`` step, every fsync, every round trip to PostgreSQL) are not each a
wait for the intake's GIL. Whatever goes wrong, it raises, and :func:`refused_for_content` tells
the committer whether fewer rows could help.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError

from .batch_insert import SET_BACK_UNSENT, Key, insert_postgres, insert_sqlite
from .errors import StoreUnavailable

log = logging.getLogger("hookgate.intake")


class WriteFailed(StoreUnavailable):
    """A batch failed in the writer's process; what the committer needs to know of the error
    that the process could not hand over itself (see :mod:`gateway.writer_process`)."""

    def __init__(self, reason: str, *, for_content: bool, details: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.for_content = reason, for_content
        #: The traceback, for an error that is neither the store's nor its driver's (a bug).
        self.details = details


class BatchWriter:
    """Writes batches for the intake's committer (see :meth:`write`); one caller at a time.

    Args:
        engine: the store; its pool lends the one connection the writer holds.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        #: Why a sync of SQLite's WAL failed, if one did: from then on nothing more is written
        #: (see :meth:`_sync_wal`).
        self.sync_failed: str | None = None
        #: The connection while batches follow each other (see :meth:`_connection`).
        self._held: Connection | None = None
        #: SQLite: the WAL file synced after each batch ("": an in-memory store), and its
        #: descriptor while the connection is held (open and close were two more waits for the
        #: GIL a batch). SQLite deletes the file only when its last connection closes.
        self._wal = ""
        self._wal_fd: int | None = None
        #: SQLite writes a batch in a transaction of its own; elsewhere a batch is one statement,
        #: run in autocommit (see :mod:`gateway.batch_insert`).
        self._sqlite = engine.dialect.name == "sqlite"

    def write(self, rows: list[dict[str, Any]], sent: list[int]) -> dict[Key, int]:
        """Insert ``rows`` (those whose key is known are left alone) and mark the events the relay
        has ``sent`` queued; the new rows' ids by key. After any error the connection goes back
        to the pool, and the next batch checks one out again.

        On SQLite the batch's commit does not sync; the writer syncs the WAL itself once the
        write lock is free, and only then returns (see :meth:`_connection`). An error while
        syncing raises: the rows may be lost.
        """
        if rows and self.sync_failed is not None:  # marks acknowledge nothing: they may go on
            raise StoreUnavailable(self.sync_failed)
        try:
            conn = self._connection()
            if not self._sqlite:
                return insert_postgres(conn, rows, sent)
            with conn.begin():
                inserted = insert_sqlite(conn, rows, sent)
        except BaseException:
            self.release()
            raise
        if rows and self._wal:  # a duplicate too: its row may be another process's, not yet synced
            self._sync_wal()
        return inserted

    def set_back(self, items: list[tuple[int, str]]) -> None:
        """Set events written ``queued`` whose enqueue failed back to ``received`` (see
        :mod:`gateway.relay`), unless the recovery sweep has sent them again meanwhile (a new
        token). Not synced: the status is a label the sweep does not rely on with Redis."""
        try:
            conn = self._connection()
            with conn.begin() if self._sqlite else contextlib.nullcontext():
                conn.execute(SET_BACK_UNSENT, [{"pk": pk, "token": token} for pk, token in items])
        except BaseException:
            self.release()
            raise

    def _sync_wal(self) -> None:
        """Make the WAL durable, or stop writing for good.

        After a failed ``fsync`` Linux may drop the pages it could not write and report the next
        ``fsync`` clean: rows committed since the last good sync are visible (their retries would
        be answered ``duplicate``) and perhaps not on the disk, and SQLite's WAL is only valid up
        to its first lost frame. As PostgreSQL does for its own log, the intake then takes no
        more deliveries (each is answered 503, which senders retry, to another replica or after
        a restart), ``/healthz`` and ``/readyz`` fail, and the log says why.
        """
        try:
            if self._wal_fd is None:
                self._wal_fd = os.open(self._wal, os.O_RDONLY)
            sync_descriptor(self._wal_fd)
        except OSError as exc:
            self.sync_failed = f"syncing {self._wal} failed ({type(exc).__name__}: {exc})"
            log.critical(
                "%s: rows committed since the last sync may not be on the disk; this process "
                "accepts no more deliveries; check the disk, then restart serve",
                self.sync_failed,
            )
            raise StoreUnavailable(self.sync_failed) from exc

    def _connection(self) -> Connection:
        """The writer keeps one connection while batches follow each other: no checkout (and
        on PostgreSQL no ping, a round trip) per batch. The committer gives it back after a
        while without requests (:meth:`release`), and it goes back after any error, so a
        connection the database dropped costs one batch (answered 503, which senders retry) and
        the next is checked out, and pinged, afresh.

        On SQLite the held connection commits without syncing (``synchronous=NORMAL``), and
        :meth:`write` syncs the WAL file after the commit, outside SQLite's write lock.
        With ``FULL`` the sync ran inside the commit, and every writer waited for the disk: at a
        steady 350 requests a second the intake's commit held the lock 1.3 ms, 0.75 of it the
        sync, and the workers fell behind (bench/README.md, Intake). The durability is the same:
        a commit's frames are in the WAL file when it returns, and a sync of the file makes them,
        and every frame before them, durable; SQLite itself syncs the WAL before a checkpoint
        copies it and before the file is reused. The connection goes back to the pool at ``FULL``.
        """
        if self._held is None:
            conn = self.engine.connect()
            try:
                if self._sqlite:
                    self._wal = _wal_file(conn)
                    if self._wal:  # else the commits sync themselves (FULL), as on any connection
                        _set_synchronous(conn, "NORMAL")
                else:  # the batch is one statement: its own transaction
                    conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            except BaseException:
                conn.invalidate()  # not back to the pool half set up
                raise
            self._held = conn
        return self._held

    @property
    def holds_connection(self) -> bool:
        return self._held is not None

    def release(self) -> None:
        """Give the connection back to the pool (a no-op when none is held)."""
        held, self._held = self._held, None
        wal_fd, self._wal_fd = self._wal_fd, None
        if wal_fd is not None:
            os.close(wal_fd)
        if held is None:
            return
        with contextlib.suppress(Exception):  # a dropped connection is discarded by the pool
            if self._sqlite:
                try:
                    _set_synchronous(held, "FULL")
                except BaseException:
                    held.invalidate()  # never back to the pool with commits that do not sync
                    raise
            held.close()

    def stop(self) -> None:
        self.release()


#: SQLSTATE classes and codes that judge what was written: data exceptions (a NUL, a number out
#: of range), integrity violations, and an exception raised by a trigger or function.
CONTENT_SQLSTATES = ("22", "23", "P0001")


def refused_for_content(exc: BaseException) -> bool:
    """Whether the store turned down what was written (a value, a constraint, a trigger) rather
    than being unreachable, read-only, locked, out of connections or out of time: only then can a
    try of fewer rows help. Unknown errors count as unavailability, which costs one 503 per row
    instead of one transaction per row."""
    if isinstance(exc, WriteFailed):
        return exc.for_content
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return False
        state = getattr(exc.orig, "sqlstate", None)  # psycopg
        if state is not None:
            return state.startswith(CONTENT_SQLSTATES)
        return isinstance(exc, IntegrityError | DataError)  # sqlite3 (a trigger's RAISE is one)
    # The driver refused to bind a value before sending it (sqlite3: an int past 64 bits).
    return isinstance(exc, OverflowError | ValueError | TypeError)


def failure_reason(exc: BaseException) -> str:
    """The error in one line: the driver's first line only (SQLAlchemy's own text lists the
    parameters: bodies, headers)."""
    if isinstance(exc, WriteFailed):
        return exc.reason
    cause = exc.orig if isinstance(exc, DBAPIError) else exc
    return f"{type(cause).__name__}: {str(cause).splitlines()[0][:200] if str(cause) else ''}"


def is_unexpected(exc: BaseException) -> bool:
    """An error that is neither the store's nor its driver's, nor a row refused: a bug, logged
    with its traceback."""
    return not isinstance(exc, SQLAlchemyError | StoreUnavailable) and not refused_for_content(exc)


def log_failure(exc: BaseException, keys: list[Key]) -> None:
    reason = failure_reason(exc)
    if not refused_for_content(exc):
        # A driver's or the pool's error is the store being unavailable; anything else is a bug.
        details = exc.details if isinstance(exc, WriteFailed) else None
        log.warning("store unavailable: %s%s", reason, f"\n{details}" if details else "", exc_info=is_unexpected(exc))
    else:  # a refusal for content is only ever of one row: a larger batch is retried row by row
        provider, event_id = keys[0]
        fields = {"provider": provider, "event_id": event_id}
        log.error("the store refused event %r of %s: %s", event_id, provider, reason, extra=fields)


def _wal_file(conn: Connection) -> str:
    """The WAL file of a SQLite connection's database: "" for an in-memory one, or one whose
    journal is not a WAL (``PRAGMA journal_mode=WAL`` is refused on some file systems)."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        path: str = cursor.execute("PRAGMA database_list").fetchone()[2]
        mode: str = cursor.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        cursor.close()
    return f"{path}-wal" if path and mode.lower() == "wal" else ""


def _set_synchronous(conn: Connection, level: str) -> None:
    """On the driver's connection: SQLAlchemy's would begin a transaction around the PRAGMA."""
    conn.connection.dbapi_connection.cursor().execute(f"PRAGMA synchronous={level}").close()  # type: ignore[union-attr]


def sync_descriptor(fd: int) -> None:
    """Whatever was written to the file, through any descriptor, is on the disk when this
    returns (``fdatasync`` where there is one, as SQLite syncs its WAL)."""
    getattr(os, "fdatasync", os.fsync)(fd)
