"""Square: ``x-square-hmacsha256-signature``, the base64 HMAC-SHA256, keyed with the webhook
subscription's signature key, of the subscription's notification URL followed by the raw body.

The URL must be exactly the one configured at Square: set ``public_url`` when Hookgate sits behind
a proxy (else the request's URL is rebuilt from ``X-Forwarded-*``). No time is signed, so a
captured delivery verifies forever: dedupe and reconciliation are what limit a replay. The dedupe
key is the body's ``event_id``, the type its ``type`` (``payment.updated``); the resource is
``data.id``, ordered by the object's ``version`` (Square increments it on every change), else its
``updated_at``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from .api import ResourceRef, fill_path
from .base import Delivery, Inbound, SignsUrl, check_mac, mac_text, required_header
from .errors import PayloadRejected
from .payload import as_sequence, checked_dig, checked_text, dig, parse_json_object

SIGNATURE = "x-square-hmacsha256-signature"
#: ``data.type`` values Hookgate can reconcile: ``GET /v2/<type>s/<id>``.
OBJECTS = frozenset({"payment", "refund", "order", "customer", "invoice", "subscription", "dispute"})


class SquareProvider(SignsUrl):
    type_name = "square"
    kept_headers = frozenset(
        {SIGNATURE, "square-environment", "square-initial-delivery-timestamp", "square-retry-number"}
    )
    api_base_url = "https://connect.squareup.com"

    def verify_request(self, request: Inbound) -> Delivery:
        offered = required_header(request.headers, SIGNATURE)
        check_mac(self.settings.secrets, self.signed_url(request).encode() + request.body, [offered], encoding="base64")
        payload = parse_json_object(request.body)
        event_id = checked_text(payload.get("event_id"), "event id")
        event_type = checked_text(payload.get("type"), "event type")
        if not event_id or not event_type:
            raise PayloadRejected("body lacks event_id or type")
        kind = checked_text(checked_dig(payload, "data.type"), "data.type") or ""
        resource_id = checked_text(checked_dig(payload, "data.id"), "resource id")
        sequence = None
        if resource_id and kind.isidentifier():
            state = f"data.object.{kind}"
            sequence = as_sequence(checked_dig(payload, f"{state}.version")) or as_sequence(
                checked_dig(payload, f"{state}.updated_at")
            )
        return Delivery(event_id, event_type, resource_id, sequence, payload)

    def resource_ref(self, event_type: str, resource_id: str, payload: Any) -> ResourceRef | None:
        kind = dig(payload, "data.type")
        if kind not in OBJECTS:
            return None
        return ResourceRef(kind, fill_path(f"/v2/{kind}s/{{id}}", id=resource_id))

    def sign_request(self, request: Inbound, *, secret: str, timestamp: int) -> dict[str, str]:
        signature = mac_text(secret, self.signed_url(request).encode() + request.body, encoding="base64")
        return {"X-Square-HmacSha256-Signature": signature}

    def sample(
        self, event_type: str, data: Mapping[str, Any] | None, *, event_id: str, timestamp: int
    ) -> tuple[bytes, dict[str, str]]:
        kind = event_type.partition(".")[0]
        state = dict(data) if data else {"id": "KkAkhdMsgzn59SM8A89WgKwekxLZY", "status": "COMPLETED", "version": 3}
        payload = {
            "merchant_id": "6SSW7HV8K2ST5",
            "type": event_type,
            "event_id": event_id,
            "created_at": "2026-01-02T03:04:05.000Z",
            "data": {"type": kind, "id": state.get("id", "unknown"), "object": {kind: state}},
        }
        return orjson.dumps(payload), {"Content-Type": "application/json"}
