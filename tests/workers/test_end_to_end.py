"""Real HTTP → real store → real broker (Redis, or RabbitMQ in the broker pass) → real Dramatiq
worker processes → handler plugins."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import UTC, datetime

import httpx
import orjson
import pytest
import redis
import standardwebhooks
import stripe

from gateway.heap import GEN0_THRESHOLD
from gateway.queue import EventQueue, create_broker
from tests.conftest import ACME_SECRET, ACME_SECRET_NEW, STANDARD_SECRET, STRIPE_SECRET, Hookgate
from tests.support.servers import wait_for

pytestmark = pytest.mark.broker


def test_stripe_github_and_standard_events_run_their_handler_exactly_once(hookgate: Hookgate) -> None:
    hookgate.start_intake()
    hookgate.start_worker()
    stripe_body = orjson.dumps(
        {"id": "evt_s", "type": "invoice.paid", "created": 1, "data": {"object": {"id": "in_1"}}}
    )
    stripe_header = stripe.WebhookSignature.generate_signature_header(stripe_body.decode(), STRIPE_SECRET)
    standard_body = orjson.dumps({"type": "user.created", "data": {"id": "user_1"}})
    signature = standardwebhooks.Webhook(STANDARD_SECRET).sign("msg_1", datetime.now(UTC), standard_body.decode())
    standard_headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(time.time())),
        "webhook-signature": signature,
    }
    sent = [
        ("stripe", "evt_s", stripe_body, {"Stripe-Signature": stripe_header}),
        ("github", "gh_1", *hookgate.signed("github", "issues.opened", "gh_1")),
        ("standard", "msg_1", standard_body, standard_headers),
    ]
    for provider, event_id, body, headers in sent:
        response = hookgate.post(provider, body, headers)
        assert (response.status_code, response.json()) == (200, {"status": "accepted", "id": event_id})
    for provider, event_id, _, _ in sent:
        row = hookgate.wait_status(provider, event_id, "processed")
        assert row.attempts == 1
    # Sending them all again changes nothing.
    for provider, _, body, headers in sent:
        assert hookgate.post(provider, body, headers).json()["status"] == "duplicate"
    effects = sorted((e[1], e[2]) for e in hookgate.effects())
    assert effects == [("github", "gh_1"), ("standard", "msg_1"), ("stripe", "evt_s")]


def test_twenty_concurrent_copies_run_the_handler_once(hookgate: Hookgate) -> None:
    hookgate.start_intake()
    hookgate.start_worker(threads=8)
    body, headers = hookgate.signed("acme", "thing.updated", "dup-1")

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=hookgate.url, timeout=30) as client:
            return await asyncio.gather(
                *(client.post("/webhooks/acme", content=body, headers=headers) for _ in range(20))
            )

    assert [r.status_code for r in asyncio.run(burst())] == [200] * 20
    hookgate.wait_status("acme", "dup-1", "processed")
    assert hookgate.count() == 1
    # The worker's queue drains; nothing else runs the handler.
    queue = EventQueue(create_broker(hookgate.broker_url))
    wait_for(lambda: queue.backlog() == 0 if queue.publisher else llen(hookgate) == 0, 10, what="queue empty")
    assert len(hookgate.effects()) == 1


def test_key_rotation_either_secret_verifies_end_to_end(hookgate: Hookgate) -> None:
    hookgate.start_intake()
    for event_id, secret in (("rot-old", ACME_SECRET), ("rot-new", ACME_SECRET_NEW)):
        body, headers = hookgate.config.providers["acme"].provider.signed_request(
            "thing.updated", event_id=event_id, secret=secret
        )
        assert hookgate.post("acme", body, headers).json() == {"status": "accepted", "id": event_id}
    body, headers = hookgate.config.providers["acme"].provider.signed_request(
        "thing.updated", event_id="rot-bad", secret="a-retired-secret"
    )
    assert hookgate.post("acme", body, headers).status_code == 401


def test_failing_handler_retries_then_fails_and_siblings_are_not_rerun(hookgate: Hookgate) -> None:
    hookgate.start_intake()
    hookgate.start_worker()
    for event_id, event_type in (("once", "fail.once"), ("always", "fail.always")):
        assert hookgate.post("acme", *hookgate.signed("acme", event_type, event_id)).status_code == 200
    row = hookgate.wait_status("acme", "once", "processed")
    assert row.attempts == 2
    row = hookgate.wait_status("acme", "always", "failed")
    assert row.attempts == 3  # max_attempts in the test configuration
    assert "tests.support.handlers.acme_handler raised ValueError: boom on try 3" in row.last_error
    # The sibling handler succeeded on the first try and was never run again.
    assert sorted(e[2] for e in hookgate.effects("sibling")) == ["always", "once"]
    assert [e[2] for e in hookgate.effects()] == ["once"]


def test_a_handler_over_the_time_limit_fails_like_any_other(hookgate: Hookgate) -> None:
    hookgate.configure_workers(handler_time_limit_seconds=1, max_attempts=2)
    hookgate.start_intake()
    hookgate.start_worker()
    assert hookgate.post("acme", *hookgate.signed("acme", "slow.forever", "hang")).status_code == 200
    row = hookgate.wait_status("acme", "hang", "failed", timeout=60)
    assert row.attempts == 2
    assert "tests.support.handlers.acme_handler exceeded the handler time limit" in row.last_error
    assert len(hookgate.effects("started")) == 2
    assert hookgate.effects() == []


def test_worker_killed_mid_handler_the_event_still_ends_processed_once(hookgate: Hookgate) -> None:
    hookgate.start_intake()
    first = hookgate.start_worker()
    assert hookgate.post("acme", *hookgate.signed("acme", "slow.job", "kill-me")).status_code == 200
    started = wait_for(lambda: hookgate.effects("started"), 30, what="the handler to start")
    handler_pid = int(started[0][4])
    os.kill(handler_pid, signal.SIGKILL)
    first.kill()
    assert hookgate.event("acme", "kill-me").status == "processing"
    (hookgate.dir / "release").touch()
    hookgate.start_worker()
    row = hookgate.wait_status("acme", "kill-me", "processed", timeout=60)
    assert row.attempts == 2
    assert len(hookgate.effects("started")) == 2
    assert [e[2] for e in hookgate.effects()] == ["kill-me"]


def llen(hookgate: Hookgate) -> int:
    return int(redis.Redis.from_url(hookgate.redis_url).llen("hookgate:hookgate"))


def test_flushall_while_events_are_queued_loses_nothing(hookgate: Hookgate, redis_url: str) -> None:
    hookgate.start_intake()
    ids = [f"flush-{i}" for i in range(30)]
    for event_id in ids:
        assert hookgate.post("acme", *hookgate.signed("acme", "thing.updated", event_id)).status_code == 200
    client = redis.Redis.from_url(redis_url)
    wait_for(lambda: client.llen("hookgate:hookgate") == len(ids), 10, what="all events enqueued")
    client.flushall()
    flushed_at = time.monotonic()
    hookgate.start_worker()
    # The documented bound is requeue_after_seconds + sweep_interval_seconds (1.6 s here), plus
    # the worker's start-up and the processing itself.
    settings = hookgate.config.workers
    bound = settings.requeue_after_seconds + settings.sweep_interval_seconds + 10
    wait_for(lambda: set(hookgate.statuses().values()) == {"processed"}, bound, what="every event processed")
    assert time.monotonic() - flushed_at < bound
    assert sorted(e[2] for e in hookgate.effects()) == sorted(ids)


def test_form_encoded_slack_command_reaches_its_handler_decoded(hookgate: Hookgate) -> None:
    hookgate.start_intake()
    hookgate.start_worker()
    body, headers = hookgate.signed("slack", "slash_command", "trigger-1.2.3")
    assert hookgate.post("slack", body, headers).json() == {"status": "accepted", "id": "trigger-1.2.3"}
    hookgate.wait_status("slack", "trigger-1.2.3", "processed")
    assert [line[2] for line in hookgate.effects("slack/hookgate")] == ["trigger-1.2.3"]


def test_a_worker_freezes_its_start_up_heap(hookgate: Hookgate) -> None:
    """A full collection walked the ~100,000 objects a worker imports, 64 ms with every thread of
    the process stopped; once they are frozen it walks only what came after."""
    hookgate.start_intake()
    hookgate.start_worker()
    assert hookgate.post("acme", *hookgate.signed("acme", "probe.heap", "heap-1")).status_code == 200
    (line,) = wait_for(lambda: hookgate.effects("heap"), 30, what="the handler to look at its heap")
    frozen, threshold = int(line[1]), int(line[2])
    assert frozen > 50_000
    assert threshold == GEN0_THRESHOLD
