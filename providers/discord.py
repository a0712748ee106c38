"""Discord (interactions endpoint, and webhook events): ``X-Signature-Ed25519``, a hex Ed25519
signature over ``X-Signature-Timestamp`` followed by the raw body, checked with the application's
public key (``public_key``: the 64 hex characters on the developer portal). Discord deliberately
sends bad signatures and expects 401. Its SDK checks no time; Hookgate applies
``tolerance_seconds``.

Interactions: ``PING`` (type 1) is answered ``{"type":1}``. A command, component or modal is
stored, then answered with a deferred response (``{"type":5}``, or ``{"type":6}`` for a
component), so that a handler follows up with the interaction's token within its 15 minutes.
Autocomplete needs its choices at once; it is answered with none. Webhook events: ``PING``
(type 0) and every stored event are answered ``204``. Interactions are deduped on their ``id``,
webhook events (which have none) on a digest of the body; neither carries a resource id.
"""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Mapping
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .base import Delivery, Handshake, KeyPairProvider, parse_unix_timestamp, required_header
from .errors import PayloadRejected, SignatureRejected
from .payload import checked_dig, checked_text, parse_json_object

SIGNATURE = "x-signature-ed25519"
TIMESTAMP = "x-signature-timestamp"
NO_CONTENT = Handshake(204, b"")
#: Interaction types (Discord's numbering) → event type and the answer once it is stored.
INTERACTIONS = {
    2: ("interaction.application_command", Handshake(200, b'{"type":5}')),
    3: ("interaction.message_component", Handshake(200, b'{"type":6}')),
    4: ("interaction.autocomplete", Handshake(200, b'{"type":8,"data":{"choices":[]}}')),
    5: ("interaction.modal_submit", Handshake(200, b'{"type":5}')),
}


class DiscordProvider(KeyPairProvider):
    type_name = "discord"
    kept_headers = frozenset({SIGNATURE, TIMESTAMP})
    key_format = "the application's public key, 64 hex characters"

    @staticmethod
    def load_key(value: str) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(value))

    def verify(self, body: bytes, headers: Mapping[str, str]) -> Delivery:
        offered = required_header(headers, SIGNATURE)
        timestamp = required_header(headers, TIMESTAMP)
        self.check_timestamp(parse_unix_timestamp(timestamp, TIMESTAMP))
        try:
            self.public_key.verify(bytes.fromhex(offered), timestamp.encode() + body)
        except (InvalidSignature, ValueError, binascii.Error):
            raise SignatureRejected("signature does not match") from None
        payload = parse_json_object(body)
        kind = payload.get("type")
        if not isinstance(kind, int) or isinstance(kind, bool):
            raise PayloadRejected("type is not an integer")
        if "event" in payload or (kind == 0 and "token" not in payload):
            return self._webhook_event(payload, body)
        if kind == 1:
            return Delivery("ping", "ping", payload=payload, handshake=Handshake(200, b'{"type":1}'))
        interaction_id = checked_text(payload.get("id"), "event id")
        if kind not in INTERACTIONS or not interaction_id:
            raise PayloadRejected("not a known interaction type, or no id")
        event_type, answer = INTERACTIONS[kind]
        return Delivery(interaction_id, event_type, payload=payload, reply=answer)

    @staticmethod
    def _webhook_event(payload: Mapping[str, Any], body: bytes) -> Delivery:
        if payload.get("type") == 0:
            return Delivery("ping", "ping", payload=payload, handshake=NO_CONTENT)
        event_type = checked_text(checked_dig(payload, "event.type"), "event type")
        if not event_type:
            raise PayloadRejected("webhook event without event.type")
        event_id = f"event-{hashlib.sha256(body).hexdigest()[:40]}"
        return Delivery(event_id, event_type, payload=payload, reply=NO_CONTENT)

    def sign(self, body: bytes, headers: Mapping[str, str], *, secret: str, timestamp: int) -> dict[str, str]:
        """``secret`` is the private key's 32-byte seed in hex."""
        key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret))
        return {"X-Signature-Ed25519": key.sign(str(timestamp).encode() + body).hex(), TIMESTAMP: str(timestamp)}

    def sample(
        self, event_type: str, data: Mapping[str, Any] | None, *, event_id: str, timestamp: int
    ) -> tuple[bytes, dict[str, str]]:
        types = {name: number for number, (name, _) in INTERACTIONS.items()}
        if event_type == "ping":
            payload: dict[str, Any] = {"id": event_id, "application_id": "1", "type": 1, "token": "t", "version": 1}
        elif event_type in types:
            payload = {
                "id": event_id,
                "application_id": "1",
                "type": types[event_type],
                "token": "aW50ZXJhY3Rpb24",
                "version": 1,
                "data": dict(data) if data else {"name": "hello", "type": 1},
            }
        else:
            event = {"type": event_type, "timestamp": "2026-01-02T03:04:05.000000+00:00", "data": dict(data or {})}
            payload = {"version": 1, "application_id": "1", "type": 1, "event": event}
        return orjson.dumps(payload), {"Content-Type": "application/json"}
