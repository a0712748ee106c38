"""Twitch EventSub (webhook transport): ``Twitch-Eventsub-Message-Signature: sha256=<hex>``, an
HMAC-SHA256 keyed with the subscription's secret over the message id, the message timestamp and
the raw body, concatenated. Twitch advises refusing messages older than 10 minutes; Hookgate
applies ``tolerance_seconds`` (set it to 600 to follow Twitch to the letter).

``webhook_callback_verification`` (sent when a subscription is created) is verified, then
answered with the bare ``challenge`` as ``text/plain`` and never stored. ``revocation`` messages
are stored as events of type ``revocation`` so that a handler can alert on them. The dedupe key is
``Twitch-Eventsub-Message-Id`` (resends reuse it), the type the subscription type
(``channel.follow``). Twitch events are happenings, not versions of a resource: no resource id.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from .base import BaseProvider, Delivery, Handshake, check_mac, mac_text, required_header
from .errors import PayloadRejected, SignatureRejected
from .payload import checked_dig, checked_text, parse_json_object

PREFIX = "twitch-eventsub-"
MESSAGE_ID, TIMESTAMP, SIGNATURE = (PREFIX + name for name in ("message-id", "message-timestamp", "message-signature"))
MESSAGE_TYPE = PREFIX + "message-type"


def parse_rfc3339(value: str) -> float:
    """Twitch's timestamps carry nanoseconds (``2021-02-19T23:47:00.8091512Z``); Python reads six
    fractional digits at most."""
    head, dot, rest = value.removesuffix("Z").partition(".")
    fraction = "".join(c for c in rest if c.isdigit())[:6]
    try:
        moment = datetime.fromisoformat(f"{head}{dot}{fraction}+00:00" if value.endswith("Z") else value)
    except ValueError:
        raise SignatureRejected(f"malformed {TIMESTAMP} header") from None
    if moment.tzinfo is None:
        raise SignatureRejected(f"malformed {TIMESTAMP} header")
    return moment.timestamp()


class TwitchProvider(BaseProvider):
    type_name = "twitch"
    kept_headers = frozenset(
        PREFIX + name
        for name in (
            "message-id",
            "message-retry",
            "message-type",
            "message-signature",
            "message-timestamp",
            "subscription-type",
            "subscription-version",
        )
    )

    def verify(self, body: bytes, headers: Mapping[str, str]) -> Delivery:
        message_id = required_header(headers, MESSAGE_ID)
        timestamp = required_header(headers, TIMESTAMP)
        offered = required_header(headers, SIGNATURE)
        self.check_timestamp(parse_rfc3339(timestamp))
        check_mac(self.settings.secrets, (message_id + timestamp).encode() + body, [offered], prefix="sha256=")
        event_id = checked_text(message_id, "event id")
        if not event_id:  # never: required_header refused an empty one
            raise SignatureRejected(f"missing {MESSAGE_ID} header")
        payload = parse_json_object(body)
        kind = headers.get(MESSAGE_TYPE, "notification")
        if kind == "webhook_callback_verification":
            challenge = payload.get("challenge")
            if not isinstance(challenge, str):
                raise PayloadRejected("webhook_callback_verification without a challenge")
            return Delivery(event_id, kind, payload=payload, handshake=Handshake(200, challenge.encode(), "text/plain"))
        if kind == "revocation":
            return Delivery(event_id, "revocation", payload=payload)
        event_type = checked_text(headers.get(PREFIX + "subscription-type"), "event type") or checked_text(
            checked_dig(payload, "subscription.type"), "event type"
        )
        if not event_type:
            raise PayloadRejected("no subscription type in the headers or the body")
        return Delivery(event_id, event_type, payload=payload)

    def sign(self, body: bytes, headers: Mapping[str, str], *, secret: str, timestamp: int) -> dict[str, str]:
        when = datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")
        signed = (headers[MESSAGE_ID] + when).encode() + body
        return {
            "Twitch-Eventsub-Message-Timestamp": when,
            SIGNATURE: mac_text(secret, signed, prefix="sha256="),
        }

    def sample(
        self, event_type: str, data: Mapping[str, Any] | None, *, event_id: str, timestamp: int
    ) -> tuple[bytes, dict[str, str]]:
        subscription: dict[str, Any] = {
            "id": "f1c2a387-161a-49f9-a165-0f21d7a4e1c4",
            "status": "enabled",
            "type": event_type,
            "version": "1",
            "condition": {"broadcaster_user_id": "12826"},
            "transport": {"method": "webhook", "callback": "https://example.com/webhooks/twitch"},
            "created_at": "2026-01-02T03:04:05.634234626Z",
        }
        kind = "notification"
        payload: dict[str, Any] = {"subscription": subscription}
        if event_type == "webhook_callback_verification":
            kind, subscription["type"] = event_type, "channel.follow"
            payload["challenge"] = event_id
        else:
            payload["event"] = dict(data) if data else {"user_id": "1337", "broadcaster_user_id": "12826"}
        headers = {
            "Content-Type": "application/json",
            "Twitch-Eventsub-Message-Id": event_id,
            "Twitch-Eventsub-Message-Retry": "0",
            "Twitch-Eventsub-Message-Type": kind,
            "Twitch-Eventsub-Subscription-Type": subscription["type"],
            "Twitch-Eventsub-Subscription-Version": "1",
        }
        return orjson.dumps(payload), headers
