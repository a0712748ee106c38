"""The recovery sweep against a real store and a real Redis, and with real worker processes."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis
from sqlalchemy import select, text, update

from gateway.config import WorkerSettings
from gateway.models import QUEUED, events
from gateway.queue import NAMESPACE, QUEUE_NAME, EventQueue, create_broker, new_token
from tests.conftest import Hookgate
from tests.support.rows import insert_waiting
from tests.support.servers import wait_for
from workers.recovery import RecoverySweep


def test_prefetched_events_of_a_killed_worker_are_processed_long_before_dramatiqs_heartbeat_timeout(
    hookgate: Hookgate, monkeypatch: pytest.MonkeyPatch
) -> None:
    hookgate.start_intake()
    # One thread that the slow event keeps busy, and room to prefetch every other event.
    monkeypatch.setenv("dramatiq_queue_prefetch", "8")
    first = hookgate.start_worker(threads=1)
    monkeypatch.delenv("dramatiq_queue_prefetch")
    body, headers = hookgate.signed("acme", "slow.job", "slow", {"id": "obj-slow", "version": 1})
    assert hookgate.post("acme", body, headers).status_code == 200
    wait_for(lambda: hookgate.effects("started"), 30, what="the slow handler to start")
    ids = [f"prefetched-{i}" for i in range(5)]
    for event_id in ids:
        body, headers = hookgate.signed("acme", "thing.updated", event_id, {"id": f"obj-{event_id}", "version": 1})
        assert hookgate.post("acme", body, headers).status_code == 200

    client = redis.Redis.from_url(hookgate.redis_url, decode_responses=True)

    def all_prefetched() -> bool:
        acks = client.keys(f"{NAMESPACE}:__acks__.*.{QUEUE_NAME}")
        held = {token for key in acks for token in client.smembers(key)}
        tokens = {hookgate.event("acme", event_id).message_id for event_id in ids}
        return len(acks) == 1 and tokens <= held and len(held) == len(ids) + 1

    wait_for(all_prefetched, 30, what="the worker to prefetch every event")
    first.kill()
    killed_at = time.monotonic()
    (hookgate.dir / "release").touch()
    hookgate.start_worker()
    settings = hookgate.config.workers
    # Dramatiq would give the messages back only after its 60 s heartbeat timeout, on a random
    # maintenance pass. The sweep's bound: the killed worker's silence is noticed after
    # requeue_after_seconds, the slow event's lease expires; plus a margin for the new worker's
    # start-up and the processing.
    bound = settings.requeue_after_seconds + settings.lease_seconds + settings.sweep_interval_seconds + 6
    wait_for(lambda: set(hookgate.statuses().values()) == {"processed"}, bound, what="every event processed")
    recovered = time.monotonic() - killed_at
    print(f"recovered {len(ids) + 1} events {recovered:.2f} s after the kill")
    assert recovered < bound
    assert sorted(e[2] for e in hookgate.effects()) == sorted(["slow", *ids])


class RaceWithAFailedTry(EventQueue):
    """Runs, between the sweep's SELECT and its UPDATE, what a worker's failed try commits:
    the retry is scheduled in an hour (a ``Retry-After: 3600``) and the message is cleared."""

    def __init__(self, broker: Any, engine: Any, pk: int, retry_at: float) -> None:
        super().__init__(broker)
        self.engine, self.pk, self.retry_at = engine, pk, retry_at

    def missing(self, tokens: list[str]) -> set[str]:
        with self.engine.begin() as conn:
            conn.execute(
                update(events).where(events.c.id == self.pk).values(message_id=None, sweep_after=self.retry_at)
            )
        return super().missing(tokens)


def test_the_sweep_keeps_a_retry_time_set_after_it_read_the_event(redis_url: str, engine: Any) -> None:
    now = time.time()
    tokens = [new_token() for _ in range(3)]
    pk, *others = [insert_waiting(engine, f"retry-{n}", token, now, attempts=1) for n, token in enumerate(tokens)]
    broker = create_broker(redis_url)
    EventQueue(broker).send(zip([pk, *others], tokens, strict=True))  # Redis holds every message
    retry_at = now + 3600
    settings = WorkerSettings()
    sweep = RecoverySweep(engine, RaceWithAFailedTry(broker, engine, pk, retry_at), settings)
    assert sweep.run_once() == 0
    with engine.connect() as conn:
        row = conn.execute(select(events.c.message_id, events.c.sweep_after).where(events.c.id == pk)).one()
        rechecks = conn.scalars(select(events.c.sweep_after).where(events.c.id.in_(others))).all()
    assert row.message_id is None
    assert row.sweep_after == pytest.approx(retry_at, abs=1)
    # The events whose messages Redis still holds are looked at again later.
    assert rechecks == [pytest.approx(now + settings.requeue_after_seconds, abs=2)] * 2


def test_the_sweep_keeps_a_retry_time_a_pass_set_on_a_held_event_after_it_read_it(redis_url: str, engine: Any) -> None:
    """A held event (no message: its ordering window, a scheduled retry) is due, and a resource's
    pass claims it, tries it and schedules its retry in an hour while the sweep is between its
    SELECT and its UPDATE: the retry time stands, and the sweep does not send it at once."""
    now = time.time()
    held = insert_waiting(engine, "held", None, now, resource="held-resource", status=QUEUED)
    token = new_token()
    other = insert_waiting(engine, "other", token, now)  # its message is in Redis: the sweep asks
    broker = create_broker(redis_url)
    EventQueue(broker).send([(other, token)])
    retry_at = now + 3600
    sweep = RecoverySweep(engine, RaceWithAFailedTry(broker, engine, held, retry_at), WorkerSettings())
    assert sweep.run_once() == 0
    with engine.connect() as conn:
        row = conn.execute(select(events.c.message_id, events.c.sweep_after).where(events.c.id == held)).one()
    assert row.message_id is None
    assert row.sweep_after == pytest.approx(retry_at, abs=1)


def test_the_sweep_locks_the_events_it_changes_in_key_order(redis_url: str, engine: Any) -> None:
    """The sweep changes a held event that came due (it sends it) and an event whose message Redis
    still holds (looked at again later), the held one first by key. Another transaction locks
    the held event, then, once the sweep waits for it, the other one: it gets it, and the sweep
    then goes on. (The sweep locked the rows it looks at again before those it sends: with the
    second already its, the two transactions deadlocked, and PostgreSQL undid the sweep's.)"""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite locks the whole database, not rows")
    now = time.time()
    held = insert_waiting(engine, "held-first", None, now)
    token = new_token()
    present = insert_waiting(engine, "present-second", token, now)
    assert held < present
    broker = create_broker(redis_url)
    EventQueue(broker).send([(present, token)])
    sweep = RecoverySweep(engine, EventQueue(broker), WorkerSettings())
    outcome: list[object] = []

    def sweep_once() -> None:
        try:
            outcome.append(sweep.run_once())
        except Exception as exc:
            outcome.append(exc)

    with engine.connect() as other:
        other.exec_driver_sql("SET LOCAL deadlock_timeout = '20s'")  # the sweep would be the one undone
        other.execute(select(events.c.id).where(events.c.id == held).with_for_update())
        sweeping = threading.Thread(target=sweep_once, daemon=True)
        sweeping.start()

        def sweep_waits() -> bool:
            with engine.connect() as looking:  # a view of its own: pg_stat_activity is a snapshot
                waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE :update"
                return bool(looking.execute(text(waiting), {"update": "UPDATE%"}).scalar())

        wait_for(sweep_waits, 30, interval=0.02, what="the sweep to wait for the held event")
        other.execute(select(events.c.id).where(events.c.id == present).with_for_update())
        other.commit()
    sweeping.join(30)
    assert outcome == [1]
