"""Engines for the store: SQLite by default (WAL), PostgreSQL in production.

A 2xx promises the event is committed and on the disk, so the connections of an engine that
acknowledges run SQLite's ``synchronous=FULL``; the intake's committer, which writes nearly all
of those commits, syncs the WAL itself after each batch instead (gateway.ingest), once per
batch, not per request.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import OperationalError

from . import models
from .errors import HookgateError
from .sqlite_lock import PollingConnection

#: How long SQLite waits for another process's write lock before the store counts as unavailable.
SQLITE_BUSY_SECONDS = 5.0

#: Pages (4 KiB) the WAL grows by before the commit that passes them copies it into the database
#: (SQLite's default: 1,000). An event writes about five pages to the WAL on its way through
#: (row and indexes, at each change of status), mostly the same index pages again and again; a
#: checkpoint copies each page once however often it was written, so a larger WAL copies less per
#: event: bursts of 10,000 events ran about 5% faster (bench/README.md, step 14). Only the
#: workers' commits copy: those that acknowledge requests do only past a backstop (should the
#: intake's checkpointer, which copies beside them, fail for long; see :mod:`gateway.checkpoints`).
WORKER_CHECKPOINT_PAGES = 16_000
BACKSTOP_CHECKPOINT_PAGES = 16 * WORKER_CHECKPOINT_PAGES


def create_store_engine(url: str, *, acknowledges: bool = True, **kwargs: Any) -> Engine:
    """An engine for ``url``; SQLite files get WAL mode and a busy timeout (``?timeout=`` wins),
    within which a write transaction polls for the write lock (:mod:`gateway.sqlite_lock`).

    ``acknowledges``: commits that a 2xx promises (the intake's) are synced to disk before they
    return (``synchronous=FULL``; the intake's committer syncs its batches itself, outside the
    write lock, see :meth:`gateway.ingest.Ingestor._connection`). The workers' commits are not promised to anyone: with
    ``NORMAL`` a power loss may undo the last of them, each whole (status, store and handler
    rows together), and the event then simply runs again; a process crash loses nothing.

    psycopg's statements are never prepared on the server (``prepare_threshold=None``; it
    prepares a statement it has run five times by default). A prepared statement whose plan
    PostgreSQL makes generic cannot use the partial indexes, whose statuses are parameters here,
    and the intake's batch once kept such a plan made while the table was small. In
    bench/side_by_side.py Hookgate handled about 5% more events per second without it (the
    median of ten alternating pairs, from 8% fewer to 27% more; bench/README.md, step 17). It
    also removes one obstacle to PgBouncer in transaction mode, where a statement prepared on
    one server connection is missing on the next.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        kwargs.setdefault("pool_size", 10)
        if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        if parsed.get_driver_name() == "psycopg":
            kwargs["connect_args"] = {"prepare_threshold": None, **kwargs.get("connect_args", {})}
        return create_engine(parsed, **kwargs)
    connect_args = kwargs.pop("connect_args", {})
    timeout = parsed.query.get("timeout", SQLITE_BUSY_SECONDS)
    connect_args.setdefault("timeout", float(timeout[-1] if isinstance(timeout, tuple) else timeout))
    connect_args.setdefault("check_same_thread", False)
    connect_args.setdefault("factory", PollingConnection)
    engine = create_engine(parsed.set(query={}), connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={'FULL' if acknowledges else 'NORMAL'}")
        pages = BACKSTOP_CHECKPOINT_PAGES if acknowledges else WORKER_CHECKPOINT_PAGES
        cursor.execute(f"PRAGMA wal_autocheckpoint={pages}").fetchall()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


class NoStore(HookgateError):
    """The store that ``HOOKGATE_DATABASE_URL`` names does not exist, has no Hookgate tables or
    does not answer; the message names it (without a password)."""


#: What to do about a store that is not there, or has no tables.
WHERE_STORES_ARE = "set HOOKGATE_DATABASE_URL, or run this where hookgate run or serve runs"
CREATES_TABLES = "hookgate migrate, serve, worker or run creates them"


def open_existing_store(url: str) -> Engine:
    """An engine for a store that already holds Hookgate's tables, for the commands that read or
    replay events; nothing is created when there is none.

    Run outside a project directory, the default ``sqlite:///./hookgate.db`` names a file that is
    not there, and SQLite would create it empty. So a SQLite file must exist, and its tables are
    looked up on a read-only connection before the engine (which sets WAL mode) ever opens it.

    Raises:
        NoStore: no such file, no Hookgate tables, or the database does not answer.
        SchemaMismatch: the schema is behind this release (or ahead of it).
    """
    parsed = make_url(url)
    table = models.EventRecord.__tablename__
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise NoStore(f"no store in {_shown(parsed)}: an in-memory SQLite database holds no events")
        path = Path(parsed.database).absolute()
        if not path.is_file():
            raise NoStore(f"no store at {path}; {WHERE_STORES_ARE}")
        try:
            with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as conn:
                found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
                has_table = found.fetchone() is not None
        except sqlite3.DatabaseError as exc:
            raise NoStore(f"cannot read the store at {path}: {exc}") from None
        if not has_table:
            raise NoStore(f"no Hookgate tables in {path}; {CREATES_TABLES}")
        return _current(create_store_engine(url))
    engine = create_store_engine(url)
    try:
        has_table = inspect(engine).has_table(table)
    except OperationalError as exc:
        engine.dispose()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise NoStore(f"the store at {_shown(parsed)} does not answer: {reason}") from None
    if not has_table:
        engine.dispose()
        raise NoStore(f"no Hookgate tables in {_shown(parsed)}; {CREATES_TABLES}")
    return _current(engine)


def _current(engine: Engine) -> Engine:
    """``engine``, once its schema is the one this release reads (see :mod:`gateway.schema`)."""
    from .schema import prepare_store

    try:
        prepare_store(engine, upgrade=False)
    except BaseException:
        engine.dispose()
        raise
    return engine


def _shown(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def ping(engine: Engine) -> None:
    """Raise unless the store answers a query."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
