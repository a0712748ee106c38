"""Leases and the order of pending events, straight on the store (SQLite and PostgreSQL).

Hosts disagree about the time: a lease must not be taken over only because one host's clock is
ahead (or another's behind). And both stores must agree with the in-memory order key on where an
event without a sequence goes, also when a resource has more pending events than one pass reads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
from sqlalchemy import insert, select, update

from gateway.config import WorkerSettings
from gateway.models import QUEUED, events, resources
from gateway.queue import EventQueue, create_broker
from tests.support.servers import wait_for
from workers.leases import EventLeases, LeaseKeeper, ResourceLeases, resource_row
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


def claimed_event(engine: Any, settings: WorkerSettings, resource: str, token: str) -> int:
    store_events(engine, resource, [1])
    with engine.connect() as conn:
        pk = conn.execute(select(events.c.id).where(events.c.resource_id == resource)).scalar_one()
    assert EventLeases(engine, settings).claim(pk, token) is not None
    return pk


@contextmanager
def row_locked(engine: Any, pk: int) -> Iterator[None]:
    """Another transaction holds the event's row lock (PostgreSQL) until the block ends."""
    with engine.connect() as conn:
        conn.execute(select(events.c.id).where(events.c.id == pk).with_for_update())
        try:
            yield
        finally:
            conn.rollback()


def lock_waits(engine: Any) -> int:
    """How many of the database's sessions wait for a lock (PostgreSQL)."""
    with engine.connect() as conn:
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        return int(conn.exec_driver_sql(query).scalar_one())


def test_a_renewal_that_waits_for_a_row_lock_past_the_lease_keeps_it(engine: Any, redis_url: str) -> None:
    """Another transaction holds the event's row for longer than a lease; the recovery sweep finds
    the lease expired meanwhile and queues for the row behind the waiting renewal. The renewal
    gets the row first and the sweep then finds the lease live: a lock wait alone never loses a
    lease (which is why the keeper's connection has no lock timeout)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("row locks: PostgreSQL")
    settings = WorkerSettings(lease_seconds=0.6)
    pk = claimed_event(engine, settings, "locked", "holder")
    keeper = LeaseKeeper(engine, settings)
    sweep = RecoverySweep(engine, EventQueue(create_broker(redis_url)), settings)
    swept: list[int] = []
    with keeper.holding_event(pk, "holder"):
        with row_locked(engine, pk):
            renewal = threading.Thread(target=keeper.tick)
            renewal.start()
            wait_for(lambda: lock_waits(engine) == 1, 10, what="the renewal to wait for the row")
            time.sleep(2 * settings.lease_seconds)  # the lease has expired, as far as anyone can see
            takeover = threading.Thread(target=lambda: swept.append(sweep.run_once()))
            takeover.start()
            wait_for(lambda: lock_waits(engine) == 2, 10, what="the sweep to wait for the row too")
        renewal.join(timeout=10)
        takeover.join(timeout=10)
    assert swept == [0]
    with engine.connect() as conn:
        row = conn.execute(select(events.c.status, events.c.message_id).where(events.c.id == pk)).one()
    assert tuple(row) == ("processing", "holder")


def test_a_resource_lease_renewed_after_a_row_lock_wait_expires_a_lease_from_then(engine: Any) -> None:
    """The same for a resource's lease: a renewal that waited for the row stamps an expiry a lease
    from when it got the row, not from when it started waiting."""
    if engine.dialect.name != "postgresql":
        pytest.skip("row locks: PostgreSQL")
    settings = WorkerSettings(lease_seconds=0.6)
    key = ("acme", "locked-resource")
    assert ResourceLeases(engine, settings).acquire(key, "holder")
    keeper = LeaseKeeper(engine, settings)
    with keeper.holding_resource(key, "holder"), engine.connect() as locker:
        locker.execute(select(resources.c.provider).where(resource_row(key)).with_for_update())
        renewal = threading.Thread(target=keeper.tick)
        renewal.start()
        wait_for(lambda: lock_waits(engine) == 1, 10, what="the renewal to wait for the row")
        time.sleep(2 * settings.lease_seconds)  # the lease would have lapsed by now
        locker.rollback()
        renewal.join(timeout=10)
    with engine.connect() as conn:
        expires = conn.execute(select(resources.c.lease_expires_at).where(resource_row(key))).scalar_one()
    assert expires - time.time() > settings.lease_seconds / 2, "the renewal stamped an expiry already past"


def test_a_slow_renewal_is_logged(engine: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A renewal that takes longer than a third of a lease says so (here: it waits for a row lock)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("a row lock: PostgreSQL")
    settings = WorkerSettings(lease_seconds=0.6)
    pk = claimed_event(engine, settings, "slow", "holder")
    keeper = LeaseKeeper(engine, settings)
    caplog.set_level(logging.WARNING, logger="hookgate.worker")
    with keeper.holding_event(pk, "holder"), row_locked(engine, pk):
        blocked = threading.Thread(target=keeper.tick)
        blocked.start()
        wait_for(lambda: lock_waits(engine) == 1, 10, what="the renewal to wait for the row")
        time.sleep(2 * keeper.interval)  # longer than a renewal may take unnoticed
    blocked.join(timeout=10)
    assert not blocked.is_alive()
    assert any("renewing 1 leases took" in r.getMessage() for r in caplog.records), caplog.text
    assert keeper.next_wait() == 0.0, "the next renewal should follow a late one at once"


def test_a_lease_found_taken_over_is_logged(engine: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A renewal that finds the event under another token (the recovery sweep took it over after
    the lease lapsed) says so: the stopping worker of a flaky run logged nothing at all."""
    settings = WorkerSettings(lease_seconds=30)
    pk = claimed_event(engine, settings, "taken", "holder")
    done = claimed_event(engine, settings, "done", "holder")
    keeper = LeaseKeeper(engine, settings)
    caplog.set_level(logging.WARNING, logger="hookgate.worker")
    with keeper.holding_event(pk, "holder"), keeper.holding_event(done, "holder"):
        with engine.begin() as conn:
            conn.execute(update(events).where(events.c.id == pk).values(message_id="the-sweeps"))
            conn.execute(update(events).where(events.c.id == done).values(status="processed"))  # settled: fine
        keeper.tick()
    messages = [r.getMessage() for r in caplog.records if "taken over" in r.getMessage()]
    assert len(messages) == 1, caplog.text
    assert f"[{pk}]" in messages[0]


def test_a_second_holder_s_try_at_a_resource_leaves_the_first_renewed(engine: Any) -> None:
    """Two threads of one worker with events of the same resource in two messages: the second
    one's pass finds the lease held and leaves (its events deferred), and the first one's lease
    is still renewed. The keeper kept one entry a resource, which the second replaced and then
    removed: a pass longer than a lease then lost its resource to another worker, and its
    round's outcome was rolled back after the handlers had run."""
    settings = WorkerSettings(lease_seconds=30)
    key = ("acme", "shared-resource")
    leases = ResourceLeases(engine, settings)
    assert leases.acquire(key, "first")
    keeper = LeaseKeeper(engine, settings)
    with keeper.holding_resource(key, "first"):
        with keeper.holding_resource(key, "second"):
            assert not leases.acquire(key, "second")
        with engine.begin() as conn:  # as if the first renewal had been the last one
            conn.execute(update(resources).where(resource_row(key)).values(lease_expires_at=time.time() + 1))
        keeper.tick()
    with engine.connect() as conn:
        holder, expires = conn.execute(
            select(resources.c.lease_token, resources.c.lease_expires_at).where(resource_row(key))
        ).one()
    assert holder == "first"
    assert expires - time.time() > settings.lease_seconds / 2, "the first holder's lease was not renewed"
