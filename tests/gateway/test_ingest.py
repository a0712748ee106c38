"""The batch writer on its own: it answers every request, whatever goes wrong underneath."""

from __future__ import annotations

import asyncio
import gc
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import sqlalchemy.exc
import sqlalchemy.pool
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import select, update

import gateway.store_writer
from gateway.database import create_store_engine
from gateway.errors import StoreUnavailable
from gateway.ingest import Ingestor, _expire
from gateway.models import events
from gateway.queue import QUEUE_NAME, EventQueue, new_token
from gateway.store_writer import BatchWriter, refused_for_content, sync_descriptor


def row(event_id: str) -> dict[str, Any]:
    now = time.time()
    return {
        "provider": "acme",
        "event_id": event_id,
        "event_type": "t",
        "resource_id": None,
        "sequence": None,
        "body": b"{}",
        "headers": "{}",
        "received_at": now,
        "status": "received",
        "attempts": 0,
        "message_id": new_token(),
        "sweep_after": now + 15,
        "updated_at": now,
        "traceparent": None,
        "tracestate": None,
    }


@pytest.fixture
def ingestor(engine: Any) -> Iterator[Ingestor]:
    writer = Ingestor(engine, EventQueue(StubBroker()), commit_timeout=2)
    writer.start()
    yield writer
    writer.stop()


def test_an_unexpected_error_answers_503_and_the_writer_carries_on(
    ingestor: Ingestor, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = ingestor._insert_rows
    monkeypatch.setattr(ingestor, "_insert_rows", lambda rows, sent: 1 / 0)
    with pytest.raises(StoreUnavailable):
        asyncio.run(ingestor.submit(row("e1")))
    monkeypatch.setattr(ingestor, "_insert_rows", original)
    assert asyncio.run(ingestor.submit(row("e1"))) == "accepted"
    assert asyncio.run(ingestor.submit(row("e1"))) == "duplicate"


def test_a_commit_that_never_ends_is_answered_503(ingestor: Ingestor, monkeypatch: pytest.MonkeyPatch) -> None:
    stuck = threading.Event()
    original = ingestor._insert_rows

    def hang(rows: Any, sent: Any) -> Any:
        stuck.wait(10)
        return original(rows, sent)

    monkeypatch.setattr(ingestor, "_insert_rows", hang)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="in time"):
        asyncio.run(ingestor.submit(row("slow")))
    assert time.monotonic() - started < 5
    stuck.set()


def test_new_events_are_handed_to_the_broker_once(ingestor: Ingestor) -> None:
    async def burst() -> list[str]:
        return await asyncio.gather(*(ingestor.submit(row(f"b{i % 5}")) for i in range(20)))

    outcomes = asyncio.run(burst())
    assert outcomes.count("accepted") == 5
    broker = ingestor.event_queue.broker
    assert isinstance(broker, StubBroker)
    handed: list[int] = []
    deadline = time.monotonic() + 5
    while len(handed) < 5 and time.monotonic() < deadline:
        while broker.queues[QUEUE_NAME].qsize():
            message = dramatiq.Message.decode(broker.queues[QUEUE_NAME].get_nowait())
            handed.extend(message.args[0])  # one message may carry several events
        time.sleep(0.01)
    with ingestor.engine.connect() as conn:
        assert sorted(handed) == sorted(conn.scalars(select(events.c.id)))


def store_error(engine: Any, statement: str) -> Exception:
    """The exception the store raises for ``statement`` (run in a transaction that is undone)."""
    try:
        with engine.connect() as conn, conn.begin():
            conn.exec_driver_sql(statement)
    except Exception as exc:
        return exc
    raise AssertionError(f"{statement!r} did not fail")


def test_only_a_refusal_of_the_rows_themselves_retries_a_batch_row_by_row(engine: Any) -> None:
    """A row-by-row retry helps when the store judged what was written; when it is read-only
    (a failover), out of connections or gone, it would cost a transaction and an ERROR per row."""
    table = events.name
    postgres = engine.dialect.name == "postgresql"
    content = [store_error(engine, f"INSERT INTO {table} (id) VALUES (NULL)")]  # noqa: S608 (NOT NULL)
    unavailable = [sqlalchemy.exc.TimeoutError("QueuePool limit reached")]
    if postgres:
        content.append(store_error(engine, "SELECT 'a'::int"))  # a data exception
        content.append(store_error(engine, "DO $$ BEGIN RAISE EXCEPTION 'poison'; END $$"))
        unavailable.append(store_error(engine, f"SET TRANSACTION READ ONLY; DELETE FROM {table}"))  # noqa: S608
        unavailable.append(store_error(engine, "SET LOCAL statement_timeout = 10; SELECT pg_sleep(1)"))
    else:
        unavailable.append(store_error(create_store_engine("sqlite:////nonexistent/dir/x.db"), "SELECT 1"))
    content.append(OverflowError("Python int too large to convert to SQLite INTEGER"))
    assert [refused_for_content(exc) for exc in content] == [True] * len(content), content
    assert [refused_for_content(exc) for exc in unavailable] == [False] * len(unavailable), unavailable


def wait_for(check: Any, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.02)


def statuses(engine: Any) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(select(events.c.event_id, events.c.status)).all())  # type: ignore[arg-type]


def test_a_batch_stores_new_rows_once_and_marks_what_the_relay_sent_queued(ingestor: Ingestor) -> None:
    """The batch statement on either store: new rows get their ids, known ones are answered
    duplicate, and the events the relay handed to the broker are marked ``queued`` by a later
    commit (the next batch, or the committer's idle pass)."""

    async def burst(ids: list[str]) -> list[str]:
        return await asyncio.gather(*(ingestor.submit(row(event_id)) for event_id in ids))

    assert asyncio.run(burst(["a", "b", "a"])).count("accepted") == 2
    assert asyncio.run(burst(["b", "c"])) == ["duplicate", "accepted"]
    wait_for(lambda: statuses(ingestor.engine) == dict.fromkeys("abc", "queued"), "events marked queued")
    with ingestor.engine.connect() as conn:
        stored = conn.execute(select(events.c.event_id, events.c.body)).all()
    assert sorted(stored) == [("a", b"{}"), ("b", b"{}"), ("c", b"{}")]


def test_stopping_writes_what_the_relay_recorded_of_its_last_sends(engine: Any) -> None:
    """On the way out (``HOOKGATE_INTAKE_WRITER=thread``) the relay first enqueues what the last
    batch left, then what it recorded of that is committed before the writer stops: here the
    ``queued`` marks, with a broker that cannot say which messages it holds (RabbitMQ's case).
    The relay is held until the committer has stopped, as when the last batch ends the run."""
    event_queue = EventQueue(StubBroker())
    ingestor = Ingestor(engine, event_queue, commit_timeout=2)
    send = event_queue.send

    def send_once_the_committer_stopped(items: Any) -> Any:
        wait_for(lambda: ingestor._committer is None, "the committer to stop")
        return send(items)

    event_queue.send = send_once_the_committer_stopped  # type: ignore[method-assign]
    ingestor.start()
    try:
        assert asyncio.run(ingestor.submit(row("last"))) == "accepted"
    finally:
        ingestor.stop()
    assert event_queue.broker.queues[QUEUE_NAME].qsize() == 1  # type: ignore[attr-defined]
    assert statuses(engine) == {"last": "queued"}


def test_an_event_whose_enqueue_failed_is_set_back_unless_the_sweep_sent_it_again(engine: Any) -> None:
    """With Redis the intake writes events it sends at once ``queued`` (gateway.relay); one whose
    enqueue failed goes back to ``received``, but not once the recovery sweep has sent it again
    under a new token."""
    writer = BatchWriter(engine)
    try:
        failed, resent = row("failed") | {"status": "queued"}, row("resent") | {"status": "queued"}
        ids = writer.write([failed, resent], [])
        with engine.begin() as conn:  # the sweep's new message for one of them, which Redis took
            conn.execute(update(events).where(events.c.event_id == "resent").values(message_id=new_token()))
        writer.set_back(
            [(ids["acme", name], event["message_id"]) for name, event in (("failed", failed), ("resent", resent))]
        )
    finally:
        writer.stop()
    assert statuses(engine) == {"failed": "received", "resent": "queued"}


def test_on_sqlite_a_batch_is_synced_after_the_write_lock_is_free_and_before_its_answer(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The committer's connection commits without syncing; the committer then syncs the WAL
    file itself, while other writers may already take the lock, and answers the batch's
    requests only after that, a duplicate's too (its row may be another process's, committed
    and not yet synced). Its connection goes back to the pool syncing every commit."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's write lock and WAL file")
    syncing, release, synced = threading.Event(), threading.Event(), []

    def held_sync(fd: int) -> None:
        syncing.set()
        assert release.wait(10)
        sync_descriptor(fd)
        synced.append(os.fstat(fd).st_ino)

    monkeypatch.setattr(gateway.store_writer, "sync_descriptor", held_sync)
    writer = Ingestor(engine, EventQueue(StubBroker()), commit_timeout=5, idle_after=60)
    writer.start()
    try:

        async def submit_while_syncing() -> tuple[str, Any]:
            answer = asyncio.ensure_future(writer.submit(row("s1")))
            assert await asyncio.to_thread(syncing.wait, 10)
            other = sqlite3.connect(engine.url.database, timeout=0)
            try:
                other.execute("BEGIN IMMEDIATE")  # the lock is free while the committer syncs
                other.rollback()
            finally:
                other.close()
            held = writer.writer._held
            assert held is not None
            dbapi = held.connection.dbapi_connection
            assert dbapi is not None
            assert dbapi.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
            await asyncio.sleep(0.2)
            assert not answer.done()
            release.set()
            return await answer, dbapi

        answer, dbapi = asyncio.run(submit_while_syncing())
        assert answer == "accepted"
        wal = os.stat(f"{engine.url.database}-wal").st_ino
        assert synced == [wal]  # the store's WAL file
        assert asyncio.run(writer.submit(row("s1"))) == "duplicate"
        assert synced == [wal, wal]
    finally:
        release.set()
        writer.stop()  # gives the connection back
    assert dbapi.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_on_sqlite_a_failed_sync_stops_the_intake_acknowledging(engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a failed ``fsync`` the rows committed since the last good one may not be on the
    disk, and later syncs prove nothing: the batch is answered 503, and so is every delivery
    after it, stored or not, until the process is restarted."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's WAL file")

    def failing_sync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(gateway.store_writer, "sync_descriptor", failing_sync)
    writer = Ingestor(engine, EventQueue(StubBroker()), commit_timeout=5)
    writer.start()
    try:
        with pytest.raises(StoreUnavailable):  # committed, and perhaps not on the disk
            asyncio.run(writer.submit(row("f1")))
        monkeypatch.setattr(gateway.store_writer, "sync_descriptor", sync_descriptor)  # the disk "recovers"
        for event_id in ("f1", "f2"):
            with pytest.raises(StoreUnavailable, match="Input/output error"):
                asyncio.run(writer.submit(row(event_id)))
        assert writer.sync_failed is not None
    finally:
        writer.stop()
    assert set(statuses(engine)) == {"f1"}  # nothing after the failure was even written


def test_a_request_that_waited_too_long_leaves_nothing_behind() -> None:
    """A request answered 503 for time must not keep its future (and what it holds) alive: while
    a store stalls, every retry of every sender adds one."""

    async def expired() -> weakref.ref[asyncio.Future[str]]:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        _expire(future)
        with pytest.raises(StoreUnavailable):
            future.result()
        return weakref.ref(future)

    gone = asyncio.run(expired())
    gc.collect()
    assert gone() is None


def terminate(engine: Any, pid: int) -> None:
    """End PostgreSQL session ``pid`` from a connection of its own (not one of ``engine``'s pool,
    which may be the very one to end)."""
    outsider = sqlalchemy.create_engine(engine.url, poolclass=sqlalchemy.pool.NullPool)
    with outsider.connect() as conn:
        assert conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})").scalar()
    outsider.dispose()


def record_connections(ingestor: Ingestor, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The driver's connection of each batch, as the committer thread took it."""
    taken: list[Any] = []
    original = ingestor.writer._connection

    def recording() -> Any:
        conn = original()
        taken.append(conn.connection.dbapi_connection)
        return conn

    monkeypatch.setattr(ingestor.writer, "_connection", recording)
    return taken


def test_the_committer_gives_its_connection_back_when_requests_stop(
    ingestor: Ingestor, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The committer keeps its connection between batches and gives it back once requests stop
    (``idle_after``). On PostgreSQL it ran its batches in autocommit: in the pool it does not.
    A connection the server dropped after that is not used again unchecked: the pool pings the
    next one it hands out, so no request sees the drop."""
    connections = record_connections(ingestor, monkeypatch)
    assert asyncio.run(ingestor.submit(row("before"))) == "accepted"
    wait_for(lambda: not ingestor.writer.holds_connection, "connection given back")
    if engine.dialect.name == "postgresql":
        assert connections[-1].autocommit is False
        terminate(engine, connections[-1].info.backend_pid)
    assert asyncio.run(ingestor.submit(row("after"))) == "accepted"


@pytest.fixture
def patient(engine: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Ingestor, list[Any]]]:
    """An ingestor whose committer keeps its connection for a minute without requests, and the
    connections its batches ran on."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's connections")
    writer = Ingestor(engine, EventQueue(StubBroker()), commit_timeout=2, idle_after=60)
    connections = record_connections(writer, monkeypatch)
    writer.start()
    yield writer, connections
    writer.stop()


def test_a_connection_dropped_under_load_costs_one_batch(patient: tuple[Ingestor, list[Any]]) -> None:
    """Between batches that follow each other the committer does not ping its connection. When
    the server drops it, the batch on it is answered 503 (senders retry) and the next one runs
    on a fresh connection."""
    ingestor, connections = patient
    assert asyncio.run(ingestor.submit(row("first"))) == "accepted"
    terminate(ingestor.engine, connections[-1].info.backend_pid)
    answers = []
    for _ in range(2):
        try:
            answers.append(asyncio.run(ingestor.submit(row("second"))))
        except StoreUnavailable:
            answers.append("503")
    assert answers == ["503", "accepted"]
    assert connections[-1] is not connections[0]
    assert sorted(statuses(ingestor.engine)) == ["first", "second"]


def test_the_postgresql_batch_is_planned_for_each_batch(patient: tuple[Ingestor, list[Any]]) -> None:
    """psycopg prepares a statement it has run five times, and PostgreSQL may then keep a generic
    plan made while the table was small: the sent ids were looked up by scanning every
    ``received`` event, and each batch took longer than the one before (bench/README.md,
    Intake). The batch statement is never prepared on the server."""
    ingestor, connections = patient
    for index in range(8):
        assert asyncio.run(ingestor.submit(row(f"p{index}"))) == "accepted"
    assert len({id(conn) for conn in connections}) == 1  # one session ran them all
    prepared = [statement for (statement,) in connections[-1].execute("SELECT statement FROM pg_prepared_statements")]
    assert not [statement for statement in prepared if "unnest" in statement], prepared
