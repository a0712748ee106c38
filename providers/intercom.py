"""Intercom: ``X-Hub-Signature: sha1=<hex>``, the HMAC-SHA1 of the raw body keyed with the app's
client secret. No time is signed, so a captured delivery verifies forever: dedupe and
reconciliation are what limit a replay.

The dedupe key is the notification's ``id`` (``notif_…``), the type its ``topic``
(``conversation.user.replied``). The ``ping`` Intercom sends when a subscription is saved is
answered and not stored. The resource is ``data.item`` (``conversation:<id>``), ordered by its
``updated_at``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from .api import ResourceRef, collection_ref
from .base import BaseProvider, Delivery, Handshake, check_mac, mac_text, required_header
from .errors import PayloadRejected
from .payload import as_sequence, checked_dig, checked_text, parse_json_object, typed_id

SIGNATURE = "x-hub-signature"
#: ``data.item.type`` → its REST collection.
COLLECTIONS = {"conversation": "conversations", "contact": "contacts", "company": "companies", "ticket": "tickets"}


class IntercomProvider(BaseProvider):
    type_name = "intercom"
    kept_headers = frozenset({SIGNATURE})
    api_base_url = "https://api.intercom.io"

    def verify(self, body: bytes, headers: Mapping[str, str]) -> Delivery:
        check_mac(self.settings.secrets, body, [required_header(headers, SIGNATURE)], algorithm="sha1", prefix="sha1=")
        payload = parse_json_object(body)
        event_id, topic = checked_text(payload.get("id"), "event id"), checked_text(payload.get("topic"), "event type")
        if not event_id or not topic:
            raise PayloadRejected("body lacks id or topic")
        if topic == "ping":
            return Delivery(
                event_id, topic, payload=payload, handshake=Handshake(200, b'{"status":"handshake","event":"ping"}')
            )
        resource_id = typed_id(checked_dig(payload, "data.item.type"), checked_dig(payload, "data.item.id"))
        sequence = as_sequence(checked_dig(payload, "data.item.updated_at")) if resource_id else None
        return Delivery(event_id, topic, resource_id, sequence, payload)

    def resource_ref(self, event_type: str, resource_id: str, payload: Any) -> ResourceRef | None:
        return collection_ref(resource_id, COLLECTIONS)

    def sign(self, body: bytes, headers: Mapping[str, str], *, secret: str, timestamp: int) -> dict[str, str]:
        return {"X-Hub-Signature": mac_text(secret, body, algorithm="sha1", prefix="sha1=")}

    def sample(
        self, event_type: str, data: Mapping[str, Any] | None, *, event_id: str, timestamp: int
    ) -> tuple[bytes, dict[str, str]]:
        item = dict(data) if data else {"type": "conversation", "id": "147", "state": "open", "updated_at": timestamp}
        payload = {
            "type": "notification_event",
            "id": event_id,
            "topic": event_type,
            "app_id": "a86dr8yl",
            "created_at": timestamp,
            "delivery_attempts": 1,
            "first_sent_at": timestamp,
            "data": {"type": "notification_event_data", "item": item},
        }
        return orjson.dumps(payload), {"Content-Type": "application/json"}
