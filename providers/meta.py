"""Meta (Facebook and Instagram Graph webhooks, WhatsApp Cloud API, Messenger):
``X-Hub-Signature-256: sha256=<hex>``, the HMAC-SHA256 of the raw body keyed with the app secret.
No time is signed.

Subscribing, Meta sends ``GET ?hub.mode=subscribe&hub.verify_token=<yours>&hub.challenge=<n>``:
when ``hub.verify_token`` equals ``verify_token`` it is answered with the bare challenge
(``text/plain``), otherwise 401. A notification batches entries, each with ``changes`` (or
``messaging``); every change becomes its own event, typed ``<object>.<field>``
(``whatsapp_business_account.messages``). WhatsApp messages are deduped on their ``wamid`` and
statuses on ``wamid`` + status, with the message as their resource ordered by the status's
timestamp; other changes are deduped on a digest of the entry and change, which Meta's retries
repeat.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from .base import (
    BaseProvider,
    Delivery,
    Handshake,
    Inbound,
    any_match,
    batch_delivery,
    check_mac,
    mac_text,
    required_header,
)
from .errors import PayloadRejected, SignatureRejected
from .payload import as_sequence, checked_dig, checked_text, parse_json_object

SIGNATURE = "x-hub-signature-256"


def _objects(value: Any, reason: str) -> list[Mapping[str, Any]]:
    """``value`` when it is a list of objects; absent or null is an empty list.

    Raises:
        PayloadRejected: with ``reason``, for anything else (``"abc"`` would be iterated letter
            by letter, ``5`` not at all).
    """
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
        raise PayloadRejected(reason)
    return value


def _changes(payload: Mapping[str, Any]) -> Iterator[tuple[Mapping[str, Any], str, Mapping[str, Any]]]:
    """Each change of each entry, with its entry and its field name."""
    entries = payload.get("entry")
    if not isinstance(entries, list):
        raise PayloadRejected("body lacks entry")
    for entry in entries:
        if not isinstance(entry, Mapping):
            raise PayloadRejected("an entry is not an object")
        reason = "an entry's changes or messaging is not a list of objects"
        changes, messaging = _objects(entry.get("changes"), reason), _objects(entry.get("messaging"), reason)
        for change in changes:
            yield entry, checked_text(change.get("field"), "event type") or "change", change
        for message in messaging:
            yield entry, "messaging", message


class MetaProvider(BaseProvider):
    type_name = "meta"
    accepts_get = True
    reads_url = True
    option_keys = frozenset({"verify_token"})
    kept_headers = frozenset({SIGNATURE})

    def check_options(self, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        token = options.get("verify_token")
        if not isinstance(token, str) or not token:
            return [("verify_token", "required: the Verify Token entered in Meta's webhook settings")]
        return []

    def verify_request(self, request: Inbound) -> Delivery:
        if request.method == "GET":
            return self._subscription(request.query)
        return self.verify(request.body, request.headers)

    def _subscription(self, query: Mapping[str, str]) -> Delivery:
        token = self.settings.options["verify_token"]
        challenge = query.get("hub.challenge", "")
        if query.get("hub.mode") != "subscribe" or not challenge:
            raise PayloadRejected("expected hub.mode=subscribe and a hub.challenge")
        offered = query.get("hub.verify_token", "").encode()
        if not any_match([token.encode()], [offered]):
            raise SignatureRejected("verify token does not match")
        return Delivery("subscribe", "subscribe", handshake=Handshake(200, challenge.encode(), "text/plain"))

    def verify(self, body: bytes, headers: Mapping[str, str]) -> Delivery:
        check_mac(self.settings.secrets, body, [required_header(headers, SIGNATURE)], prefix="sha256=")
        payload = parse_json_object(body)
        kind = checked_text(payload.get("object"), "event type") or "unknown"
        changes = _changes(payload)
        return batch_delivery(
            body, payload, (self._event(kind, entry, field, change) for entry, field, change in changes)
        )

    @staticmethod
    def _event(kind: str, entry: Mapping[str, Any], field: str, change: Mapping[str, Any]) -> Delivery:
        event = {
            "object": kind,
            "entry_id": entry.get("id"),
            "time": entry.get("time"),
            "field": field,
            "change": change,
        }
        body = orjson.dumps(event)
        event_type = f"{kind}.{field}"
        messages = _objects(checked_dig(change, "value.messages"), "value.messages is not a list of objects")
        statuses = _objects(checked_dig(change, "value.statuses"), "value.statuses is not a list of objects")
        message_id = checked_text(messages[0].get("id"), "event id") if messages else None
        if message_id:
            return Delivery(message_id, event_type, payload=event, body=body)
        status_id = checked_text(statuses[0].get("id"), "event id") if statuses else None
        if status_id:
            state = checked_text(statuses[0].get("status"), "event type") or "unknown"
            sequence = as_sequence(statuses[0].get("timestamp"))
            return Delivery(
                f"{status_id}:{state}", f"{event_type}.{state}", f"message:{status_id}", sequence, event, body=body
            )
        digest = hashlib.sha256(orjson.dumps(event, option=orjson.OPT_SORT_KEYS)).hexdigest()[:40]
        return Delivery(f"change-{digest}", event_type, payload=event, body=body)

    def sign(self, body: bytes, headers: Mapping[str, str], *, secret: str, timestamp: int) -> dict[str, str]:
        return {"X-Hub-Signature-256": mac_text(secret, body, prefix="sha256=")}

    def sample(
        self, event_type: str, data: Mapping[str, Any] | None, *, event_id: str, timestamp: int
    ) -> tuple[bytes, dict[str, str]]:
        kind, _, field = event_type.partition(".")
        value = (
            dict(data)
            if data
            else {"messaging_product": "whatsapp", "messages": [{"id": f"wamid.{event_id}", "type": "text"}]}
        )
        payload = {
            "object": kind,
            "entry": [
                {
                    "id": "102290129340398",
                    "time": timestamp,
                    "changes": [{"field": field or "messages", "value": value}],
                }
            ],
        }
        return orjson.dumps(payload), {"Content-Type": "application/json"}
