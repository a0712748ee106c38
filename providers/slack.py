"""Slack (Events API, slash commands, interactivity): ``X-Slack-Signature: v0=<hex>``, an
HMAC-SHA256 keyed with the app's signing secret over ``"v0:<X-Slack-Request-Timestamp>:" + body``.
The timestamp must be within ``tolerance_seconds`` (Slack's SDK uses 300).

Events API bodies are JSON envelopes: the dedupe key is ``event_id`` (Slack's retries reuse it,
often while the first try is still running), the type is the inner ``event.type``. Saving the
Request URL sends a signed ``url_verification``; it is verified, then answered with the
``challenge`` value as plain text, and never stored. Slash commands and interactive payloads are
forms (interactivity puts JSON in a ``payload`` field); they are keyed by ``trigger_id`` and typed
``slash_command`` and ``interactive.<payload type>``. Slack events are not versions of one
resource (a channel's messages are not states of the channel), so they carry no resource id and
are never superseded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import orjson

from .base import (
    BaseProvider,
    Delivery,
    Handshake,
    check_mac,
    mac_text,
    parse_unix_timestamp,
    required_header,
)
from .errors import PayloadRejected
from .payload import FORM, checked_text, is_form, parse_form, parse_json_object

SIGNATURE = "x-slack-signature"
TIMESTAMP = "x-slack-request-timestamp"


def parse_slack_form(body: bytes) -> dict[str, Any]:
    """A Slack form: its fields, with interactivity's ``payload`` field parsed as JSON."""
    fields = dict(parse_form(body))
    if "payload" in fields:
        return parse_json_object(fields["payload"].encode())
    return fields


class SlackProvider(BaseProvider):
    type_name = "slack"
    kept_headers = frozenset({SIGNATURE, TIMESTAMP, "x-slack-retry-num", "x-slack-retry-reason"})

    def verify(self, body: bytes, headers: Mapping[str, str]) -> Delivery:
        offered = required_header(headers, SIGNATURE)
        timestamp = parse_unix_timestamp(required_header(headers, TIMESTAMP), TIMESTAMP)
        self.check_timestamp(timestamp)
        check_mac(self.settings.secrets, b"v0:%d:" % timestamp + body, [offered], prefix="v0=")
        payload = self.decode(body, headers)
        if payload.get("type") == "url_verification":
            challenge = payload.get("challenge")
            if not isinstance(challenge, str):
                raise PayloadRejected("url_verification without a challenge")
            return Delivery("url_verification", "url_verification", payload=payload, handshake=_answer(challenge))
        if is_form(headers):
            return self._form_delivery(payload)
        event = payload.get("event")
        event_id = checked_text(payload.get("event_id"), "event id")
        event_type = checked_text(event.get("type"), "event type") if isinstance(event, Mapping) else None
        if not event_id or not event_type:
            raise PayloadRejected("body lacks event_id or event.type")
        return Delivery(event_id, event_type, payload=payload)

    def decode(self, body: bytes, headers: Mapping[str, str]) -> Any:
        return parse_slack_form(body) if is_form(headers) else parse_json_object(body)

    @staticmethod
    def _form_delivery(payload: Mapping[str, Any]) -> Delivery:
        trigger = checked_text(payload.get("trigger_id"), "event id")
        if not trigger:
            raise PayloadRejected("form without a trigger_id")
        if "command" in payload:
            return Delivery(trigger, "slash_command", payload=payload)
        kind = checked_text(payload.get("type"), "event type") or "unknown"
        return Delivery(trigger, f"interactive.{kind}", payload=payload)

    def sign(self, body: bytes, headers: Mapping[str, str], *, secret: str, timestamp: int) -> dict[str, str]:
        signature = mac_text(secret, b"v0:%d:" % timestamp + body, prefix="v0=")
        return {"X-Slack-Request-Timestamp": str(timestamp), "X-Slack-Signature": signature}

    def sample(
        self, event_type: str, data: Mapping[str, Any] | None, *, event_id: str, timestamp: int
    ) -> tuple[bytes, dict[str, str]]:
        if event_type == "slash_command":
            fields = {"command": "/hookgate", "text": "hello", "trigger_id": event_id, **(data or {})}
            return urlencode(fields).encode(), {"Content-Type": FORM}
        if event_type == "url_verification":
            envelope: dict[str, Any] = {"type": "url_verification", "token": "legacy", "challenge": event_id}
        else:
            event = dict(data) if data else {"channel": "C0123", "user": "U0123", "text": "hello"}
            envelope = {
                "type": "event_callback",
                "team_id": "T0123",
                "api_app_id": "A0123",
                "event_id": event_id,
                "event_time": timestamp,
                "event": {"type": event_type, **event},
            }
        return orjson.dumps(envelope), {"Content-Type": "application/json"}


def _answer(challenge: str) -> Handshake:
    return Handshake(200, challenge.encode(), "text/plain")
