"""The intake over real HTTP: every answer of SPEC section 4, against a real store and Redis."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import stripe

import gateway.store_writer
from gateway.embedded_redis import EmbeddedRedis
from gateway.writer_process import RELAY_TIMEOUT
from tests.conftest import STRIPE_SECRET, Hookgate
from tests.support.servers import wait_for


def stripe_event(event_id: str = "evt_1", **extra: Any) -> tuple[bytes, dict[str, str]]:
    body = orjson.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": "invoice.paid",
            "created": 1,
            "data": {"object": {"id": "in_1"}},
            **extra,
        }
    )
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), STRIPE_SECRET)
    return body, {"Stripe-Signature": header, "Content-Type": "application/json"}


@pytest.fixture
def intake(hookgate: Hookgate) -> Hookgate:
    return hookgate.start_intake()


def test_a_trailing_slash_reaches_the_same_provider(intake: Hookgate) -> None:
    body, headers = stripe_event("evt_slash")
    response = httpx.post(f"{intake.url}/webhooks/stripe/", content=body, headers=headers)
    assert response.json() == {"status": "accepted", "id": "evt_slash"}
    assert httpx.post(f"{intake.url}/webhooks/", content=body).status_code == 404


def test_valid_event_is_stored_before_200(intake: Hookgate) -> None:
    body, headers = stripe_event()
    response = intake.post("stripe", body, headers)
    assert (response.status_code, response.json()) == (200, {"status": "accepted", "id": "evt_1"})
    row = intake.event("stripe", "evt_1")
    assert row.body == body
    assert row.event_type == "invoice.paid"
    assert row.resource_id == "in_1"
    assert row.status in ("received", "queued")


@pytest.mark.parametrize(
    ("case", "mutate"),
    [
        ("tampered body", lambda b, h: (b.replace(b"in_1", b"in_666"), h)),
        (
            "wrong secret",
            lambda b, h: (
                b,
                {"Stripe-Signature": stripe.WebhookSignature.generate_signature_header(b.decode(), "whsec_wrong")},
            ),
        ),
        ("missing signature", lambda b, h: (b, {})),
        (
            "301 s old",
            lambda b, h: (
                b,
                {
                    "Stripe-Signature": stripe.WebhookSignature.generate_signature_header(
                        b.decode(), STRIPE_SECRET, timestamp=math.floor(time.time()) - 301
                    )
                },
            ),
        ),
        (
            "301 s ahead",
            lambda b, h: (
                b,
                {
                    "Stripe-Signature": stripe.WebhookSignature.generate_signature_header(
                        b.decode(), STRIPE_SECRET, timestamp=math.ceil(time.time()) + 301
                    )
                },
            ),
        ),
    ],
)
def test_bad_signatures_get_401_and_nothing_is_stored(intake: Hookgate, case: str, mutate: Any) -> None:
    body, headers = mutate(*stripe_event())
    response = intake.post("stripe", body, headers)
    assert response.status_code == 401
    assert set(response.json()) == {"error"}
    assert intake.count() == 0
    metrics = httpx.get(f"{intake.url}/metrics").text
    assert 'hookgate_deliveries_total{outcome="rejected_signature",provider="stripe"} 1.0' in metrics


def test_each_bad_request_has_its_answer(intake: Hookgate) -> None:
    url = intake.url
    assert httpx.post(f"{url}/webhooks/nope", content=b"{}").status_code == 404
    response = httpx.get(f"{url}/webhooks/stripe")
    assert (response.status_code, response.headers["allow"]) == (405, "POST")
    body, headers = stripe_event()
    assert intake.post("stripe", body, {**headers, "Content-Encoding": "gzip"}).status_code == 415
    broken = b'{"id": "evt_x", "type": '
    header = stripe.WebhookSignature.generate_signature_header(broken.decode(), STRIPE_SECRET)
    response = intake.post("stripe", broken, {"Stripe-Signature": header})
    assert (response.status_code, response.json()) == (400, {"error": "body is not valid JSON"})
    deep = b"[" * 5000 + b"]" * 5000
    header = stripe.WebhookSignature.generate_signature_header(deep.decode(), STRIPE_SECRET)
    assert intake.post("stripe", deep, {"Stripe-Signature": header}).status_code == 400
    # Authentic bytes that are not UTF-8: signed as GitHub would (our signer matches octokit's).
    bad_utf8 = b'{"action": "opened\xff"}'
    github = intake.config.providers["github"].provider
    headers = {
        **github.sign(bad_utf8, {}, secret=github.settings.secrets[0], timestamp=0),
        "X-GitHub-Event": "issues",
        "X-GitHub-Delivery": "d-utf8",
    }
    response = intake.post("github", bad_utf8, headers)
    assert (response.status_code, response.json()) == (400, {"error": "body is not valid JSON"})
    assert intake.count() == 0
    assert httpx.get(f"{url}/healthz").status_code == 200
    assert httpx.get(f"{url}/readyz").json() == {"status": "ready"}


def test_body_over_the_limit_is_413_by_length_and_while_streaming(intake: Hookgate) -> None:
    body, headers = stripe_event(padding="x" * 70_000)
    assert intake.post("stripe", body, headers).status_code == 413

    def chunks() -> Any:
        for _ in range(100):
            yield b"x" * 1024

    response = httpx.post(f"{intake.url}/webhooks/stripe", content=chunks(), headers=headers)
    assert response.status_code == 413
    assert intake.count() == 0


def test_content_length_lie_is_refused_without_reading(intake: Hookgate) -> None:
    """A declared length over the limit is refused before the body arrives."""
    port = int(intake.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n")
        assert conn.recv(100).startswith(b"HTTP/1.1 413")


def test_same_event_20_times_concurrently_stores_one_row(intake: Hookgate) -> None:
    body, headers = stripe_event("evt_dup")

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=intake.url, timeout=30) as client:
            return await asyncio.gather(
                *(client.post("/webhooks/stripe", content=body, headers=headers) for _ in range(20))
            )

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 20
    statuses = sorted(r.json()["status"] for r in responses)
    assert statuses == ["accepted"] + ["duplicate"] * 19
    assert intake.count() == 1


def test_only_allowlisted_headers_are_stored(intake: Hookgate) -> None:
    body, headers = intake.signed("github", "issues.opened", "d-secret")
    headers |= {"X-Github-Encoded-Secret": "c2VjcmV0", "Authorization": "Bearer x", "Cookie": "a=b"}
    assert intake.post("github", body, headers).status_code == 200
    stored = orjson.loads(intake.event("github", "d-secret").headers)
    assert {"x-hub-signature-256", "x-github-event", "x-github-delivery", "content-type"} <= set(stored)
    assert not {"x-github-encoded-secret", "authorization", "cookie"} & set(stored)


def test_github_ping_is_answered_and_not_stored(intake: Hookgate) -> None:
    body, headers = intake.signed("github", "ping", "d-ping")
    response = intake.post("github", body, headers)
    assert (response.status_code, response.json()) == (200, {"status": "handshake", "event": "ping"})
    assert intake.count() == 0


def test_slack_url_verification_is_answered_with_the_bare_challenge(intake: Hookgate) -> None:
    body, headers = intake.signed("slack", "url_verification", "challenge-3eZbrw1aBm2rZgRNFdxV2595E9CY3gmd")
    response = intake.post("slack", body, headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain"
    assert response.content == b"challenge-3eZbrw1aBm2rZgRNFdxV2595E9CY3gmd"
    assert intake.count() == 0
    forged = intake.post("slack", body, {**headers, "X-Slack-Signature": "v0=" + "0" * 64})
    assert (forged.status_code, forged.content) == (401, b'{"error":"signature does not match"}')


def test_store_outage_is_503_then_the_same_event_is_accepted(hookgate: Hookgate, store_outage: Any) -> None:
    url, outage = store_outage
    hookgate.start_intake(database_url=url)
    body, headers = stripe_event("evt_outage")
    with outage():
        response = hookgate.post("stripe", body, headers)
        assert response.status_code == 503
        assert response.headers["retry-after"].isdigit()
    assert hookgate.count() == 0
    response = hookgate.post("stripe", body, headers)
    assert (response.status_code, response.json()["status"]) == (200, "accepted")
    assert hookgate.count() == 1


def wait_until_accepted(hookgate: Hookgate, event_id: str) -> None:
    """Post ``event_id`` until the intake takes it (once a broker it found down answers again)."""
    wait_for(
        lambda: hookgate.post("stripe", *stripe_event(event_id)).status_code == 200,
        10,
        interval=0.2,
        what="the intake to accept again",
    )


@pytest.mark.parametrize("writer_process", [False, True], ids=["thread", "writer-process"])
def test_broker_outage_is_503_and_readyz_says_so(hookgate: Hookgate, writer_process: bool) -> None:
    """Whoever enqueues, the relay thread or the writer child, a failed enqueue marks the broker
    down and a probe finds it again."""
    broker = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="hgb-")))
    hookgate.start_intake(broker_url=broker.start(), writer_process=writer_process)
    try:
        broker.stop()
        assert httpx.get(f"{hookgate.url}/readyz").status_code == 503
        # The first event after the outage began is committed, so its 200 is true; the failed
        # enqueue marks the broker down and the next sender is asked to retry.
        assert hookgate.post("stripe", *stripe_event("evt_a")).status_code == 200
        response = hookgate.post("stripe", *stripe_event("evt_b"))
        assert (response.status_code, response.json()) == (503, {"error": "broker unavailable"})
        assert hookgate.event("stripe", "evt_b") is None
        broker.start()
        wait_until_accepted(hookgate, "evt_b")
        assert hookgate.event("stripe", "evt_a").status == "received"
        # The acknowledged event that never reached Redis is found and sent by the recovery sweep.
        hookgate.start_worker(broker_url=broker.url)
        hookgate.wait_status("stripe", "evt_a", "processed")
        hookgate.wait_status("stripe", "evt_b", "processed")
    finally:
        broker.stop()


@pytest.mark.parametrize("writer_process", [False, True], ids=["thread", "writer-process"])
def test_with_redis_an_event_sent_at_once_is_stored_queued(hookgate: Hookgate, writer_process: bool) -> None:
    """Redis is asked about ``received`` and ``queued`` events alike, so the intake writes an event
    it sends at once ``queued`` in its INSERT, rather than marking it with a later UPDATE (the
    next batch, or the idle pass half a second on)."""
    hookgate.start_intake(broker_url=hookgate.redis_url, writer_process=writer_process)
    assert hookgate.post("stripe", *stripe_event("evt_q")).status_code == 200
    assert hookgate.event("stripe", "evt_q").status == "queued"


def test_a_writer_child_started_while_the_broker_is_down_goes_on_probing_it(hookgate: Hookgate) -> None:
    """The child that found the broker down dies (killed here; the deadline kills a hung one):
    its successor is told, and probes, so the intake takes events again once the broker is back."""
    broker = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="hgb-")))
    hookgate.start_intake(broker_url=broker.start(), writer_process=True)
    ingestor = hookgate.server.app.intake.ingestor  # type: ignore[union-attr]
    try:
        broker.stop()
        assert hookgate.post("stripe", *stripe_event("evt_a")).status_code == 200
        wait_for(
            lambda: hookgate.post("stripe", *stripe_event("evt_b")).status_code == 503,
            10,
            interval=0.1,
            what="the intake to find the broker down",
        )
        first = ingestor.process.pid
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: ingestor.process.pid not in (None, first) and ingestor._ready, 10, what="a new child")
        broker.start()
        wait_until_accepted(hookgate, "evt_b")
    finally:
        broker.stop()


def test_a_broker_that_hangs_costs_the_writer_child_a_moment_not_a_store_503(hookgate: Hookgate) -> None:
    """A broker that takes connections and never answers: the child's enqueue gives up after
    RELAY_TIMEOUT, without retrying, so the batch after it is written in time, the intake answers
    ``broker unavailable`` rather than ``store unavailable``, and no child is killed for lateness."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as silent:  # the kernel accepts; no one reads
        hookgate.start_intake(broker_url=f"redis://127.0.0.1:{silent.getsockname()[1]}", writer_process=True)
        ingestor = hookgate.server.app.intake.ingestor  # type: ignore[union-attr]
        # Twice RELAY_TIMEOUT, and less than the client's default socket timeout (5 s), which
        # the child's enqueue waited out before.
        ingestor.commit_timeout = 2 * RELAY_TIMEOUT
        answers = [hookgate.post("stripe", *stripe_event("evt_h0"))]
        assert answers[0].status_code == 200
        for index in range(1, 40):
            answers.append(hookgate.post("stripe", *stripe_event(f"evt_h{index}")))
            if answers[-1].status_code == 503:
                break
        assert [answer.json() for answer in answers[1:] if answer.status_code != 200] == [
            {"error": "broker unavailable"}
        ]
        assert hookgate.event("stripe", "evt_h0").status == "received"  # for the recovery sweep
        # Written once the child had found the broker down (the batch waiting behind the hung
        # enqueue): not tried, and set back all the same.
        assert len(hookgate.statuses()) >= 2
        wait_for(lambda: set(hookgate.statuses().values()) == {"received"}, 10, what="every event set back")
        assert ingestor.metrics.writer_exits._value.get() == 0


def test_a_failed_wal_sync_is_503_from_then_on_and_health_says_so(
    intake: Hookgate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite: the rows of a batch whose sync failed may not be on the disk, nor anything after
    (gateway.store_writer.BatchWriter._sync_wal): no more 2xx from this process, and both health
    endpoints fail so that an orchestrator restarts it."""
    if intake.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's WAL file")

    def failing_sync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(gateway.store_writer, "sync_descriptor", failing_sync)
    assert intake.post("stripe", *stripe_event("evt_s1")).status_code == 503
    monkeypatch.undo()
    response = intake.post("stripe", *stripe_event("evt_s2"))
    assert (response.status_code, response.json()) == (503, {"error": "store unavailable"})
    assert intake.event("stripe", "evt_s2") is None
    health = httpx.get(f"{intake.url}/healthz")
    assert health.status_code == 503
    assert health.json()["status"] == "failed"
    assert "Input/output error" in health.json()["reason"]
    ready = httpx.get(f"{intake.url}/readyz")
    assert (ready.status_code, ready.json()["problems"]) == (503, {"intake": "SyncFailed"})
