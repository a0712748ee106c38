"""Square: the vectors of Square's SDK tests, and signatures checked by its verify_signature."""

from __future__ import annotations

import pytest
from square.utils.webhooks_helper import verify_signature

from tests.providers.helpers import make, rejected, verify

KEY = "Ibxx_5AKakO-3qeNVR61Dw"
URL = "https://webhook.site/679a4f3a-dcfa-49ee-bac5-9d0edad886b9"
BODY = (
    b'{"merchant_id":"MLEFBHHSJGVHD","type":"webhooks.test_notification","event_id":"ac3ac95b-f97d-458c-a6e6-18981597e05f",'
    b'"created_at":"2022-07-13T20:30:59.037339943Z","data":{"type":"webhooks","id":"bc368e64-01aa-407e-b46e-3231809b1129"}}'
)
SIGNATURE = {"x-square-hmacsha256-signature": "GF4YkrJgGBDZ9NIYbNXBnMzqb2HoL4RW/S6vkZ9/2N4="}


def test_published_vector_with_public_url() -> None:
    delivery = verify(make("square", KEY, public_url=URL), BODY, SIGNATURE, "http://10.0.0.5:8000/webhooks/square")
    assert (delivery.event_id, delivery.event_type) == (
        "ac3ac95b-f97d-458c-a6e6-18981597e05f",
        "webhooks.test_notification",
    )


def test_published_vector_from_the_request_url() -> None:
    assert verify(make("square", KEY), BODY, SIGNATURE, URL).resource_id == "bc368e64-01aa-407e-b46e-3231809b1129"


def test_our_signature_satisfies_squares_sdk() -> None:
    provider = make("square", KEY)
    url = "https://hooks.example.com/webhooks/square"
    body, headers = provider.signed_request("payment.updated", event_id="e-1", url=url)
    assert verify_signature(
        request_body=body.decode(),
        signature_header=headers["X-Square-HmacSha256-Signature"],
        signature_key=KEY,
        notification_url=url,
    )
    delivery = verify(provider, body, {k.lower(): v for k, v in headers.items()}, url)
    assert (delivery.resource_id, delivery.sequence) == ("KkAkhdMsgzn59SM8A89WgKwekxLZY", 3)
    ref = provider.resource_ref(delivery.event_type, delivery.resource_id or "", delivery.payload)
    assert ref is not None
    assert ref.path == "/v2/payments/KkAkhdMsgzn59SM8A89WgKwekxLZY"


@pytest.mark.parametrize(
    ("body", "key", "url"),
    [(BODY.replace(b"MLEF", b"MLEG"), KEY, URL), (BODY, "another-signature-key", URL), (BODY, KEY, URL + "/")],
    ids=["tampered", "wrong key", "other url"],
)
def test_rejections(body: bytes, key: str, url: str) -> None:
    assert rejected(make("square", key), body, SIGNATURE, url).status_code == 401
