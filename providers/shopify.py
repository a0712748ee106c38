"""Shopify: ``X-Shopify-Hmac-Sha256: <base64>``, an HMAC-SHA256 of the raw body keyed with the
app's client secret. No timestamp is signed, so a captured delivery verifies forever: dedupe on
the event id and reconciliation are what keep a replayed stale body from doing harm.

Newer "events" deliveries send ``shopify-*`` headers (and the ``x-shopify-*`` ones too); both are
read. The dedupe key is ``X-Shopify-Event-Id`` (the same for every duplicate of one event, as
Shopify advises), else ``X-Shopify-Webhook-Id``. The event type is the topic as Shopify names it
(``orders/create``; handlers may match ``orders/*``). The resource is the payload's
``admin_graphql_api_id`` (``gid://shopify/Order/450789469``), its sequence the payload's
``updated_at``, else the trigger time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from .api import ResourceRef, fill_path
from .base import BaseProvider, Delivery, check_mac, mac_text, required_header
from .errors import PayloadRejected
from .payload import as_sequence, checked_text, parse_json_object

SIGNATURE_HEADERS = ("shopify-hmac-sha256", "x-shopify-hmac-sha256")
API_VERSION = "2025-10"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """``shopify-<name>`` (events deliveries) or ``x-shopify-<name>`` (classic)."""
    return headers.get(f"shopify-{name}") or headers.get(f"x-shopify-{name}")


class ShopifyProvider(BaseProvider):
    type_name = "shopify"
    kept_headers = frozenset(
        f"{prefix}{name}"
        for prefix in ("x-shopify-", "shopify-")
        for name in (
            "hmac-sha256",
            "topic",
            "shop-domain",
            "api-version",
            "webhook-id",
            "event-id",
            "triggered-at",
            "sub-topic",
            "name",
        )
    )

    def verify(self, body: bytes, headers: Mapping[str, str]) -> Delivery:
        name = SIGNATURE_HEADERS[0] if headers.get(SIGNATURE_HEADERS[0]) else SIGNATURE_HEADERS[1]
        check_mac(self.settings.secrets, body, [required_header(headers, name)], encoding="base64")
        topic = checked_text(_header(headers, "topic"), "event type")
        event_id = checked_text(_header(headers, "event-id"), "event id") or checked_text(
            _header(headers, "webhook-id"), "event id"
        )
        if not topic or not event_id:
            raise PayloadRejected("missing X-Shopify-Topic or X-Shopify-Event-Id/X-Shopify-Webhook-Id header")
        payload = parse_json_object(body)
        resource_id = checked_text(payload.get("admin_graphql_api_id"), "resource id")
        sequence = None
        if resource_id:
            sequence = as_sequence(payload.get("updated_at")) or as_sequence(_header(headers, "triggered-at"))
        return Delivery(event_id, topic, resource_id, sequence, payload)

    def resource_ref(self, event_type: str, resource_id: str, payload: Any) -> ResourceRef | None:
        """REST ``/admin/api/<version>/<topic's resource>/<id>.json`` (``orders/create`` → orders)."""
        kind, _, number = resource_id.removeprefix("gid://shopify/").partition("/")
        collection = event_type.partition("/")[0]
        if not number or not collection.isidentifier():
            return None
        version = API_VERSION
        return ResourceRef(kind.lower(), fill_path(f"/admin/api/{version}/{collection}/{{id}}.json", id=number))

    def sign(self, body: bytes, headers: Mapping[str, str], *, secret: str, timestamp: int) -> dict[str, str]:
        return {"X-Shopify-Hmac-Sha256": mac_text(secret, body, encoding="base64")}

    def sample(
        self, event_type: str, data: Mapping[str, Any] | None, *, event_id: str, timestamp: int
    ) -> tuple[bytes, dict[str, str]]:
        payload = (
            dict(data)
            if data
            else {
                "id": 820982911946154508,
                "admin_graphql_api_id": "gid://shopify/Order/820982911946154508",
                "updated_at": "2026-01-01T12:00:00-05:00",
                "financial_status": "paid",
            }
        )
        headers = {
            "Content-Type": "application/json",
            "X-Shopify-Topic": event_type,
            "X-Shopify-Shop-Domain": "example.myshopify.com",
            "X-Shopify-API-Version": API_VERSION,
            "X-Shopify-Webhook-Id": f"wh-{event_id}",
            "X-Shopify-Event-Id": event_id,
            "X-Shopify-Triggered-At": "2026-01-01T17:00:00.000000Z",
        }
        return orjson.dumps(payload), headers
