"""Standard Webhooks (and Svix, which Clerk, Resend and many others send through).

Headers ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``; Svix sends the same values
as ``svix-*``. The signature header is a space-separated list of ``v1,<base64>`` items
(HMAC-SHA256); other versions (``v1a`` = Ed25519) are skipped. The key is the base64-decoded
secret after its ``whsec_`` prefix. Signed bytes: ``"<id>.<timestamp>." + body``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from functools import cached_property
from typing import Any

import orjson

from .base import (
    BaseProvider,
    Delivery,
    any_match,
    hmac_digest,
    parse_unix_timestamp,
    required_header,
)
from .errors import PayloadRejected, SignatureRejected
from .payload import checked_text, dig, parse_json_object

#: The specification asks for secrets of 24 to 64 random bytes.
MIN_KEY_BYTES = 24


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (padding may be omitted, as many do)."""
    encoded = secret.removeprefix("whsec_")
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)


class StandardProvider(BaseProvider):
    type_name = "standard"
    kept_headers = frozenset(
        f"{prefix}-{name}" for prefix in ("webhook", "svix") for name in ("id", "timestamp", "signature")
    )

    @cached_property
    def _keys(self) -> list[bytes]:
        return [decode_secret(s) for s in self.settings.secrets]

    def check_secret(self, secret: str) -> str | None:
        try:
            key = decode_secret(secret)
        except (binascii.Error, ValueError):
            return "secret is not whsec_ followed by base64"
        if len(key) < MIN_KEY_BYTES:
            return f"secret decodes to fewer than {MIN_KEY_BYTES} bytes"
        return None

    def verify(self, body: bytes, headers: Mapping[str, str]) -> Delivery:
        prefix = "svix-" if headers.get("svix-signature") else "webhook-"
        msg_id = required_header(headers, prefix + "id")
        timestamp = parse_unix_timestamp(required_header(headers, prefix + "timestamp"), prefix + "timestamp")
        offered = [
            sig.encode()
            for version, _, sig in (
                item.partition(",") for item in required_header(headers, prefix + "signature").split(" ")
            )
            if version == "v1" and sig
        ]
        if not offered:
            raise SignatureRejected(f"malformed {prefix}signature header")
        self.check_timestamp(timestamp)
        signed = f"{msg_id}.{timestamp}.".encode() + body
        expected = (base64.b64encode(hmac_digest(key, signed)) for key in self._keys)
        if not any_match(expected, offered):
            raise SignatureRejected("signature does not match")
        event_id = checked_text(msg_id, "event id")
        payload = parse_json_object(body)
        event_type = checked_text(payload.get("type"), "event type")
        if not event_id or not event_type:
            raise PayloadRejected("body lacks the event's type")
        # Only ``type`` is the standard's; ``data`` is each sender's own, so a data.id that is not
        # text names no resource rather than refusing the event (text with control characters is
        # still refused, like any id).
        data_id = dig(payload, "data.id")
        resource_id = checked_text(data_id, "resource id") if isinstance(data_id, str | int) else None
        return Delivery(event_id, event_type, resource_id, timestamp * 1000, payload)

    def sign(self, body: bytes, headers: Mapping[str, str], *, secret: str, timestamp: int) -> dict[str, str]:
        msg_id = headers["webhook-id"]
        signed = f"{msg_id}.{timestamp}.".encode() + body
        signature = base64.b64encode(hmac_digest(decode_secret(secret), signed)).decode()
        return {"webhook-timestamp": str(timestamp), "webhook-signature": f"v1,{signature}"}

    def sample(
        self, event_type: str, data: Mapping[str, Any] | None, *, event_id: str, timestamp: int
    ) -> tuple[bytes, dict[str, str]]:
        payload = {"type": event_type, "timestamp": timestamp, "data": dict(data) if data else {"id": "obj_1"}}
        return orjson.dumps(payload), {"Content-Type": "application/json", "webhook-id": event_id}
