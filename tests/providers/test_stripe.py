"""Stripe signatures, checked against the official ``stripe`` SDK both ways."""

from __future__ import annotations

import orjson
import pytest
import stripe

from tests.providers.helpers import NOW, make, rejected, verify

SECRET = "whsec_test_secret"
BODY = orjson.dumps(
    {
        "id": "evt_1",
        "object": "event",
        "type": "invoice.paid",
        "created": NOW,
        "data": {"object": {"id": "in_1", "object": "invoice"}},
    }
)


def sdk_header(body: bytes, secret: str = SECRET, timestamp: int = NOW) -> dict[str, str]:
    return {"Stripe-Signature": stripe.WebhookSignature.generate_signature_header(body.decode(), secret, timestamp)}


def test_accepts_a_signature_made_by_the_stripe_sdk() -> None:
    delivery = verify(make("stripe", SECRET), BODY, sdk_header(BODY))
    assert (delivery.event_id, delivery.event_type, delivery.resource_id, delivery.sequence) == (
        "evt_1",
        "invoice.paid",
        "in_1",
        NOW,
    )


def test_the_stripe_sdk_accepts_our_signature() -> None:
    provider = make("stripe", SECRET, now=NOW)
    header = provider.sign(BODY, {}, secret=SECRET, timestamp=NOW)["Stripe-Signature"]
    stripe.WebhookSignature.verify_header(BODY.decode(), header, SECRET, tolerance=10**10)


def test_derived_vector_from_the_reference() -> None:
    body = b'{"id":"evt_test_webhook","object":"event","type":"x"}'
    provider = make("stripe", SECRET, now=1700000000)
    header = provider.sign(body, {}, secret=SECRET, timestamp=1700000000)["Stripe-Signature"]
    assert header == sdk_header(body, timestamp=1700000000)["Stripe-Signature"]
    vector_body = b'{"id":"evt_test_webhook","object":"event"}'
    assert provider.sign(vector_body, {}, secret=SECRET, timestamp=1700000000)["Stripe-Signature"] == (
        "t=1700000000,v1=d95c6b7477fbd7e9f90b1b0ef5f9c7ac25abca5382460e0d988c2b2a5b71b990"
    )


def test_rotation_accepts_either_secret_and_any_offered_v1() -> None:
    provider = make("stripe", "whsec_old_secret", SECRET)
    assert verify(provider, BODY, sdk_header(BODY)).event_id == "evt_1"
    old = sdk_header(BODY, "whsec_old_secret")["Stripe-Signature"].split(",")[1]
    new = sdk_header(BODY)["Stripe-Signature"]
    assert verify(make("stripe", SECRET), BODY, {"Stripe-Signature": f"{new},{old}"}).event_id == "evt_1"


@pytest.mark.parametrize(
    ("case", "body", "headers", "reason"),
    [
        ("tampered body", BODY.replace(b"in_1", b"in_2"), sdk_header(BODY), "signature does not match"),
        ("wrong secret", BODY, sdk_header(BODY, "whsec_other"), "signature does not match"),
        ("missing header", BODY, {}, "missing stripe-signature header"),
        ("no v1", BODY, {"Stripe-Signature": f"t={NOW}"}, "malformed stripe-signature header"),
        ("no t", BODY, {"Stripe-Signature": "v1=abc"}, "malformed stripe-signature header"),
        ("301 s old", BODY, sdk_header(BODY, timestamp=NOW - 301), "timestamp outside the tolerance"),
        ("301 s ahead", BODY, sdk_header(BODY, timestamp=NOW + 301), "timestamp outside the tolerance"),
        ("non-ascii", BODY, {"Stripe-Signature": f"t={NOW},v1=\u00e9"}, "malformed stripe-signature header"),
        ("huge header", BODY, {"Stripe-Signature": f"t={NOW}," + "v1=a," * 2000}, "malformed stripe-signature header"),
    ],
)
def test_rejections(case: str, body: bytes, headers: dict[str, str], reason: str) -> None:
    error = rejected(make("stripe", SECRET), body, headers)
    assert (error.status_code, error.reason) == (401, reason)


def test_tolerance_edge_is_inclusive() -> None:
    assert verify(make("stripe", SECRET), BODY, sdk_header(BODY, timestamp=NOW - 300)).event_id == "evt_1"


def test_authentic_but_broken_json_is_400() -> None:
    error = rejected(make("stripe", SECRET), b"{not json", sdk_header(b"{not json"))
    assert error.status_code == 400
