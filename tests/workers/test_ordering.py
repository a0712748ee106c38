"""Per-resource order and reconciliation, end to end: real intake, Redis, worker processes, and a
fake provider API that is a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from typing import Any

import httpx
import orjson
from sqlalchemy import select
from sqlmodel import SQLModel

from gateway.eventlog import replay
from gateway.models import events
from providers import Inbound
from tests.conftest import Hookgate
from tests.support.fake_api import Answer, FakeApi
from tests.support.handlers import LedgerEntry
from tests.support.servers import wait_for
from workers.leases import LeaseKeeper, ResourceLeases
from workers.processing import Processor
from workers.reconcile import Reconciler
from workers.registry import HandlerRegistry

FINISHED = ("processed", "superseded", "failed")


def things_api(fake_api: FakeApi, **extra: Any) -> dict[str, Any]:
    return {"base_url": fake_api.url, "token": "api-token-123", "resource_path": "/v1/things/{resource}", **extra}


def post_thing(
    hookgate: Hookgate, event_id: str, resource: str, version: int, event_type: str = "thing.updated"
) -> None:
    body, headers = hookgate.signed("acme", event_type, event_id, {"id": resource, "version": version})
    response = hookgate.post("acme", body, headers)
    assert response.json() == {"status": "accepted", "id": event_id}


def wait_finished(hookgate: Hookgate, count: int, timeout: float = 90) -> dict[str, str]:
    def finished() -> dict[str, str] | None:
        statuses = hookgate.statuses()
        done = sum(status in FINISHED for status in statuses.values())
        return statuses if done == count else None

    return wait_for(finished, timeout, interval=0.1, what=f"{count} events to finish")


def test_sixty_shuffled_events_are_applied_in_order_per_resource(hookgate: Hookgate, fake_api: FakeApi) -> None:
    names = [f"thing-{i}" for i in range(6)]
    for name in names:
        fake_api.states[f"/v1/things/{name}"] = {"id": name, "version": 10, "name": f"final {name}"}
    window = 3.0
    hookgate.configure_provider("acme", api=things_api(fake_api), ordering={"window_ms": int(window * 1000)})
    hookgate.start_intake()
    hookgate.start_worker(processes=2, threads=4)
    sent = [(name, version) for name in names for version in range(1, 11)]
    random.Random(20261123).shuffle(sent)
    requests = [
        hookgate.signed("acme", "thing.updated", f"{name}-v{version}", {"id": name, "version": version})
        for name, version in sent
    ]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=hookgate.url, timeout=30) as client:
            return await asyncio.gather(
                *(client.post("/webhooks/acme", content=body, headers=headers) for body, headers in requests)
            )

    started = time.monotonic()
    assert {response.status_code for response in asyncio.run(burst())} == {200}
    assert time.monotonic() - started < window / 2, "the burst must arrive well within the window"
    # Inside the window, arrival order does not matter: every event is applied, in sequence order.
    assert set(wait_finished(hookgate, 60).values()) == {"processed"}
    # Stragglers older than what is applied: recorded as superseded, never applied.
    for name in names:
        post_thing(hookgate, f"{name}-stale", name, 3)
    statuses = wait_finished(hookgate, 66)
    assert {statuses[f"{name}-stale"] for name in names} == {"superseded"}
    assert "failed" not in statuses.values()

    calls: dict[str, list[int]] = defaultdict(list)
    for line in hookgate.effects("effect"):
        calls[line[5]].append(int(line[6]))
    for name in names:
        assert calls[name] == sorted(calls[name]), f"{name} saw its events out of order: {calls[name]}"
        assert calls[name][-1] == 10
    applied = {line[2] for line in hookgate.effects("effect")}
    assert applied == {event_id for event_id, status in statuses.items() if status == "processed"}
    # Each processed event's handler ran once; superseded ones reached only the auditor.
    assert len(hookgate.effects("effect")) == len(applied)
    audited = {line[2]: line[7] for line in hookgate.effects("audit")}
    assert {event_id for event_id, flag in audited.items() if flag == "1"} == {
        event_id for event_id, status in statuses.items() if status == "superseded"
    }
    for name in names:
        stored = hookgate.resource("acme", name)
        assert orjson.loads(stored.state) == fake_api.states[f"/v1/things/{name}"]
        assert (stored.applied_sequence, stored.deleted, stored.lease_token) == (10, False, None)
    assert {seen.headers.get("Authorization") for seen in fake_api.seen()} == {"Bearer api-token-123"}


def test_queued_events_of_one_resource_share_one_fetch_and_a_404_marks_it_deleted(
    hookgate: Hookgate, fake_api: FakeApi
) -> None:
    fake_api.states["/v1/things/kept"] = {"id": "kept", "version": 5}
    hookgate.configure_provider("acme", api=things_api(fake_api))
    hookgate.start_intake()
    for version in range(1, 6):
        post_thing(hookgate, f"kept-{version}", "kept", version)
        post_thing(hookgate, f"gone-{version}", "gone", version)
    hookgate.start_worker()  # everything is queued before the first pass
    assert set(wait_finished(hookgate, 10).values()) == {"processed"}
    assert len(fake_api.seen("/v1/things/kept")) == 1
    assert len(fake_api.seen("/v1/things/gone")) == 1
    gone = hookgate.resource("acme", "gone")
    assert (gone.deleted, gone.state, gone.applied_sequence) == (True, None, 5)
    deleted_flags = {line[2]: line[8] for line in hookgate.effects("effect")}
    assert deleted_flags["gone-5"] == "1"
    assert deleted_flags["kept-5"] == "0"


def test_rate_limited_api_is_retried_after_its_retry_after(hookgate: Hookgate, fake_api: FakeApi) -> None:
    path = "/v1/invoices/in_limited"
    fake_api.states[path] = {"id": "in_limited", "object": "invoice", "status": "paid"}
    fake_api.script(path, Answer(429, {"error": {"message": "Too many requests"}}, {"Retry-After": "2"}))
    hookgate.configure_provider("stripe", api={"base_url": fake_api.url, "token": "sk_test_123"})
    hookgate.start_intake()
    hookgate.start_worker()
    body, headers = hookgate.signed("stripe", "invoice.paid", "evt_limited", {"id": "in_limited", "object": "invoice"})
    assert hookgate.post("stripe", body, headers).status_code == 200
    row = hookgate.wait_status("stripe", "evt_limited", "processed")
    first, second = fake_api.seen(path)
    assert second.at - first.at >= 2.0  # the backoff alone would have been 0.1 s
    assert row.attempts == 2
    assert orjson.loads(hookgate.resource("stripe", "in_limited").state)["status"] == "paid"
    assert hookgate.resource("stripe", "in_limited").resource_type == "invoice"


def test_server_errors_and_slow_answers_are_retried(hookgate: Hookgate, fake_api: FakeApi) -> None:
    fake_api.states["/v1/things/flaky"] = {"id": "flaky", "version": 1}
    fake_api.script("/v1/things/flaky", Answer(500, {"error": "oops"}), Answer(200, {"late": True}, delay=2.0))
    hookgate.configure_provider("acme", api=things_api(fake_api, read_timeout_seconds=0.5))
    hookgate.start_intake()
    hookgate.start_worker()
    post_thing(hookgate, "flaky-1", "flaky", 1)
    row = hookgate.wait_status("acme", "flaky-1", "processed")
    assert row.attempts == 3
    assert len(fake_api.seen("/v1/things/flaky")) == 3
    assert orjson.loads(hookgate.resource("acme", "flaky").state) == {"id": "flaky", "version": 1}


def github_issue(url: str) -> dict[str, Any]:
    return {
        "action": "opened",
        "issue": {"id": 7001, "number": 7, "url": url, "updated_at": "2026-11-23T10:00:00Z", "state": "open"},
        "repository": {"id": 1, "full_name": "octo/hello"},
    }


def test_api_down_fails_the_event_and_a_replay_processes_it(hookgate: Hookgate, fake_api: FakeApi) -> None:
    path = "/repos/octo/hello/issues/7"
    hookgate.configure_provider("github", api={"base_url": fake_api.url, "token": "ghp_test"})
    fake_api.stop()
    hookgate.start_intake()
    hookgate.start_worker()
    body, headers = hookgate.signed("github", "issues.opened", "gh-down", github_issue(fake_api.url + path))
    assert hookgate.post("github", body, headers).status_code == 200
    row = hookgate.wait_status("github", "gh-down", "failed")
    assert row.attempts == 3
    assert row.last_error.startswith(f"reconciliation: GET {fake_api.url}{path} failed: ConnectError")
    assert hookgate.effects() == []

    fake_api.states[path] = {"id": 7001, "number": 7, "state": "closed"}
    fake_api.start()
    assert len(replay(hookgate.engine, [str(row.id)]).queued) == 1
    hookgate.wait_status("github", "gh-down", "processed")
    assert orjson.loads(hookgate.resource("github", "issue:7001").state)["state"] == "closed"
    assert [line[2] for line in hookgate.effects()] == ["gh-down"]
    assert fake_api.seen(path)[0].headers["X-GitHub-Api-Version"] == "2022-11-28"


def test_payload_url_on_another_host_is_never_fetched(hookgate: Hookgate, fake_api: FakeApi) -> None:
    elsewhere = FakeApi().start()  # stands in for Redis on localhost, or a metadata address
    try:
        hookgate.configure_provider("github", api={"base_url": fake_api.url, "token": "ghp_test"})
        hookgate.start_intake()
        hookgate.start_worker()
        payload = github_issue(f"{elsewhere.url}/latest/meta-data/iam")
        body, headers = hookgate.signed("github", "issues.opened", "gh-ssrf", payload)
        assert hookgate.post("github", body, headers).status_code == 200
        row = hookgate.wait_status("github", "gh-ssrf", "failed")
        assert row.attempts == 1  # refused for good, not retried
        assert f"refused to fetch {elsewhere.url}/latest/meta-data/iam" in row.last_error
        assert "not on the configured API host" in row.last_error
        assert elsewhere.seen() == []
        assert fake_api.seen() == []
        assert hookgate.effects() == []
    finally:
        elsewhere.stop()


def test_handler_session_writes_commit_with_the_event_or_not_at_all(hookgate: Hookgate) -> None:
    SQLModel.metadata.create_all(hookgate.engine, tables=[LedgerEntry.__table__])  # type: ignore[list-item]
    hookgate.start_intake()
    hookgate.start_worker()
    body, headers = hookgate.signed("acme", "ledger.fail_once", "ledger-1")
    assert hookgate.post("acme", body, headers).status_code == 200
    row = hookgate.wait_status("acme", "ledger-1", "processed")
    assert row.attempts == 2
    with hookgate.engine.connect() as conn:
        rows = conn.execute(select(LedgerEntry.event_id, LedgerEntry.attempt)).all()  # type: ignore[call-overload]
    assert [tuple(r) for r in rows] == [("ledger-1", 2)]
    # The plain handler that succeeded on the first try was not run again.
    assert [line[2] for line in hookgate.effects()] == ["ledger-1"]


def test_a_long_pass_hands_the_rest_of_the_backlog_to_a_new_message(hookgate: Hookgate) -> None:
    """Inside one Dramatiq message a pass stops after its budget; the next event is sent anew."""
    hookgate.start_intake()
    for version in (1, 2, 3):
        post_thing(hookgate, f"budget-{version}", "budget", version)
    settings = hookgate.config.workers
    handlers = HandlerRegistry()
    ran: list[str] = []
    handlers.on("acme")(lambda event: ran.append(event.id))
    keeper = LeaseKeeper(hookgate.engine, settings)
    processor = Processor(hookgate.engine, settings, handlers, Reconciler({}), {}, keeper, pass_budget=0.0)
    first = hookgate.event("acme", "budget-1")
    processor.process(first.id, first.message_id)
    assert ran == ["budget-1"]
    assert hookgate.event("acme", "budget-1").status == "processed"
    handed_over = hookgate.event("acme", "budget-2")
    assert (handed_over.status, handed_over.message_id) == ("queued", None)  # the sweep sends it now
    assert handed_over.sweep_after <= time.time()
    with hookgate.engine.connect() as conn:
        assert conn.execute(select(events.c.status).where(events.c.event_id == "budget-3")).scalar_one() != "processed"
    assert hookgate.resource("acme", "budget").lease_token is None


def test_resource_lease_is_taken_once_and_given_back(hookgate: Hookgate) -> None:
    store = ResourceLeases(hookgate.engine, hookgate.config.workers)
    key = ("acme", "leased")
    assert store.acquire(key, "first")  # a new resource: the row is created holding the lease
    assert not store.acquire(key, "second")
    store.release(key, "second")  # not the holder: changes nothing
    assert not store.acquire(key, "second")
    store.release(key, "first")
    assert store.acquire(key, "second")


def test_a_batch_is_processed_event_by_event_in_order_with_one_fetch(hookgate: Hookgate, fake_api: FakeApi) -> None:
    """HubSpot posts a batch; its events are separate stored events of one resource, applied in
    ``occurredAt`` order whatever their order in the batch, reconciled from the CRM path."""
    fake_api.states["/crm/v3/objects/contacts/7"] = {"id": "7", "version": 3}
    secret = "hubspot-client-secret"
    hookgate.configure_provider(
        "hubspot", type="hubspot", secrets=[secret], api={"base_url": fake_api.url, "token": "t"}
    )
    hookgate.start_intake()
    batch = [
        {"eventId": n, "subscriptionType": "contact.propertyChange", "objectId": 7, "occurredAt": 1_000 + n}
        for n in (3, 1, 2)
    ]
    body = orjson.dumps(batch)
    provider = hookgate.config.providers["hubspot"].provider
    url = f"{hookgate.url}/webhooks/hubspot"
    headers = provider.sign_request(Inbound(body, {}, url), secret=secret, timestamp=int(time.time()))
    assert httpx.post(url, content=body, headers=headers).json()["status"] == "accepted"
    hookgate.start_worker()
    assert set(wait_finished(hookgate, 3).values()) == {"processed"}
    assert [line[2] for line in hookgate.effects("effect")] == ["1", "2", "3"]
    assert {line[9] for line in hookgate.effects("effect")} == {"3"}  # the fetched state's version
    assert len(fake_api.seen("/crm/v3/objects/contacts/7")) == 1
