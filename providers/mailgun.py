"""Mailgun: the signature travels in the JSON body, ``signature: {timestamp, token, signature}``,
the hex HMAC-SHA256 of ``timestamp + token`` keyed with the account's HTTP webhook signing key.

The body itself is not signed: a captured signature block verifies any body for as long as its
timestamp passes ``tolerance_seconds``, so keep the tolerance short and rely on reconciliation
for what matters (the README's provider table says so). The dedupe key is ``event-data.id``, the
type ``event-data.event`` (``delivered``, ``failed``, ``opened``…). Opens and clicks repeat and
are not states of a message, so events carry no resource id.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import orjson

from .base import BaseProvider, Delivery, check_mac, mac_text, parse_unix_timestamp
from .errors import PayloadRejected, SignatureRejected
from .payload import checked_dig, checked_text, parse_json_object


class MailgunProvider(BaseProvider):
    type_name = "mailgun"

    def verify(self, body: bytes, headers: Mapping[str, str]) -> Delivery:
        payload = parse_json_object(body)
        block = payload.get("signature")
        if not isinstance(block, Mapping) or not all(
            isinstance(block.get(k), str) for k in ("timestamp", "token", "signature")
        ):
            raise SignatureRejected("body lacks signature.timestamp, token and signature")
        timestamp = parse_unix_timestamp(block["timestamp"], "signature.timestamp")
        self.check_timestamp(timestamp)
        check_mac(self.settings.secrets, (block["timestamp"] + block["token"]).encode(), [block["signature"]])
        event_id = checked_text(checked_dig(payload, "event-data.id"), "event id")
        event_type = checked_text(checked_dig(payload, "event-data.event"), "event type")
        if not event_id or not event_type:
            raise PayloadRejected("body lacks event-data.id or event-data.event")
        return Delivery(event_id, event_type, payload=payload)

    def sign_sample(
        self, body: bytes, headers: dict[str, str], *, secret: str, timestamp: int, url: str
    ) -> tuple[bytes, dict[str, str]]:
        """Mailgun signs inside the body: add the signature block to the sample."""
        token = secrets.token_hex(25)
        signature = mac_text(secret, f"{timestamp}{token}".encode())
        payload = {"signature": {"timestamp": str(timestamp), "token": token, "signature": signature}}
        return orjson.dumps({**payload, **orjson.loads(body)}), headers

    def sample(
        self, event_type: str, data: Mapping[str, Any] | None, *, event_id: str, timestamp: int
    ) -> tuple[bytes, dict[str, str]]:
        event = {"id": event_id, "event": event_type, "timestamp": float(timestamp), "recipient": "someone@example.com"}
        return orjson.dumps({"event-data": {**event, **(data or {})}}), {"Content-Type": "application/json"}
