"""SendGrid Event Webhook (signed): ``X-Twilio-Email-Event-Webhook-Signature``, a base64 DER
ECDSA P-256/SHA-256 signature over ``X-Twilio-Email-Event-Webhook-Timestamp`` followed by the raw
body, checked with the "verification key" from SendGrid's mail settings (``public_key``: base64
SubjectPublicKeyInfo, as SendGrid shows it). SendGrid's SDK checks no time; Hookgate applies
``tolerance_seconds`` to the signed timestamp.

The body is a JSON array of events: each becomes its own event, deduped on its ``sg_event_id``
and typed by its ``event`` (``delivered``, ``open``, ``bounce``…). Opens and clicks repeat and are
not states of the message, so events carry no resource id. SendGrid has no API to reconcile
events against. ``hookgate send`` needs the matching private key (``--key``, PEM).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .base import Delivery, KeyPairProvider, batch_delivery, parse_unix_timestamp, required_header
from .errors import PayloadRejected, SignatureRejected
from .payload import checked_text, parse_json_array

SIGNATURE = "x-twilio-email-event-webhook-signature"
TIMESTAMP = "x-twilio-email-event-webhook-timestamp"


def load_public_key(value: str) -> ec.EllipticCurvePublicKey:
    """A P-256 key from base64 SubjectPublicKeyInfo (PEM armour is accepted too)."""
    text = "".join(line for line in value.strip().splitlines() if not line.startswith("-----"))
    try:
        key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
    except binascii.Error as exc:
        raise ValueError("not base64") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("not a P-256 public key")
    return key


class SendGridProvider(KeyPairProvider):
    type_name = "sendgrid"
    kept_headers = frozenset({SIGNATURE, TIMESTAMP})
    key_format = "the verification key from SendGrid's mail settings (base64 P-256 SubjectPublicKeyInfo)"
    load_key = staticmethod(load_public_key)

    def verify(self, body: bytes, headers: Mapping[str, str]) -> Delivery:
        offered = required_header(headers, SIGNATURE)
        timestamp = required_header(headers, TIMESTAMP)
        self.check_timestamp(parse_unix_timestamp(timestamp, TIMESTAMP))
        try:
            self.public_key.verify(
                base64.b64decode(offered, validate=True), timestamp.encode() + body, ec.ECDSA(hashes.SHA256())
            )
        except (InvalidSignature, binascii.Error, ValueError):
            raise SignatureRejected("signature does not match") from None
        events = parse_json_array(body)
        return batch_delivery(body, events, map(self._event, events))

    @staticmethod
    def _event(event: dict[str, Any]) -> Delivery:
        event_id = checked_text(event.get("sg_event_id"), "event id")
        event_type = checked_text(event.get("event"), "event type")
        if not event_id or not event_type:
            raise PayloadRejected("an event lacks sg_event_id or event")
        return Delivery(event_id, event_type, payload=event, body=orjson.dumps(event))

    def sign(self, body: bytes, headers: Mapping[str, str], *, secret: str, timestamp: int) -> dict[str, str]:
        """``secret`` is the private key in PEM."""
        key = serialization.load_pem_private_key(secret.encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("SendGrid samples are signed with a P-256 private key (PEM)")
        signature = key.sign(str(timestamp).encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            TIMESTAMP: str(timestamp),
        }

    def sample(
        self, event_type: str, data: Mapping[str, Any] | None, *, event_id: str, timestamp: int
    ) -> tuple[bytes, dict[str, str]]:
        event = {
            "email": "someone@example.com",
            "timestamp": timestamp,
            "event": event_type,
            "sg_event_id": event_id,
            "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
            **(data or {}),
        }
        return orjson.dumps([event]) + b"\r\n", {"Content-Type": "application/json"}
