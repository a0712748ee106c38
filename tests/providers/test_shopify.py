"""Shopify: no SDK for Python verifies webhooks and no vector is published, so genuine signatures
are computed here as Shopify's documentation describes (base64 of HMAC-SHA256 of the raw body
with the client secret), independently of the provider's own code."""

from __future__ import annotations

import base64
import hashlib
import hmac

import orjson
import pytest

from tests.providers.helpers import make, rejected, verify

SECRET = "shpss_0123456789abcdef0123456789abcdef"
BODY = orjson.dumps(
    {"id": 450789469, "admin_graphql_api_id": "gid://shopify/Order/450789469", "updated_at": "2026-01-02T03:04:05Z"}
)


def shopify_headers(body: bytes = BODY, secret: str = SECRET, events_style: bool = False) -> dict[str, str]:
    digest = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    prefix = "shopify-" if events_style else "X-Shopify-"
    return {
        f"{prefix}Hmac-Sha256": digest,
        f"{prefix}Topic": "orders/updated",
        f"{prefix}Event-Id": "98880550-7158-44d4-b7cd-2c97c8a091b5",
        f"{prefix}Webhook-Id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
        "Content-Type": "application/json",
    }


@pytest.mark.parametrize("events_style", [False, True])
def test_accepts_a_genuine_signature(events_style: bool) -> None:
    delivery = verify(make("shopify", SECRET), BODY, shopify_headers(events_style=events_style))
    assert (delivery.event_id, delivery.event_type) == ("98880550-7158-44d4-b7cd-2c97c8a091b5", "orders/updated")
    assert delivery.resource_id == "gid://shopify/Order/450789469"
    assert delivery.sequence == 1767323045000


def test_our_signature_is_shopifys() -> None:
    provider = make("shopify", SECRET)
    body, headers = provider.signed_request("products/update", event_id="e1")
    assert headers["X-Shopify-Hmac-Sha256"] == shopify_headers(body)["X-Shopify-Hmac-Sha256"]
    ref = provider.resource_ref("orders/updated", "gid://shopify/Order/450789469", {})
    assert ref is not None
    assert ref.path == "/admin/api/2025-10/orders/450789469.json"


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (BODY.replace(b"450789469", b"450789470"), shopify_headers()),
        (BODY, shopify_headers(secret="shpss_another_secret_value")),
        (BODY, {k: v for k, v in shopify_headers().items() if k != "X-Shopify-Hmac-Sha256"}),
    ],
)
def test_rejections(body: bytes, headers: dict[str, str]) -> None:
    assert rejected(make("shopify", SECRET), body, headers).status_code == 401
