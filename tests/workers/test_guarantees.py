"""The guarantees under ordinary operations, each with the real processes an operator runs:
a killed or stopped worker, a graceful stop, more threads than pooled connections, a hung
handler, several slow handlers, and stored events that no provider code can make sense of."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import orjson
import redis
import stripe
from sqlalchemy import insert, select
from sqlmodel import SQLModel

from gateway.models import QUEUED, events
from gateway.queue import NAMESPACE, EventQueue, create_broker, new_token
from tests.conftest import STRIPE_SECRET, Hookgate
from tests.support.fake_api import FakeApi
from tests.support.handlers import DeferredChild, LedgerEntry
from tests.support.servers import wait_for


def ledger_rows(hookgate: Hookgate) -> list[tuple[str, int]]:
    with hookgate.engine.connect() as conn:
        rows = conn.execute(select(LedgerEntry.event_id, LedgerEntry.attempt)).all()  # type: ignore[call-overload]
    return [tuple(row) for row in rows]


def create_ledger(hookgate: Hookgate) -> None:
    SQLModel.metadata.create_all(hookgate.engine, tables=[LedgerEntry.__table__])  # type: ignore[list-item]


def started_once_each(hookgate: Hookgate) -> Counter[str]:
    return Counter(line[2] for line in hookgate.effects("started"))


def stays(predicate: object, seconds: float, what: str) -> None:
    """Assert that ``predicate`` holds at every poll for ``seconds`` (an absence cannot be awaited)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate(), what  # type: ignore[operator]
        time.sleep(0.05)


def test_session_writes_of_a_killed_worker_never_commit(hookgate: Hookgate) -> None:
    """Killed after a session handler wrote and before the event's commit: the writes vanish."""
    create_ledger(hookgate)
    hookgate.start_intake()
    first = hookgate.start_worker()
    assert hookgate.post("acme", *hookgate.signed("acme", "ledger.slow_after", "sess-kill")).status_code == 200
    wait_for(lambda: hookgate.effects("started"), 30, what="the handler after the session handler to start")
    first.kill()
    assert ledger_rows(hookgate) == [], "the session's writes must not be committed before the event's outcome"
    (hookgate.dir / "release").touch()
    hookgate.start_worker()
    row = hookgate.wait_status("acme", "sess-kill", "processed", timeout=60)
    assert row.attempts == 2
    assert ledger_rows(hookgate) == [("sess-kill", 2)]


def test_a_worker_stopped_past_its_lease_commits_nothing_when_it_resumes(hookgate: Hookgate) -> None:
    """SIGSTOP past the lease, another worker takes over, SIGCONT: the stale worker is fenced off.

    On PostgreSQL the stopped worker has written through a handler session. On SQLite a session
    holds the one write lock, so a stopped session would stop every writer: there the handler
    writes no session rows, and the fence is shown on the event's status alone.
    """
    postgres = hookgate.engine.dialect.name == "postgresql"
    create_ledger(hookgate)
    hookgate.start_intake()
    stale = hookgate.start_worker()
    event_type = "ledger.slow_after" if postgres else "slow.stop"
    assert hookgate.post("acme", *hookgate.signed("acme", event_type, "sess-stop")).status_code == 200
    wait_for(lambda: hookgate.effects("started"), 30, what="the handler to start")
    os.killpg(stale.process.pid, signal.SIGSTOP)
    try:
        hookgate.start_worker()
        wait_for(lambda: len(hookgate.effects("started")) == 2, 30, what="another worker to take the event over")
        (hookgate.dir / "release").touch()
        row = hookgate.wait_status("acme", "sess-stop", "processed", timeout=30)
    finally:
        os.killpg(stale.process.pid, signal.SIGCONT)
    assert row.attempts == 2
    # The resumed worker finishes its handler, then tries to commit with a token that is no longer the event's.
    wait_for(lambda: len(hookgate.effects("released")) == 2, 30, what="the resumed worker's handler to return")
    unchanged = (hookgate.event("acme", "sess-stop").status, hookgate.event("acme", "sess-stop").attempts)
    assert unchanged == ("processed", 2)
    stays(lambda: ledger_rows(hookgate) == ([("sess-stop", 2)] if postgres else []), 1.0, "a stale write committed")
    assert hookgate.event("acme", "sess-stop").updated_at == row.updated_at


def test_a_graceful_stop_keeps_leases_until_running_handlers_finish(hookgate: Hookgate) -> None:
    """SIGTERM while a handler runs: no other worker starts it, and it finishes once, cleanly;
    what the stopping worker had prefetched is run by another worker meanwhile."""
    hookgate.start_intake()
    stopping = hookgate.start_worker(threads=1)  # it holds 2 messages: the one running and one more
    assert hookgate.post("acme", *hookgate.signed("acme", "slow.deploy", "deploy-1")).status_code == 200
    wait_for(lambda: hookgate.effects("started"), 30, what="the handler to start")
    prefetched = [f"behind-{n}" for n in range(2)]
    for event_id in prefetched:
        signed = hookgate.signed("acme", "thing.updated", event_id, {"id": event_id, "version": 1})
        assert hookgate.post("acme", *signed).status_code == 200
    wait_for(lambda: len(held_by_a_worker(hookgate)) == 2, 10, what="the stopping worker to prefetch one")
    # As a deploy (Docker, Kubernetes, systemd with KillMode=mixed) does: SIGTERM to the main
    # process, which passes it on to its worker processes once. A second SIGTERM is Dramatiq's "kill now".
    stopping.process.send_signal(signal.SIGTERM)
    hookgate.start_worker()
    for event_id in prefetched:  # long before the running handler is released
        hookgate.wait_status("acme", event_id, "processed", timeout=10)
    lease = hookgate.config.workers.lease_seconds
    stays(lambda: len(hookgate.effects("started")) == 1, 3 * lease, "the handler was started a second time")
    (hookgate.dir / "release").touch()
    row = hookgate.wait_status("acme", "deploy-1", "processed", timeout=30)
    assert row.attempts == 1
    assert stopping.process.wait(timeout=30) == 0
    log = stopping.log.read_text()
    assert "Traceback" not in log, log
    assert "IntegrityError" not in log
    assert sorted(line[2] for line in hookgate.effects()) == ["behind-0", "behind-1", "deploy-1"]


def held_by_a_worker(hookgate: Hookgate) -> set[str]:
    """Message ids fetched by some worker (running or prefetched) and not acked yet."""
    client = redis.Redis.from_url(hookgate.redis_url, decode_responses=True)
    try:
        return set().union(*(client.smembers(key) for key in client.scan_iter(f"{NAMESPACE}:__acks__.*")))
    finally:
        client.close()


def test_more_threads_than_pooled_connections_run_each_handler_once(hookgate: Hookgate) -> None:
    """Every thread busy in a handler: lease renewal must still get through to the store."""
    pool = hookgate.engine.pool
    capacity = pool.size() + pool._max_overflow  # type: ignore[attr-defined]
    threads = capacity + 4
    hookgate.start_intake()
    busy = hookgate.start_worker(threads=threads)
    ids = [f"busy-{i}" for i in range(threads)]
    for event_id in ids:  # each of its own resource, so that they run side by side
        signed = hookgate.signed("acme", "slow.busy", event_id, {"id": event_id, "version": 1})
        assert hookgate.post("acme", *signed).status_code == 200
    wait_for(lambda: len(hookgate.effects("started")) == threads, 60, what="every thread to be in a handler")
    hookgate.start_worker(threads=1)  # its sweep would take over any lease that lapses
    lease = hookgate.config.workers.lease_seconds
    stays(lambda: max(started_once_each(hookgate).values()) == 1, 3 * lease, "a handler was started twice")
    (hookgate.dir / "release").touch()
    wait_for(lambda: set(hookgate.statuses().values()) == {"processed"}, 60, what="every event processed")
    assert sorted(line[2] for line in hookgate.effects()) == sorted(ids)
    assert "Traceback" not in busy.log.read_text()


def test_a_handler_blocked_in_a_system_call_gives_its_event_up(hookgate: Hookgate, silent_server: object) -> None:
    """Renewal stops after the time limit and a grace: the event is taken over, not held forever."""
    hookgate.configure_workers(handler_time_limit_seconds=2)
    hookgate.start_intake()
    hookgate.start_worker(threads=2)
    hookgate.start_worker(threads=2)
    assert hookgate.post("acme", *hookgate.signed("acme", "hang.recv", "hung-1")).status_code == 200
    wait_for(lambda: hookgate.effects("started"), 30, what="the handler to block")
    row = hookgate.wait_status("acme", "hung-1", "processed", timeout=40)
    assert row.attempts == 2
    assert hookgate.effects("unblocked") == []  # the first try is still blocked: it was not waited for


def test_the_time_limit_applies_to_each_handler_not_to_the_whole_event(hookgate: Hookgate) -> None:
    """Two handlers of 1.6 s each under a 2 s limit both succeed."""
    hookgate.configure_workers(handler_time_limit_seconds=2)
    hookgate.start_intake()
    hookgate.start_worker()
    assert hookgate.post("acme", *hookgate.signed("acme", "nap.twice", "nap-1")).status_code == 200
    row = hookgate.wait_status("acme", "nap-1", "processed", timeout=30)
    assert row.attempts == 1
    assert [line[2] for line in hookgate.effects("nap2")] == ["nap-1"]


def store_raw_event(hookgate: Hookgate, provider: str, event_id: str, body: bytes, resource: str | None) -> int:
    """An event as the intake would have stored it, handed to the broker."""
    token = new_token()
    now = time.time()
    with hookgate.engine.begin() as conn:
        pk = conn.execute(
            insert(events)
            .values(
                provider=provider,
                event_id=event_id,
                event_type="thing.updated",
                resource_id=resource,
                body=body,
                headers=orjson.dumps({}).decode(),
                received_at=now,
                status=QUEUED,
                message_id=token,
                sweep_after=now + 60,
                updated_at=now,
            )
            .returning(events.c.id)
        ).scalar_one()
    EventQueue(create_broker(hookgate.redis_url)).send([(pk, token)])
    return pk


def test_a_stored_body_the_provider_cannot_decode_fails_at_once_with_the_reason(hookgate: Hookgate) -> None:
    hookgate.start_worker()
    store_raw_event(hookgate, "acme", "broken-body", b"{not json", None)
    store_raw_event(hookgate, "acme", "broken-body-2", b"[1, 2", "thing-1")
    for event_id in ("broken-body", "broken-body-2"):
        row = hookgate.wait_status("acme", event_id, "failed", timeout=30)
        assert row.attempts == 1
        assert "JSON" in row.last_error, row.last_error


def test_a_payload_url_with_a_control_character_fails_the_event_at_once_with_the_reason(
    hookgate: Hookgate, fake_api: FakeApi
) -> None:
    """httpx would refuse this URL (InvalidURL); the API guard refuses it first, by name."""
    hookgate.configure_provider("stripe", api={"base_url": fake_api.url, "token": "sk_test_123"})
    hookgate.start_intake()
    hookgate.start_worker()
    body = orjson.dumps(
        {
            "id": "evt_badurl",
            "object": "event",
            "type": "v1.billing.meter.error_report_triggered",
            "created": 1,
            "related_object": {"id": "mtr_1", "type": "billing.meter", "url": "/v1/billing/meters/m\x01tr"},
        }
    )
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), STRIPE_SECRET)
    assert hookgate.post("stripe", body, {"Stripe-Signature": header}).status_code == 200
    row = hookgate.wait_status("stripe", "evt_badurl", "failed", timeout=30)
    assert row.attempts == 1
    assert row.last_error.startswith("reconciliation: refused to fetch"), row.last_error
    assert "/v1/billing/meters/m\\x01tr" in row.last_error  # the control character escaped, not written


def test_a_commit_the_database_refuses_is_recorded_as_the_events_failure(hookgate: Hookgate) -> None:
    """A session row with a deferred foreign key fails the event's COMMIT, not a handler call."""
    create_ledger(hookgate)
    SQLModel.metadata.create_all(hookgate.engine, tables=[DeferredChild.__table__])  # type: ignore[list-item]
    hookgate.start_intake()
    worker = hookgate.start_worker()
    assert hookgate.post("acme", *hookgate.signed("acme", "orphan.write", "orphan-1")).status_code == 200
    row = hookgate.wait_status("acme", "orphan-1", "failed", timeout=30)
    assert row.attempts == 3
    assert row.last_error.startswith("recording the outcome failed: IntegrityError"), row.last_error
    with hookgate.engine.connect() as conn:
        assert conn.execute(select(DeferredChild.id)).all() == []  # type: ignore[call-overload]
    # The worker goes on with the next event.
    assert hookgate.post("acme", *hookgate.signed("acme", "thing.updated", "after-orphan")).status_code == 200
    hookgate.wait_status("acme", "after-orphan", "processed")
    assert worker.process.poll() is None
