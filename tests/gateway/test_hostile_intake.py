"""Requests a sender controls never earn a 5xx: crafted hosts, repeated headers, odd ids and
sequences, and one poison row in a group commit. Sent as raw bytes over a socket, since an HTTP
client would refuse to write most of them."""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any

import orjson
import pytest
import stripe
from sqlalchemy import select

from gateway.models import events
from tests.conftest import GITHUB_SECRET, STRIPE_SECRET, Hookgate
from tests.support.raw_http import hold_commits, raw_request
from tests.support.servers import wait_for

URL_READERS = {
    "twilio": {"type": "twilio", "secrets": ["twilio-auth-token-1"]},
    "square": {"type": "square", "secrets": ["square-signature-key"]},
    "hubspot": {"type": "hubspot", "secrets": ["hubspot-client-secret"]},
    "msgraph": {"type": "msgraph", "secrets": ["graph-client-state"]},
    "meta": {"type": "meta", "secrets": ["meta-app-secret-1"], "verify_token": "meta-verify-token"},
}


@pytest.fixture
def intake(hookgate: Hookgate) -> Hookgate:
    for name, entry in URL_READERS.items():
        hookgate.configure_provider(name, **entry)
    return hookgate.start_intake()


BAD_HOSTS = [
    [("Host", "[")],
    [("Host", "example.com"), ("X-Forwarded-Host", "h:99999")],
    [("Host", "example.com"), ("X-Forwarded-Host", "[::1")],
    [("Host", "example.com:abc")],
]


@pytest.mark.parametrize("provider", sorted(URL_READERS))
@pytest.mark.parametrize("hosts", BAD_HOSTS, ids=["bracket", "port-out-of-range", "open-ipv6", "port-text"])
def test_a_crafted_host_is_400_not_500(intake: Hookgate, provider: str, hosts: list[tuple[str, str]]) -> None:
    dummy_signatures = [
        ("X-Twilio-Signature", "AAAA"),
        ("X-Square-Hmacsha256-Signature", "AAAA"),
        ("X-HubSpot-Signature-v3", "AAAA"),
        ("X-HubSpot-Request-Timestamp", str(int(time.time() * 1000))),
    ]
    for method, query in (("POST", "?a=b"), ("GET", "?hub.mode=subscribe&hub.verify_token=x&hub.challenge=1")):
        if method == "GET" and provider != "meta":
            continue
        status, body = raw_request(
            intake.url,
            method,
            f"/webhooks/{provider}{query}",
            [*hosts, *dummy_signatures, ("Content-Type", "application/json")],
            b"{}",
        )
        assert status == 400, (method, body)
        assert b"host" in body.lower()


def stripe_body(event_id: str, **data: Any) -> tuple[bytes, str]:
    body = orjson.dumps(
        {"id": event_id, "object": "event", "type": "customer.updated", "created": 1, "data": {"object": data}}
    )
    return body, stripe.WebhookSignature.generate_signature_header(body.decode(), STRIPE_SECRET)


def test_a_repeated_signature_id_or_type_header_is_400(intake: Hookgate) -> None:
    body, headers = intake.signed("github", "issues.opened", "delivery-1")
    forged = "sha256=" + "0" * 64
    attempts = {
        "type": [*headers.items(), ("X-GitHub-Event", "push")],
        "signature": [*headers.items(), ("X-Hub-Signature-256", forged)],
        "id": [*headers.items(), ("X-GitHub-Delivery", "delivery-2")],
    }
    for what, sent in attempts.items():
        status, answer = raw_request(intake.url, "POST", "/webhooks/github", sent, body)
        assert status == 400, what
        assert b"more than once" in answer
    assert intake.count() == 0
    status, _ = raw_request(intake.url, "POST", "/webhooks/github", list(headers.items()), body)
    assert status == 200


def test_the_stored_headers_are_the_verified_ones(intake: Hookgate) -> None:
    """A header the type does not verify may repeat: the stored value is the first, as verified."""
    body, headers = intake.signed("github", "issues.opened", "delivery-3")
    sent = [("User-Agent", "GitHub-Hookshot/1"), *headers.items(), ("User-Agent", "forged/2")]
    status, _ = raw_request(intake.url, "POST", "/webhooks/github", sent, body)
    assert status == 200
    stored = orjson.loads(intake.event("github", "delivery-3").headers)
    assert stored["x-github-event"] == "issues"
    assert stored["x-hub-signature-256"] == headers["X-Hub-Signature-256"]
    assert stored["user-agent"] == "GitHub-Hookshot/1"
    assert GITHUB_SECRET not in str(stored)


def test_odd_but_signed_ids_and_sequences_are_400_with_the_reason(intake: Hookgate) -> None:
    acme = intake.config.providers["acme"].provider
    cases = {
        "a sequence past BIGINT": ({"type": "t", "data": {"id": "r1", "version": 2**64 - 1}}, "evt-big", "sequence"),
        "a huge float sequence": ({"type": "t", "data": {"id": "r1", "version": 1e300}}, "evt-float", "sequence"),
        "a NUL in the type": ({"type": "t\x00x", "data": {"id": "r1", "version": 1}}, "evt-nul", "control"),
        "a tab in the id": ({"type": "t", "data": {"id": "r1", "version": 1}}, "evt\ttab", "control"),
    }
    for what, (payload, event_id, reason) in cases.items():
        body = orjson.dumps(payload)
        now = int(time.time())
        headers = {"X-Acme-Event-Id": event_id, "X-Acme-Timestamp": str(now)}
        headers |= acme.sign(body, headers, secret="acme-secret-one", timestamp=now)
        status, answer = raw_request(intake.url, "POST", "/webhooks/acme", list(headers.items()), body)
        assert status == 400, what
        assert reason in orjson.loads(answer)["error"], what
    assert intake.count() == 0


def test_one_poison_row_does_not_fail_the_deliveries_committed_with_it(
    intake: Hookgate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row the store refuses fails alone: the batch is retried row by row and the others are
    accepted. The poison is a trigger in the store, since the intake's own checks now stop every
    poison a sender could craft. The first commit is held so that the poison and eight innocent
    deliveries gather into the next batch."""
    postgres = intake.engine.dialect.name == "postgresql"
    table = events.name
    with intake.engine.begin() as conn:
        if postgres:
            conn.exec_driver_sql(
                "CREATE OR REPLACE FUNCTION hg_poison() RETURNS trigger AS $$ BEGIN "
                "IF NEW.event_id LIKE 'poison%%' THEN RAISE EXCEPTION 'poison'; END IF; RETURN NEW; END $$ "
                "LANGUAGE plpgsql"
            )
            conn.exec_driver_sql(
                f"CREATE TRIGGER hg_poison BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION hg_poison()"
            )
        else:
            conn.exec_driver_sql(
                f"CREATE TRIGGER hg_poison BEFORE INSERT ON {table} WHEN NEW.event_id LIKE 'poison%' "
                "BEGIN SELECT RAISE(ABORT, 'poison'); END"
            )
    ingestor = intake.server.app.intake.ingestor  # type: ignore[union-attr]
    entered, release = hold_commits(ingestor, monkeypatch)

    def post(event_id: str) -> int:
        body, signature = stripe_body(event_id, id=f"cus_{event_id}")
        sent = [("Stripe-Signature", signature), ("Content-Type", "application/json")]
        return raw_request(intake.url, "POST", "/webhooks/stripe", sent, body)[0]

    try:
        names = ["poison-1", *(f"innocent-{i}" for i in range(8))]
        with concurrent.futures.ThreadPoolExecutor(len(names) + 1) as pool:
            first = pool.submit(post, "first")
            assert entered.wait(15)
            futures = {name: pool.submit(post, name) for name in names}
            wait_for(lambda: ingestor.waiting_rows == len(names), 15, what="nine rows waiting for one batch")
            release.set()
            statuses = {name: future.result() for name, future in futures.items()}
        assert first.result() == 200
        assert statuses.pop("poison-1") == 503
        assert set(statuses.values()) == {200}
        with intake.engine.connect() as conn:
            stored = set(conn.execute(select(events.c.event_id)).scalars())
        assert stored == {"first", *(f"innocent-{i}" for i in range(8))}
    finally:
        release.set()
        with intake.engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS hg_poison" + (f" ON {table}" if postgres else ""))
