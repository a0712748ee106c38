"""Pausing a provider: its events are stored and left waiting by real workers, then processed in
each resource's order once it is resumed; ``hookgate providers list|pause|resume``."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import select

from gateway import pausing
from gateway.cli import main
from gateway.config import WorkerSettings
from gateway.models import RESUME, events
from gateway.queue import EventQueue, create_broker
from tests.conftest import Hookgate
from tests.support.rows import insert_waiting
from tests.support.servers import wait_for
from workers.recovery import RecoverySweep


@pytest.fixture
def providers_cli(hookgate: Hookgate, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HOOKGATE_DATABASE_URL", hookgate.database_url)
    monkeypatch.setenv("HOOKGATE_CONFIG", str(hookgate.config_path))

    def run(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(["providers", *args])
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    return run


def acme_rows(hookgate: Hookgate) -> list[Any]:
    with hookgate.engine.connect() as conn:
        return list(conn.execute(select(events).where(events.c.provider == "acme").order_by(events.c.id)))


def post_acme(hookgate: Hookgate, event_id: str, resource: str, version: int) -> None:
    body, headers = hookgate.signed("acme", "thing.updated", event_id, {"id": resource, "version": version})
    assert hookgate.post("acme", body, headers).status_code == 200


def test_a_paused_providers_events_wait_unprocessed_and_run_in_order_after_resume(
    hookgate: Hookgate, providers_cli
) -> None:  # type: ignore[no-untyped-def]
    hookgate.start_intake()
    hookgate.start_worker()
    code, out = providers_cli("pause", "acme")
    assert (code, out.strip()) == (0, "acme: paused")
    # Arrival out of order: unpaused, version 3 would be applied first and 1, 2 superseded.
    arrivals = [("a-3", "obj-a", 3), ("b-2", "obj-b", 2), ("a-1", "obj-a", 1), ("b-1", "obj-b", 1), ("a-2", "obj-a", 2)]
    for event_id, resource, version in arrivals:
        post_acme(hookgate, event_id, resource, version)
    # The worker takes each message and parks the event: no message, no attempt used up.
    wait_for(
        lambda: all(r.message_id is None and r.sweep_after is None for r in acme_rows(hookgate)),
        30,
        what="the worker to park the paused provider's events",
    )
    body, headers = hookgate.signed("stripe", "invoice.paid", "evt_later")
    assert hookgate.post("stripe", body, headers).status_code == 200
    hookgate.wait_status("stripe", "evt_later", "processed")
    deadline = time.monotonic() + 2 * hookgate.config.workers.requeue_after_seconds  # past a sweep's re-send
    while time.monotonic() < deadline:
        rows = acme_rows(hookgate)
        assert {r.status for r in rows} <= {"received", "queued"}, [(r.event_id, r.status) for r in rows]
        assert {r.attempts for r in rows} == {0}
        time.sleep(0.1)
    assert [e[1] for e in hookgate.effects()] == ["stripe"]
    code, out = providers_cli("list")
    assert code == 0
    assert {tuple(line.split()) for line in out.splitlines()} >= {("acme", "paused"), ("stripe", "active")}

    code, out = providers_cli("resume", "acme")
    assert (code, out.strip()) == (0, "acme: active")
    wait_for(
        lambda: {r.status for r in acme_rows(hookgate)} == {"processed"},
        30,
        what="the resumed provider's events to be processed",
    )
    seen = [(e[2], e[7]) for e in hookgate.effects("audit")]  # the audit handler sees superseded events too
    for ids in (["a-1", "a-2", "a-3"], ["b-1", "b-2"]):
        mine = [s for s in seen if s[0] in ids]
        assert [s[0] for s in mine] == ids, seen  # per resource, in sequence order
        assert {s[1] for s in mine} == {"0"}, seen  # none superseded: each was applied
    assert {r.attempts for r in acme_rows(hookgate)} == {1}
    code, out = providers_cli("list")
    assert ("acme", "active") in {tuple(line.split()) for line in out.splitlines()}


def test_resume_makes_the_parked_events_due_for_the_resume_trigger(hookgate: Hookgate) -> None:
    now = time.time()
    parked = insert_waiting(hookgate.engine, "parked", None, now)
    scheduled = insert_waiting(hookgate.engine, "retry-later", None, now, due=False)
    assert pausing.pause(hookgate.engine, "acme")
    assert not pausing.pause(hookgate.engine, "acme")
    assert pausing.park(hookgate.engine, "acme", [(parked, None)]) == 1
    assert pausing.states(hookgate.engine, ["acme", "stripe"]) == {"acme": "paused", "stripe": "active"}
    assert pausing.resume(hookgate.engine, "acme")
    assert not pausing.resume(hookgate.engine, "acme")
    with hookgate.engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(select(events))}
    assert rows[parked].next_trigger == RESUME
    assert rows[parked].sweep_after >= now
    assert rows[scheduled].next_trigger == "initial"  # a retry scheduled before the pause keeps its time
    assert rows[scheduled].sweep_after > now + 3000
    # Once active, nothing is parked, whatever a stale cache believes.
    assert pausing.park(hookgate.engine, "acme", [(parked, None)]) == 0


def test_the_sweep_parks_a_paused_providers_due_events_instead_of_sending_them(
    hookgate: Hookgate, broker_url: str
) -> None:
    now = time.time()
    held = insert_waiting(hookgate.engine, "held", None, now)
    lost = insert_waiting(hookgate.engine, "lost", "gone-token", now)
    pausing.pause(hookgate.engine, "acme")
    settings = WorkerSettings(requeue_after_seconds=60)
    sweep = RecoverySweep(hookgate.engine, EventQueue(create_broker(broker_url)), settings)
    assert sweep.run_once() == 0
    with hookgate.engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(select(events))}
    for pk in (held, lost):
        assert (rows[pk].message_id, rows[pk].sweep_after, rows[pk].attempts) == (None, None, 0)
    pausing.resume(hookgate.engine, "acme")
    sweep.paused.max_age = 0.0  # the worker's cache is at most a second old; no need to wait here
    assert sweep.run_once() == 2


def test_providers_pause_and_resume_name_a_configured_provider(hookgate: Hookgate, providers_cli) -> None:  # type: ignore[no-untyped-def]
    code, out = providers_cli("pause", "acmee")
    assert code == 2
    assert "unknown provider 'acmee'" in out
    assert "acme" in out
    code, out = providers_cli("resume", "nope")
    assert code == 2
    code, out = providers_cli("resume", "acme")
    assert (code, out.strip()) == (0, "acme: active (it was already active)")
    code, out = providers_cli("list")
    assert code == 0
    listed = dict(line.split() for line in out.splitlines())
    assert listed == dict.fromkeys(hookgate.config.providers, "active")


def test_an_event_stored_after_pause_returns_is_not_run_by_a_worker_that_read_the_paused_set_before(
    hookgate: Hookgate,
) -> None:
    """A worker trusts its paused set for up to a second; the claim itself reads the store's
    state, so the event is parked, with no try used, instead of run (found in review)."""
    from workers.leases import LeaseKeeper
    from workers.processing import Processor
    from workers.reconcile import Reconciler
    from workers.registry import HandlerRegistry

    settings = hookgate.config.workers
    handlers = HandlerRegistry()
    ran: list[str] = []
    handlers.on("acme")(lambda event: ran.append(event.id))
    paused = pausing.PausedProviders(hookgate.engine)
    keeper = LeaseKeeper(hookgate.engine, settings)
    processor = Processor(hookgate.engine, settings, handlers, Reconciler({}), {}, keeper, paused=paused)
    assert "acme" not in paused  # read just now: trusted for the next second
    assert pausing.pause(hookgate.engine, "acme")
    alone = insert_waiting(hookgate.engine, "after-pause", "tok-1", time.time())
    of_resource = insert_waiting(hookgate.engine, "after-pause-res", "tok-2", time.time(), resource="obj_1")
    processor.process(alone, "tok-1")
    processor.process(of_resource, "tok-2")
    assert ran == []
    with hookgate.engine.connect() as conn:
        rows = conn.execute(
            select(events.c.status, events.c.attempts, events.c.message_id, events.c.sweep_after).where(
                events.c.id.in_((alone, of_resource))
            )
        ).all()
    assert [tuple(row) for row in rows] == [("queued", 0, None, None)] * 2  # parked
    assert pausing.resume(hookgate.engine, "acme")
    with hookgate.engine.connect() as conn:
        due = conn.execute(select(events.c.next_trigger).where(events.c.sweep_after.is_not(None))).scalars().all()
    assert due == [RESUME, RESUME]
