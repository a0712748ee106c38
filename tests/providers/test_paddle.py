"""Paddle: the vectors of Paddle's own SDK tests, and headers checked by its Verifier."""

from __future__ import annotations

import orjson
import pytest
from paddle_billing.Notifications.PaddleSignature import PaddleSignature
from paddle_billing.Notifications.Secret import Secret

from tests.providers.helpers import make, rejected, verify

VECTOR_SECRET = "pdl_ntf_01hbpjmytsa32fhr36nqgc3kgb_WvRO0eL4Bj9rgYYIBZY6wZhG4EHy9jzh"
VECTOR_HEADER = "ts=1696195954;h1=dummy;h1=d96299976a6eb066f484d7fde011ac56fc32b38fc9940bc419d6e537fdc6ef02"
SECRET = "pdl_ntfset_01hs0t3tw21j988db1pam5xg8m_GrOWLNef+vmtjJYq4mSnHNzvc8uWoJ1I"
BODY = orjson.dumps(
    {
        "event_id": "evt_01h8bzakzx3hm2fmen703n5q45",
        "event_type": "subscription.updated",
        "occurred_at": "2026-01-02T03:04:05.000000Z",
        "data": {"id": "sub_01h04vsc0qhwtsbsxh3422wjs4", "updated_at": "2026-01-02T03:04:04.000Z"},
    }
)


def test_published_vector_with_a_junk_h1_first() -> None:
    # The vector's body is not an event: authentic, so the answer is 400, not 401.
    provider = make("paddle", VECTOR_SECRET, now=1696195954)
    assert rejected(provider, b"hello-world", {"Paddle-Signature": VECTOR_HEADER}).status_code == 400
    other = "pdl_ntf_01hbpjmytsa32fhr36nqgc3kgb_TjIG2BXbm83HPXqNfziwe506sBEdqL/4"
    assert (
        rejected(make("paddle", other, now=1696195954), b"hello-world", {"Paddle-Signature": VECTOR_HEADER}).status_code
        == 401
    )


def test_our_signature_satisfies_paddles_sdk() -> None:
    provider = make("paddle", SECRET, now=1_700_000_000)
    body, headers = provider.signed_request("transaction.completed", {"id": "txn_1"}, event_id="evt_1")
    assert PaddleSignature().verify(headers["Paddle-Signature"], body.decode(), Secret(SECRET))
    delivery = verify(provider, body, headers)
    assert (delivery.event_id, delivery.event_type, delivery.resource_id) == ("evt_1", "transaction.completed", "txn_1")
    ref = provider.resource_ref(delivery.event_type, "txn_1", delivery.payload)
    assert ref is not None
    assert ref.path == "/transactions/txn_1"


def sdk_header(body: bytes, secret: str, ts: int) -> str:
    digest = PaddleSignature.calculate_hmac(secret, f"{ts}:{body.decode()}".encode()).hexdigest()
    return f"ts={ts};h1={digest}"


def test_genuine_delivery() -> None:
    delivery = verify(
        make("paddle", SECRET, now=1_700_000_000), BODY, {"Paddle-Signature": sdk_header(BODY, SECRET, 1_700_000_000)}
    )
    assert delivery.resource_id == "sub_01h04vsc0qhwtsbsxh3422wjs4"
    assert delivery.sequence == 1767323044000


@pytest.mark.parametrize(
    ("body", "secret", "ts"),
    [
        (BODY.replace(b"updated", b"canceled"), SECRET, 1_700_000_000),
        (BODY, "pdl_ntfset_another_secret", 1_700_000_000),
        (BODY, SECRET, 1_700_000_000 - 301),
    ],
    ids=["tampered", "wrong secret", "stale"],
)
def test_rejections(body: bytes, secret: str, ts: int) -> None:
    header = sdk_header(BODY, secret, ts)
    assert rejected(make("paddle", SECRET, now=1_700_000_000), body, {"Paddle-Signature": header}).status_code == 401
