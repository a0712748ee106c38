"""The admin API's contract: the event list and its filters, keyset pages, one event, replay,
resources and stats, over real HTTP against the real store."""

from __future__ import annotations

import base64
import time

import httpx
from sqlalchemy import insert

from gateway.admin import views
from gateway.models import attempts, handler_runs
from tests.admin.conftest import store_event, store_resource
from tests.conftest import Hookgate

LIST_FIELDS = {"provider", "event_id", "type", "resource_id", "status", "attempts", "received_at", "last_error"}


def ids(answer: httpx.Response) -> list[str]:
    assert answer.status_code == 200, answer.text
    return [item["event_id"] for item in answer.json()["events"]]


def test_the_list_filters_combine_and_come_newest_first(console: Hookgate, api: httpx.Client) -> None:
    engine = console.engine
    store_event(engine, "e1", event_type="invoice.paid", received_at=1000)
    store_event(engine, "e2", event_type="invoice.created", status="failed", last_error="ValueError: Card Declined")
    store_event(engine, "e3", provider="github", event_type="issues.opened", resource="res-9")
    store_event(engine, "e4", event_type="customer.updated", resource="cus_1", status="queued")
    store_event(engine, "e5", event_type="invoiceXpaid")  # not under invoice.*

    listed = api.get("/events").json()
    assert [item["event_id"] for item in listed["events"]] == ["e5", "e4", "e3", "e2", "e1"]
    assert listed["next_cursor"] is None
    assert set(listed["events"][0]) >= LIST_FIELDS
    assert ids(api.get("/events", params={"type": "invoice.*"})) == ["e2", "e1"]
    assert ids(api.get("/events", params={"type": "invoice.*", "status": "failed"})) == ["e2"]
    assert ids(api.get("/events", params={"provider": "github"})) == ["e3"]
    assert ids(api.get("/events", params={"provider": "github", "status": "failed"})) == []
    assert ids(api.get("/events", params={"event_id": "e4"})) == ["e4"]
    assert ids(api.get("/events", params={"resource_id": "cus_1"})) == ["e4"]
    assert ids(api.get("/events", params={"q": "e3"})) == ["e3"]  # an event id
    assert ids(api.get("/events", params={"q": "res-9"})) == ["e3"]  # or a resource id
    assert ids(api.get("/events", params={"error": "card declined"})) == ["e2"]  # any case
    assert ids(api.get("/events", params={"until": "1001"})) == ["e1"]
    assert ids(api.get("/events", params={"since": "1970-01-01T00:16:41Z"})) == ["e5", "e4", "e3", "e2"]
    for bad in ({"status": "bogus"}, {"type": "in*voice"}, {"since": "yesterday"}, {"cursor": "zz"}):
        answer = api.get("/events", params=bad)
        assert answer.status_code == 400, bad
        assert answer.json()["error"]
    for limit in ("0", "-1", "x", "501"):
        assert api.get("/events", params={"limit": limit}).status_code == 400
    assert len(api.get("/events", params={"limit": "200"}).json()["events"]) == 5


def test_keyset_pages_return_every_event_once_while_events_arrive(console: Hookgate, api: httpx.Client) -> None:
    before = [f"old-{n}" for n in range(45)]
    for event_id in before:
        store_event(console.engine, event_id, status="failed" if len(event_id) % 2 else "processed")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "10", **({"cursor": cursor} if cursor else {})}
        page = api.get("/events", params=params).json()
        seen += [item["event_id"] for item in page["events"]]
        pages += 1
        # New events arrive between pages: they are newer than the first page, never in a later one.
        store_event(console.engine, f"new-{pages}")
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 5
    assert seen == list(reversed(before))  # each exactly once, newest first, none of the new ones


def test_one_event_whole(console: Hookgate, api: httpx.Client) -> None:
    pk = store_event(
        console.engine, "evt_show", resource="cus_7", body=b'{"id": "evt_show", "n": 1}', status="processed"
    )
    with console.engine.begin() as conn:
        conn.execute(
            insert(handler_runs).values(event_pk=pk, handler="tests.support.handlers.stripe_handler", finished_at=5.0)
        )
    shown = api.get("/events/stripe/evt_show").json()
    assert shown["event_id"] == "evt_show"
    assert shown["status"] == "processed"
    assert shown["headers"] == {"stripe-signature": "t=1,v1=abc"}
    assert shown["body"] == '{"id": "evt_show", "n": 1}'
    assert shown["body_encoding"] == "utf-8"
    assert isinstance(shown["attempts"], list)
    assert [run["handler"] for run in shown["handler_runs"]] == ["tests.support.handlers.stripe_handler"]
    assert shown["resource"] is None  # not reconciled
    store_resource(console.engine, "stripe", "cus_7", '{"version": 3}', sequence=3)
    assert api.get("/events/stripe/evt_show").json()["resource"]["state"] == {"version": 3}

    raw = b"\xff\xfe binary \x00"
    store_event(console.engine, "evt/bin", body=raw)  # an id with a slash, and a body that is not UTF-8
    binary = api.get("/events/stripe/evt/bin").json()
    assert binary["body_encoding"] == "base64"
    assert base64.b64decode(binary["body"]) == raw
    assert api.get("/events/stripe/nope").status_code == 404
    assert api.get("/events/github/evt_show").status_code == 404


def test_replay_one_event(console: Hookgate, api: httpx.Client) -> None:
    store_event(console.engine, "done", status="processed")
    store_event(console.engine, "broken", status="failed", last_error="boom")
    store_event(console.engine, "waiting", status="queued")

    refused = api.post("/events/stripe/done/replay")
    assert refused.status_code == 409
    assert "processed" in refused.json()["error"]
    assert console.event("stripe", "done").status == "processed"
    assert api.post("/events/stripe/done/replay", json={"force": False}).status_code == 409
    forced = api.post("/events/stripe/done/replay", json={"force": True})
    assert forced.status_code == 202, forced.text
    assert console.event("stripe", "done").status == "queued"
    assert console.event("stripe", "done").round == 1  # a new round: every handler runs again

    queued = api.post("/events/stripe/broken/replay", json={})
    assert queued.status_code == 202
    assert queued.json()["status"] == "queued"
    row = console.event("stripe", "broken")
    assert (row.status, row.round, row.next_trigger) == ("queued", 0, "replay")

    in_flight = api.post("/events/stripe/waiting/replay")
    assert in_flight.status_code == 409
    assert "in flight" in in_flight.json()["error"]
    assert api.post("/events/stripe/ghost/replay").status_code == 404
    assert api.post("/events/stripe/broken/replay", json={"force": "yes"}).status_code == 400
    assert api.post("/events/stripe/broken/replay", content=b"[1]").status_code == 400


def test_replaying_a_failed_event_through_the_api_ends_processed_without_rerunning_what_succeeded(
    console: Hookgate, api: httpx.Client
) -> None:
    console.start_worker()
    assert console.post("acme", *console.signed("acme", "fail.until_fixed", "api-fix")).status_code == 200
    failed = console.wait_status("acme", "api-fix", "failed")
    assert "not fixed yet" in api.get("/events/acme/api-fix").json()["last_error"]
    (console.dir / "fixed").touch()
    assert api.post("/events/acme/api-fix/replay").status_code == 202
    done = console.wait_status("acme", "api-fix", "processed")
    assert done.attempts == failed.attempts + 1
    assert [line[2] for line in console.effects("sibling")] == ["api-fix"]  # it had succeeded: not run again
    assert [line[2] for line in console.effects()] == ["api-fix"]


def test_a_resource_and_its_events(console: Hookgate, api: httpx.Client) -> None:
    store_resource(console.engine, "acme", "thing-1", '{"version": 2, "name": "x"}', sequence=2)
    store_event(console.engine, "t1", provider="acme", resource="thing-1", event_type="thing.updated")
    store_event(console.engine, "t2", provider="acme", resource="thing-1", event_type="thing.updated")
    store_event(console.engine, "other", provider="acme", resource="thing-2")
    shown = api.get("/resources/acme/thing-1").json()
    assert shown["resource"]["state"] == {"version": 2, "name": "x"}
    assert shown["resource"]["applied_sequence"] == 2
    assert [item["event_id"] for item in shown["events"]] == ["t2", "t1"]
    # Events but no reconciled state yet; then neither.
    assert api.get("/resources/acme/thing-2").json()["resource"] is None
    assert api.get("/resources/acme/thing-3").status_code == 404


def test_stats(console: Hookgate, api: httpx.Client) -> None:
    now = time.time()
    store_event(console.engine, "s1", status="processed")
    store_event(console.engine, "s2", status="failed", last_error="boom")
    store_event(console.engine, "s3", provider="github", status="queued", received_at=now - 120)
    pk = store_event(console.engine, "s4", provider="github", status="received", received_at=now - 30)
    with console.engine.begin() as conn:
        for n, (outcome, finished) in enumerate((("retry", now - 10), ("failed", now - 5), ("failed", now - 7200))):
            conn.execute(
                insert(attempts).values(
                    event_pk=pk,
                    attempt=n + 1,
                    started_at=finished - 1,
                    finished_at=finished,
                    outcome=outcome,
                    trigger="initial",
                    worker="host:1",
                )
            )
    stats = api.get("/stats").json()
    assert stats["counts"]["stripe"]["processed"] == 1
    assert stats["counts"]["stripe"]["failed"] == 1
    assert stats["counts"]["github"]["queued"] == 1
    assert stats["counts"]["slack"]["failed"] == 0  # every configured provider is listed
    assert stats["totals"]["failed"] == 1
    assert 110 < stats["oldest_unfinished_age_seconds"] < 200
    assert stats["failures_last_hour"] == 2  # the one two hours ago is not counted
    assert stats["count_cap"] == views.COUNT_CAP


def test_status_counts_stop_at_the_cap(console: Hookgate) -> None:
    for n in range(5):
        store_event(console.engine, f"p{n}", status="processed", provider="stripe" if n < 3 else "github")
    store_event(console.engine, "f1", status="failed")
    counts = views.status_counts(console.engine, cap=3)
    assert counts.capped == {"processed"}
    assert counts.for_provider(None)["processed"] == "3+"
    assert counts.for_provider(None)["failed"] == 1
    assert counts.for_provider("github")["processed"] == "2+"  # among the newest 4 read
