"""Linear: ``Linear-Signature``, the hex HMAC-SHA256 of the raw body keyed with the webhook's
signing secret. The time is inside the signed body (``webhookTimestamp``, in milliseconds);
Linear's SDK refuses it past 60 seconds either way, Hookgate past ``tolerance_seconds``.

The type is the entity and the action (``Issue.create``, ``Comment.update``); the resource is the
entity (``Issue:<id>``), ordered by its ``updatedAt``. The dedupe key is made of those (entity,
action, id, ``updatedAt``), which a retry repeats, else the ``Linear-Delivery`` header. Linear's
API is GraphQL only, so reconciliation is not built in (a handler can query it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from .base import BaseProvider, Delivery, check_mac, mac_text, required_header
from .errors import PayloadRejected, SignatureRejected
from .payload import as_sequence, checked_dig, checked_text, parse_json_object

SIGNATURE = "linear-signature"


class LinearProvider(BaseProvider):
    type_name = "linear"
    kept_headers = frozenset({SIGNATURE, "linear-delivery", "linear-event"})

    def verify(self, body: bytes, headers: Mapping[str, str]) -> Delivery:
        check_mac(self.settings.secrets, body, [required_header(headers, SIGNATURE)])
        payload = parse_json_object(body)
        sent_at = payload.get("webhookTimestamp")
        if not isinstance(sent_at, int) or isinstance(sent_at, bool):
            raise SignatureRejected("body lacks webhookTimestamp")
        self.check_timestamp(sent_at / 1000)
        entity, action = checked_text(payload.get("type"), "event type"), checked_text(payload.get("action"), "action")
        if not entity or not action:
            raise PayloadRejected("body lacks type or action")
        object_id = checked_text(checked_dig(payload, "data.id"), "resource id")
        updated = checked_text(checked_dig(payload, "data.updatedAt"), "data.updatedAt")
        event_id = (
            f"{entity}:{action}:{object_id}:{updated}"
            if object_id and updated
            else checked_text(headers.get("linear-delivery"), "event id")
        )
        if not event_id:
            raise PayloadRejected("body lacks data.id and data.updatedAt, and no Linear-Delivery header")
        resource_id = f"{entity}:{object_id}" if object_id else None
        return Delivery(
            event_id, f"{entity}.{action}", resource_id, as_sequence(updated) if resource_id else None, payload
        )

    def sign(self, body: bytes, headers: Mapping[str, str], *, secret: str, timestamp: int) -> dict[str, str]:
        return {"Linear-Signature": mac_text(secret, body)}

    def sample(
        self, event_type: str, data: Mapping[str, Any] | None, *, event_id: str, timestamp: int
    ) -> tuple[bytes, dict[str, str]]:
        entity, _, action = event_type.partition(".")
        state = {"id": event_id, "title": "Fix the bug", "updatedAt": "2026-01-02T03:04:05.000Z", **(data or {})}
        payload = {
            "action": action or "update",
            "type": entity,
            "data": state,
            "url": "https://linear.app/example/issue/ENG-1",
            "createdAt": "2026-01-02T03:04:05.000Z",
            "organizationId": "org_1",
            "webhookId": "wh_1",
            "webhookTimestamp": timestamp * 1000,
        }
        return orjson.dumps(payload), {"Content-Type": "application/json", "Linear-Delivery": event_id}
