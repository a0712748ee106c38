"""Zoom: ``x-zm-signature: v0=<hex>``, an HMAC-SHA256 keyed with the app's webhook secret token
over ``"v0:<x-zm-request-timestamp>:" + body`` (the same shape as Slack's), checked within
``tolerance_seconds``.

Saving the endpoint, and every 72 hours after, Zoom sends a signed ``endpoint.url_validation``
with a ``plainToken``; it is answered ``{"plainToken": …, "encryptedToken": <hex HMAC-SHA256 of
plainToken under the secret token>}`` and never stored. Zoom gives events no id: the dedupe key
is the event, its ``event_ts`` and its object's id, which a retry repeats. The resource is the
object (``meeting:<id>``), ordered by ``event_ts``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from .api import ResourceRef, fill_path
from .base import BaseProvider, Delivery, Handshake, check_mac, mac_text, parse_unix_timestamp, required_header
from .errors import PayloadRejected
from .payload import as_sequence, as_text, checked_dig, checked_text, dig, parse_json_object

SIGNATURE = "x-zm-signature"
TIMESTAMP = "x-zm-request-timestamp"
#: Object kinds whose state can be fetched: ``GET /v2/<kind>s/<id>``.
OBJECTS = frozenset({"meeting", "webinar", "user", "recording"})


class ZoomProvider(BaseProvider):
    type_name = "zoom"
    kept_headers = frozenset({SIGNATURE, TIMESTAMP, "x-zm-trackingid"})
    api_base_url = "https://api.zoom.us"

    def verify(self, body: bytes, headers: Mapping[str, str]) -> Delivery:
        offered = required_header(headers, SIGNATURE)
        timestamp = parse_unix_timestamp(required_header(headers, TIMESTAMP), TIMESTAMP)
        self.check_timestamp(timestamp)
        secret = check_mac(self.settings.secrets, b"v0:%d:" % timestamp + body, [offered], prefix="v0=")
        payload = parse_json_object(body)
        event = checked_text(payload.get("event"), "event type")
        if not event:
            raise PayloadRejected("body lacks event")
        if event == "endpoint.url_validation":
            plain = checked_dig(payload, "payload.plainToken")
            if not isinstance(plain, str) or not plain:
                raise PayloadRejected("endpoint.url_validation without payload.plainToken")
            # Answered under the secret that signed it: during a rotation, the one Zoom holds.
            encrypted = mac_text(secret, plain.encode())
            answer = Handshake(200, orjson.dumps({"plainToken": plain, "encryptedToken": encrypted}))
            return Delivery(event, event, payload=payload, handshake=answer)
        object_id = checked_text(checked_dig(payload, "payload.object.uuid"), "resource id") or checked_text(
            checked_dig(payload, "payload.object.id"), "resource id"
        )
        event_ts = checked_text(payload.get("event_ts"), "event_ts")
        if not event_ts:
            raise PayloadRejected("body lacks event_ts")
        kind = event.partition(".")[0]
        resource_id = f"{kind}:{object_id}" if object_id else None
        event_id = f"{event}:{event_ts}:{object_id or ''}"
        return Delivery(event_id, event, resource_id, as_sequence(event_ts) if resource_id else None, payload)

    def resource_ref(self, event_type: str, resource_id: str, payload: Any) -> ResourceRef | None:
        kind = resource_id.partition(":")[0]
        object_id = as_text(dig(payload, "payload.object.id"))
        if kind not in OBJECTS or not object_id:
            return None
        return ResourceRef(kind, fill_path(f"/v2/{kind}s/{{id}}", id=object_id))

    def sign(self, body: bytes, headers: Mapping[str, str], *, secret: str, timestamp: int) -> dict[str, str]:
        signature = mac_text(secret, b"v0:%d:" % timestamp + body, prefix="v0=")
        return {"x-zm-request-timestamp": str(timestamp), "x-zm-signature": signature}

    def sample(
        self, event_type: str, data: Mapping[str, Any] | None, *, event_id: str, timestamp: int
    ) -> tuple[bytes, dict[str, str]]:
        if event_type == "endpoint.url_validation":
            payload: dict[str, Any] = {
                "event": event_type,
                "payload": {"plainToken": event_id},
                "event_ts": timestamp * 1000,
            }
        else:
            state = dict(data) if data else {"id": 85746065432, "uuid": f"{event_id}==", "topic": "Standup"}
            payload = {
                "event": event_type,
                "event_ts": timestamp * 1000,
                "payload": {"account_id": "AAAAAABBBB", "object": state},
            }
        return orjson.dumps(payload), {"Content-Type": "application/json"}
