"""HubSpot v3: the vector of HubSpot's SDK tests, and signatures checked by its Signature class."""

from __future__ import annotations

import orjson
import pytest
from hubspot.utils.signature import Signature

from tests.providers.helpers import make, rejected, verify

SECRET = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy"
URI = "https://www.example.com/webhook_uri"
NOW = 1693657560


def test_published_vector() -> None:
    # The vector's body is no batch: authentic, so 400 rather than 401.
    headers = {
        "X-HubSpot-Signature-v3": "K36dawei4A+QBNolUOqo7s91KQDWQ5MXZ/QufNYuk/Y=",
        "X-HubSpot-Request-Timestamp": "1693657560000",
    }
    body = b"{'example_field':'example_value'}"
    assert rejected(make("hubspot", SECRET, now=NOW), body, headers, URI).status_code == 400
    assert rejected(make("hubspot", SECRET, now=NOW), body + b" ", headers, URI).status_code == 401


def batch(*event_ids: int) -> bytes:
    return orjson.dumps(
        [
            {
                "eventId": e,
                "subscriptionType": "contact.propertyChange",
                "objectId": 123,
                "occurredAt": 1693657559000 + e,
            }
            for e in event_ids
        ]
    )


def sdk_headers(body: bytes, uri: str = URI, secret: str = SECRET, millis: int = NOW * 1000) -> dict[str, str]:
    signature = Signature.get_signature(secret, body.decode(), "v3", uri, "POST", str(millis))
    return {"X-HubSpot-Signature-v3": signature, "X-HubSpot-Request-Timestamp": str(millis)}


def test_a_batch_becomes_one_event_each() -> None:
    body = batch(1, 2)
    delivery = verify(make("hubspot", SECRET, now=NOW), body, sdk_headers(body), URI)
    assert [(d.event_id, d.event_type, d.resource_id, d.sequence) for d in delivery.batch] == [
        ("1", "contact.propertyChange", "contact:123", 1693657559001),
        ("2", "contact.propertyChange", "contact:123", 1693657559002),
    ]
    assert orjson.loads(delivery.batch[0].body or b"")["eventId"] == 1


def test_documented_escape_decoding_is_accepted() -> None:
    body = batch(3)
    raw = "https://www.example.com/webhook_uri?email=a%40b.example"
    verify(
        make("hubspot", SECRET, now=NOW),
        body,
        sdk_headers(body, "https://www.example.com/webhook_uri?email=a@b.example"),
        raw,
    )


def test_our_signature_satisfies_hubspots_sdk() -> None:
    provider = make("hubspot", SECRET, now=NOW)
    body, headers = provider.signed_request("deal.creation", event_id="7", url=URI)
    millis = headers["x-hubspot-request-timestamp"]
    assert (
        Signature.get_signature(SECRET, body.decode(), "v3", URI, "POST", millis) == headers["X-HubSpot-Signature-v3"]
    )
    event = verify(provider, body, headers, URI).batch[0]
    ref = provider.resource_ref(event.event_type, event.resource_id or "", event.payload)
    assert ref is not None
    assert ref.path == "/crm/v3/objects/deals/123"


@pytest.mark.parametrize(
    ("tamper", "secret", "millis"),
    [(True, SECRET, NOW * 1000), (False, "zzzzzzzz-other-secret", NOW * 1000), (False, SECRET, (NOW - 301) * 1000)],
    ids=["tampered", "wrong secret", "stale"],
)
def test_rejections(tamper: bool, secret: str, millis: int) -> None:
    body = batch(1)
    headers = sdk_headers(body, secret=secret, millis=millis)
    sent = body.replace(b"123", b"124") if tamper else body
    assert rejected(make("hubspot", SECRET, now=NOW), sent, headers, URI).status_code == 401
