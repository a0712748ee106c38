"""Write transactions on SQLite take the write lock by polling it (gateway/sqlite_lock.py)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from gateway.database import BACKSTOP_CHECKPOINT_PAGES, WORKER_CHECKPOINT_PAGES, create_store_engine
from gateway.sqlite_lock import PollingConnection
from tests.support.servers import wait_for


@pytest.fixture
def path(tmp_path: Path) -> Path:
    db = tmp_path / "lock.db"
    with sqlite3.connect(db) as setup:
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute("CREATE TABLE t (n INTEGER)")
    return db


def polling(path: Path, timeout: float = 5.0) -> PollingConnection:
    conn = sqlite3.connect(path, timeout=timeout, check_same_thread=False, factory=PollingConnection)
    assert isinstance(conn, PollingConnection)
    return conn


def holder(path: Path) -> sqlite3.Connection:
    """A plain connection holding the write lock until it commits."""
    conn = sqlite3.connect(path, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t VALUES (0)")
    return conn


def begins(conn: sqlite3.Connection) -> list[str]:
    """The ``BEGIN IMMEDIATE`` statements ``conn`` runs, tried or taken, from now on."""
    tries: list[str] = []
    conn.set_trace_callback(lambda sql: tries.append(sql) if sql == "BEGIN IMMEDIATE" else None)
    return tries


def write_in_a_thread(conn: sqlite3.Connection, value: int) -> tuple[threading.Thread, threading.Event]:
    """Insert ``value`` and commit on a thread of its own; the thread, and an event set once done."""
    done = threading.Event()

    def write() -> None:
        conn.execute("INSERT INTO t VALUES (?)", (value,))
        conn.commit()
        done.set()

    thread = threading.Thread(target=write)
    thread.start()
    return thread, done


def test_a_write_waits_for_the_lock_by_trying_it_and_takes_it_once_free(path: Path) -> None:
    held = holder(path)
    writer = polling(path)
    tries = begins(writer)
    thread, done = write_in_a_thread(writer, 1)
    # SQLite's busy handler would sleep inside one statement; here the lock is tried again and again
    wait_for(lambda: len(tries) >= 3, 10, what="several tries at the write lock")
    assert not done.is_set()
    held.commit()
    assert done.wait(10)
    thread.join()
    assert sorted(n for (n,) in writer.execute("SELECT n FROM t")) == [0, 1]


def test_the_busy_timeout_still_ends_the_wait_with_sqlites_error(path: Path) -> None:
    held = holder(path)
    writer = polling(path, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        writer.execute("UPDATE t SET n = 2")
    assert time.monotonic() - started >= 0.3
    assert not writer.in_transaction
    held.commit()
    writer.execute("UPDATE t SET n = 2")  # the busy timeout is back for what follows
    assert writer.execute("PRAGMA busy_timeout").fetchone() == (300,)
    writer.commit()


def test_reads_and_transactions_already_begun_do_not_take_the_lock(path: Path) -> None:
    held = holder(path)
    reader = polling(path, timeout=0.2)
    assert reader.execute("SELECT count(*) FROM t").fetchone() == (0,)  # WAL: readers never wait
    assert not reader.in_transaction
    held.commit()
    reader.execute("INSERT INTO t VALUES (1)")
    assert reader.in_transaction
    reader.executemany("INSERT INTO t VALUES (?)", [(2,), (3,)])  # within the same transaction
    reader.rollback()
    assert reader.execute("SELECT n FROM t").fetchall() == [(0,)]


def test_a_connection_in_autocommit_mode_begins_nothing(path: Path) -> None:
    conn = polling(path)
    conn.isolation_level = None
    conn.execute("INSERT INTO t VALUES (1)")
    assert not conn.in_transaction


def test_the_stores_engines_connections_take_the_lock_that_way(path: Path) -> None:
    engine = create_store_engine(f"sqlite:///{path}?timeout=0.3")
    try:
        held = holder(path)
        with engine.connect() as conn:
            assert isinstance(conn.connection.dbapi_connection, PollingConnection)
            started = time.monotonic()
            with pytest.raises(OperationalError, match="database is locked"):
                conn.execute(text("INSERT INTO t VALUES (5)"))
            assert time.monotonic() - started >= 0.3
            conn.rollback()
            held.commit()
            conn.execute(text("INSERT INTO t VALUES (5)"))
            conn.commit()
            assert conn.execute(text("SELECT n FROM t ORDER BY n")).all() == [(0,), (5,)]
    finally:
        engine.dispose()


def test_a_processs_threads_take_turns_and_only_the_one_whose_turn_it_is_polls(path: Path) -> None:
    first, second = polling(path), polling(path)
    first.execute("INSERT INTO t VALUES (1)")  # holds the write lock and the process's turn
    tries = begins(second)
    thread, done = write_in_a_thread(second, 2)
    assert not done.wait(0.2)  # it waits, asleep on the turn: not one try at SQLite's lock meanwhile
    assert tries == []
    first.commit()
    assert done.wait(10)
    thread.join()
    assert tries == ["BEGIN IMMEDIATE"]  # the turn came with the lock free: taken at the first try


def end_by_error(conn: sqlite3.Connection) -> None:
    """An error that SQLite ends the transaction with itself (ON CONFLICT ROLLBACK)."""
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT OR ROLLBACK INTO once VALUES (1)")


def end_in_a_with_block(conn: sqlite3.Connection) -> None:
    with conn:
        conn.execute("INSERT INTO t VALUES (3)")


ENDINGS = {
    "commit": lambda conn: conn.commit(),
    "rollback": lambda conn: conn.rollback(),
    "close": lambda conn: conn.close(),
    "error": end_by_error,
    "COMMIT in SQL": lambda conn: conn.execute("COMMIT"),
    "a script": lambda conn: conn.executescript("INSERT INTO t VALUES (4);"),  # commits first
    "a with block": end_in_a_with_block,
}


@pytest.mark.parametrize("end", ENDINGS)
def test_the_turn_is_given_back_however_the_transaction_ends(path: Path, end: str) -> None:
    first, second = polling(path), polling(path, timeout=2)
    first.execute("CREATE TABLE once (n INTEGER UNIQUE)")
    first.execute("INSERT INTO once VALUES (1)")
    first.commit()
    first.execute("INSERT INTO t VALUES (1)")
    ENDINGS[end](first)
    with contextlib.suppress(sqlite3.ProgrammingError):  # closed
        assert not first.in_transaction
    started = time.monotonic()
    second.execute("INSERT INTO t VALUES (2)")
    second.commit()
    assert time.monotonic() - started < 1  # not the busy timeout


def test_an_explicit_begin_immediate_takes_the_turn_within_the_connections_busy_timeout(path: Path) -> None:
    first, second = polling(path), polling(path)
    first.execute("INSERT INTO t VALUES (1)")
    second.execute("PRAGMA busy_timeout = 300")  # as a migration sets its own
    tries = begins(second)
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        second.execute("BEGIN IMMEDIATE")
    assert 0.3 <= time.monotonic() - started < 2
    assert tries == []  # it waited for the turn, asleep
    first.commit()
    second.execute("begin  immediate")
    assert second.in_transaction
    assert tries == ["BEGIN IMMEDIATE"]
    second.execute("INSERT INTO t VALUES (2)")
    second.commit()
    assert second.execute("PRAGMA busy_timeout").fetchone() == (300,)
    first.execute("INSERT INTO t VALUES (3)")  # and the turn came back
    first.commit()


def test_waiting_for_the_turn_counts_against_the_busy_timeout(path: Path) -> None:
    first, second = polling(path), polling(path, timeout=0.3)
    first.execute("INSERT INTO t VALUES (1)")
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        second.execute("INSERT INTO t VALUES (2)")
    assert 0.3 <= time.monotonic() - started < 2
    assert not second.in_transaction
    first.commit()
    second.execute("INSERT INTO t VALUES (2)")  # and nothing stays taken
    second.commit()


def test_in_memory_databases_do_not_share_a_turn() -> None:
    first = sqlite3.connect(":memory:", timeout=0.2, factory=PollingConnection)
    second = sqlite3.connect(":memory:", timeout=0.2, factory=PollingConnection)
    for conn in (first, second):
        conn.execute("CREATE TABLE t (n INTEGER)")
    first.execute("INSERT INTO t VALUES (1)")
    second.execute("INSERT INTO t VALUES (1)")  # another database: no wait
    assert first.in_transaction
    assert second.in_transaction


@pytest.mark.parametrize(
    ("acknowledges", "pages", "synchronous"),
    [(True, BACKSTOP_CHECKPOINT_PAGES, 2), (False, WORKER_CHECKPOINT_PAGES, 1)],  # synchronous 2: FULL, 1: NORMAL
)
def test_the_workers_commits_copy_the_wal_and_the_intakes_only_past_a_backstop(
    path: Path, acknowledges: bool, pages: int, synchronous: int
) -> None:
    """The intake's checkpointer copies beside its commits (tests/gateway/test_checkpoints.py)."""
    engine = create_store_engine(f"sqlite:///{path}", acknowledges=acknowledges)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == pages
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == synchronous
    finally:
        engine.dispose()
    assert WORKER_CHECKPOINT_PAGES > 1000  # more than SQLite's default
    assert BACKSTOP_CHECKPOINT_PAGES > WORKER_CHECKPOINT_PAGES
