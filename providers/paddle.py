"""Paddle Billing: ``Paddle-Signature: ts=<unix>;h1=<hex>[;h1=<hex>]``, an HMAC-SHA256 keyed with
the notification destination's secret (the whole ``pdl_ntfset_…`` string) over
``"<ts>:" + body``. Several ``h1`` values appear while a secret is rotated; any may match.

Paddle's SDK allows only 5 seconds of clock drift; Hookgate applies ``tolerance_seconds`` (both
ways) so that a busy sender or a drifting clock does not turn into lost events. The dedupe key is
the body's ``event_id``, the type its ``event_type`` (``subscription.updated``); the resource is
``data.id``, ordered by ``data.updated_at``, else ``occurred_at``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from .api import ResourceRef, fill_path
from .base import BaseProvider, Delivery, check_mac, mac_text, parse_unix_timestamp, required_header
from .errors import PayloadRejected, SignatureRejected
from .payload import as_sequence, checked_dig, checked_text, parse_json_object

SIGNATURE = "paddle-signature"
#: Entities whose events Hookgate can reconcile: ``GET /<entity>s/<id>``.
ENTITIES = frozenset({"subscription", "transaction", "customer", "product", "price", "discount", "adjustment"})


def parse_signature(value: str) -> tuple[int, list[str]]:
    """The timestamp and the ``h1`` signatures of a ``Paddle-Signature`` header."""
    timestamp, signatures = None, []
    for item in value.split(";"):
        key, _, part = item.partition("=")
        if key == "ts":
            timestamp = parse_unix_timestamp(part, SIGNATURE)
        elif key == "h1" and part:
            signatures.append(part)
    if timestamp is None or not signatures:
        raise SignatureRejected(f"malformed {SIGNATURE} header")
    return timestamp, signatures


class PaddleProvider(BaseProvider):
    type_name = "paddle"
    kept_headers = frozenset({SIGNATURE})
    api_base_url = "https://api.paddle.com"

    def verify(self, body: bytes, headers: Mapping[str, str]) -> Delivery:
        timestamp, offered = parse_signature(required_header(headers, SIGNATURE))
        self.check_timestamp(timestamp)
        check_mac(self.settings.secrets, b"%d:" % timestamp + body, offered)
        payload = parse_json_object(body)
        event_id = checked_text(payload.get("event_id"), "event id")
        event_type = checked_text(payload.get("event_type"), "event type")
        if not event_id or not event_type:
            raise PayloadRejected("body lacks event_id or event_type")
        resource_id = checked_text(checked_dig(payload, "data.id"), "resource id")
        sequence = None
        if resource_id:
            sequence = as_sequence(checked_dig(payload, "data.updated_at")) or as_sequence(payload.get("occurred_at"))
        return Delivery(event_id, event_type, resource_id, sequence, payload)

    def resource_ref(self, event_type: str, resource_id: str, payload: Any) -> ResourceRef | None:
        entity = event_type.partition(".")[0]
        if entity not in ENTITIES:
            return None
        return ResourceRef(entity, fill_path(f"/{entity}s/{{id}}", id=resource_id))

    def sign(self, body: bytes, headers: Mapping[str, str], *, secret: str, timestamp: int) -> dict[str, str]:
        return {"Paddle-Signature": f"ts={timestamp};h1={mac_text(secret, b'%d:' % timestamp + body)}"}

    def sample(
        self, event_type: str, data: Mapping[str, Any] | None, *, event_id: str, timestamp: int
    ) -> tuple[bytes, dict[str, str]]:
        payload = {
            "event_id": event_id,
            "event_type": event_type,
            "occurred_at": "2026-01-02T03:04:05.000000Z",
            "notification_id": f"ntf_{event_id}",
            "data": dict(data) if data else {"id": "sub_01h04vsc0qhwtsbsxh3422wjs4", "status": "active"},
        }
        return orjson.dumps(payload), {"Content-Type": "application/json"}
