"""Leases and the order of pending events, straight on the store (SQLite and PostgreSQL).

Hosts disagree about the time: a lease must not be taken over only because one host's clock is
ahead (or another's behind). And both stores must agree with the in-memory order key on where an
event without a sequence goes, also when a resource has more pending events than one pass reads.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from sqlalchemy import insert, select

from gateway.config import WorkerSettings
from gateway.models import QUEUED, events
from gateway.queue import EventQueue, create_broker
from workers.leases import EventLeases, ResourceLeases
from workers.ordering import order_key
from workers.recovery import RecoverySweep
from workers.resources import PASS_LIMIT, ResourceStore

HOUR = 3600.0


def store_events(engine: Any, resource: str, sequences: list[int | None]) -> None:
    now = time.time()
    rows = [
        {
            "provider": "acme",
            "event_id": f"{resource}-{n}",
            "event_type": "thing.updated",
            "resource_id": resource,
            "sequence": sequence,
            "body": b"{}",
            "headers": orjson.dumps({}).decode(),
            "received_at": now,
            "status": QUEUED,
            "updated_at": now,
        }
        for n, sequence in enumerate(sequences)
    ]
    with engine.begin() as conn:
        conn.execute(insert(events), rows)


def test_an_event_without_a_sequence_comes_first_in_every_store(engine: Any) -> None:
    store_events(engine, "crowded", [*range(PASS_LIMIT + 10, 0, -1), None])
    with engine.connect() as conn:
        pending = ResourceStore(engine).pending(conn, ("acme", "crowded"))
    assert len(pending) == PASS_LIMIT
    assert pending[0].sequence is None, "the store cut off the event the in-memory order puts first"
    assert [row.sequence for row in pending[1:4]] == [1, 2, 3]
    assert pending == sorted(pending, key=order_key)


def test_a_sweep_on_a_host_whose_clock_is_ahead_leaves_a_live_event_lease_alone(engine: Any, redis_url: str) -> None:
    settings = WorkerSettings(lease_seconds=30)
    store_events(engine, "busy", [1])
    with engine.connect() as conn:
        pk = conn.execute(select(events.c.id)).scalar_one()
    behind = EventLeases(engine, settings, clock=lambda: time.time() - HOUR)
    assert behind.claim(pk, "live-worker") is not None
    ahead = RecoverySweep(engine, EventQueue(create_broker(redis_url)), settings, clock=lambda: time.time() + HOUR)
    assert ahead.run_once() == 0
    with engine.connect() as conn:
        row = conn.execute(select(events.c.status, events.c.message_id).where(events.c.id == pk)).one()
    assert tuple(row) == ("processing", "live-worker")


def test_a_host_whose_clock_is_ahead_cannot_take_a_live_resource_lease(engine: Any) -> None:
    settings = WorkerSettings(lease_seconds=30)
    here = ResourceLeases(engine, settings)
    ahead = ResourceLeases(engine, settings, clock=lambda: time.time() + HOUR)
    key = ("acme", "skewed")
    assert here.acquire(key, "live-holder")
    assert not ahead.acquire(key, "clock-ahead")
    behind = ResourceLeases(engine, settings, clock=lambda: time.time() - HOUR)
    assert behind.acquire(("acme", "skewed-2"), "clock-behind")
    assert not here.acquire(("acme", "skewed-2"), "live-holder"), "a lease written by a host behind lapsed at once"
