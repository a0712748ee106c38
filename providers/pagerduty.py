"""PagerDuty (v3 webhooks): ``X-PagerDuty-Signature: v1=<hex>[,v1=<hex>]``, the HMAC-SHA256 of
the raw body keyed with the subscription's signing secret; several ``v1`` values appear while a
secret is rotated, any may match. No time is signed.

The dedupe key is ``event.id``, the type ``event.event_type`` (``incident.triggered``); the
resource is the object (``incident:<id>``), ordered by ``event.occurred_at``. PagerDuty's API
wants ``Authorization: Token token=<key>``: give it under ``api.headers``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from .api import ResourceRef, collection_ref
from .base import BaseProvider, Delivery, check_mac, mac_text, required_header
from .errors import PayloadRejected
from .payload import as_sequence, checked_dig, checked_text, parse_json_object, typed_id

SIGNATURE = "x-pagerduty-signature"
#: ``event.resource_type`` values whose state can be fetched, and their collections.
COLLECTIONS = {"incident": "incidents", "service": "services"}


class PagerDutyProvider(BaseProvider):
    type_name = "pagerduty"
    kept_headers = frozenset({SIGNATURE, "x-webhook-id", "x-webhook-subscription"})
    api_base_url = "https://api.pagerduty.com"
    api_headers = {"Accept": "application/vnd.pagerduty+json;version=2"}

    def verify(self, body: bytes, headers: Mapping[str, str]) -> Delivery:
        offered = [item.strip().removeprefix("v1=") for item in required_header(headers, SIGNATURE).split(",")]
        check_mac(self.settings.secrets, body, offered)
        payload = parse_json_object(body)
        event_id = checked_text(checked_dig(payload, "event.id"), "event id")
        event_type = checked_text(checked_dig(payload, "event.event_type"), "event type")
        if not event_id or not event_type:
            raise PayloadRejected("body lacks event.id or event.event_type")
        resource_id = typed_id(checked_dig(payload, "event.resource_type"), checked_dig(payload, "event.data.id"))
        sequence = as_sequence(checked_dig(payload, "event.occurred_at")) if resource_id else None
        return Delivery(event_id, event_type, resource_id, sequence, payload)

    def resource_ref(self, event_type: str, resource_id: str, payload: Any) -> ResourceRef | None:
        return collection_ref(resource_id, COLLECTIONS)

    def sign(self, body: bytes, headers: Mapping[str, str], *, secret: str, timestamp: int) -> dict[str, str]:
        return {"X-PagerDuty-Signature": mac_text(secret, body, prefix="v1=")}

    def sample(
        self, event_type: str, data: Mapping[str, Any] | None, *, event_id: str, timestamp: int
    ) -> tuple[bytes, dict[str, str]]:
        kind = event_type.partition(".")[0]
        state = dict(data) if data else {"id": "PGR0VU2", "type": kind, "status": "triggered"}
        event = {
            "id": event_id,
            "event_type": event_type,
            "resource_type": kind,
            "occurred_at": "2026-01-02T03:04:05.000Z",
            "agent": None,
            "data": state,
        }
        return orjson.dumps({"event": event}), {"Content-Type": "application/json", "X-Webhook-Id": event_id}
