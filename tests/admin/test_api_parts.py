"""The API over the console's other parts: attempts and failure groups, bulk replay jobs,
pause and resume, refused requests. Each is skipped, saying so, in a build without its part."""

from __future__ import annotations

import httpx
import pytest

from gateway.admin.views import optional
from tests.admin.conftest import store_event
from tests.conftest import Hookgate
from tests.support.servers import wait_for


def requires(module: str) -> None:
    if optional(module) is None:
        pytest.skip(f"pending: {module} is not in this build yet")


def test_attempts_and_failure_groups(console: Hookgate, api: httpx.Client) -> None:
    requires("gateway.attempts")
    console.start_worker()
    for n in range(2):
        assert console.post("acme", *console.signed("acme", "fail.always", f"grp-{n}")).status_code == 200
        console.wait_status("acme", f"grp-{n}", "failed")
    shown = api.get("/events/acme/grp-0").json()
    assert [a["outcome"] for a in shown["attempts"]] == ["retry", "retry", "failed"]
    assert all("ValueError" in a["error"] for a in shown["attempts"])
    groups = api.get("/failure-groups").json()["groups"]
    assert [(g["provider"], g["type"], g["count"]) for g in groups] == [("acme", "fail.always", 2)]
    assert groups[0]["example"]["event_id"] in ("grp-0", "grp-1")
    stats = api.get("/stats").json()
    assert stats["failure_groups"] == groups
    assert stats["failures_last_hour"] == 6


def test_bulk_replay_jobs(console: Hookgate, api: httpx.Client) -> None:
    requires("gateway.replays")
    for n in range(3):
        store_event(console.engine, f"bulk-{n}", status="failed", last_error="boom")
    store_event(console.engine, "bulk-done", status="processed")
    store_event(console.engine, "bulk-github", provider="github", event_type="issues.opened", status="failed")

    assert api.post("/replays", json={"provider": "stripe", "dry_run": True}).json() == {"count": 3}
    assert api.post("/replays", json={"provider": "stripe", "dry_run": True, "force": True}).json() == {"count": 4}
    assert api.post("/replays", json={"status": "bogus", "dry_run": True}).status_code == 400
    assert console.event("stripe", "bulk-0").status == "failed"  # a dry run changes nothing

    # No worker yet: the job waits for one to adopt it, and can be cancelled meanwhile.
    started = api.post("/replays", json={"provider": "stripe"})
    assert started.status_code == 202
    job = started.json()
    assert job["count"] == 3
    assert set(api.get(f"/replays/{job['id']}").json()) >= {"status", "done", "total"}
    cancelled = api.delete(f"/replays/{job['id']}").json()
    assert cancelled["status"] == "cancelled"
    assert api.get("/replays/999999").status_code == 404

    console.start_worker()
    job = api.post("/replays", json={"provider": "stripe", "type": "invoice.*"}).json()

    def done() -> bool:
        return bool(api.get(f"/replays/{job['id']}").json()["status"] == "done")

    wait_for(done, 30, interval=0.1, what="the replay job to be done")
    assert api.get(f"/replays/{job['id']}").json()["done"] == 3
    for n in range(3):
        console.wait_status("stripe", f"bulk-{n}", "processed")
    assert console.event("github", "bulk-github").status == "failed"


def test_pause_and_resume(console: Hookgate, api: httpx.Client) -> None:
    requires("gateway.pausing")
    paused = api.post("/providers/stripe/pause")
    assert paused.status_code == 200
    assert paused.json() == {"provider": "stripe", "state": "paused", "changed": True}
    assert api.post("/providers/stripe/pause").json()["changed"] is False
    states = {p["name"]: p["state"] for p in api.get("/providers").json()["providers"]}
    assert states["stripe"] == "paused"
    assert states["github"] == "active"
    assert api.post("/providers/nope/pause").status_code == 404
    assert api.post("/providers/stripe/explode").status_code == 404
    assert api.post("/providers/stripe/resume").json()["state"] == "active"


def test_refused_requests(console: Hookgate, api: httpx.Client) -> None:
    requires("gateway.rejections")
    body, headers = console.signed("stripe", "invoice.paid", "evt_forged")
    headers["Stripe-Signature"] = headers["Stripe-Signature"][:-4] + "0000"
    assert console.post("stripe", body, headers).status_code == 401

    def logged() -> list:
        return list(api.get("/rejections", params={"provider": "stripe"}).json()["rejections"])

    entry = wait_for(logged, 10, what="the refusal to be logged")[0]
    assert {"at", "provider", "status", "cause", "headers", "body_bytes", "body_sha256"} <= set(entry)
    assert (entry["provider"], entry["status"], entry["cause"]) == ("stripe", 401, "signature_mismatch")
    assert entry["body_bytes"] == len(body)
    signature = headers["Stripe-Signature"]
    assert signature.split("v1=")[1] not in str(entry)  # kept by name only, never its value
