"""The batch writer on its own: it answers every request, whatever goes wrong underneath."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from dramatiq.brokers.stub import StubBroker

from gateway.errors import StoreUnavailable
from gateway.ingest import Ingestor
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
    deadline = time.monotonic() + 5
    while broker.queues[QUEUE_NAME].qsize() < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert broker.queues[QUEUE_NAME].qsize() == 5
