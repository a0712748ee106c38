"""The batch writer on its own: it answers every request, whatever goes wrong underneath."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import sqlalchemy.exc
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import select

from gateway.database import create_store_engine
from gateway.errors import StoreUnavailable
from gateway.ingest import Ingestor, _refused_for_content
from gateway.models import events
from gateway.queue import QUEUE_NAME, EventQueue, new_token


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
    assert [_refused_for_content(exc) for exc in content] == [True] * len(content), content
    assert [_refused_for_content(exc) for exc in unavailable] == [False] * len(unavailable), unavailable
