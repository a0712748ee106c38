"""Twilio (messaging and voice status callbacks): ``X-Twilio-Signature``, the base64 HMAC-SHA1,
keyed with the account's auth token, of the URL Twilio requested followed by every form field's
name and value, sorted by name (a repeated name's values sorted too), with no separators.

JSON bodies are signed through the URL: Twilio adds ``bodySHA256=<hex sha256 of the body>`` to its
query string and signs the URL alone, so the body's hash is checked as well. Because Twilio is
inconsistent about default ports, the URL is tried as given, without its port and with the
default port added, as Twilio's SDK does. Nothing is timed, so a captured request verifies
forever: dedupe and reconciliation are what limit a replay.

The URL is ``public_url`` (plus the request's query) when set, else the request's own URL as a
proxy's ``X-Forwarded-Proto``/``X-Forwarded-Host`` describe it. The dedupe key is the
``I-Twilio-Idempotency-Token`` header when present, else the resource and its status (a status
callback is unique per SID and status). The type is ``message.<status>`` or ``call.<status>``;
the resource is the message or call SID, ordered by ``SequenceNumber`` when Twilio sends one,
else by how far along its lifecycle the status is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from itertools import groupby
from typing import Any
from urllib.parse import SplitResult, urlencode

from .api import ResourceRef, fill_path
from .base import Delivery, Inbound, SignsUrl, check_any_mac, mac_text, required_header, split_url
from .errors import PayloadRejected, SignatureRejected
from .payload import FORM, as_sequence, checked_text, is_form, parse_form, parse_json_object

SIGNATURE = "x-twilio-signature"
IDEMPOTENCY = "i-twilio-idempotency-token"
DEFAULT_PORTS = {"https": 443, "http": 80}
#: Where each status sits in a message's or a call's life: a later one is never undone.
STAGES = {
    **dict.fromkeys(("accepted", "scheduled", "queued", "initiated"), 1),
    **dict.fromkeys(("sending", "receiving", "ringing"), 2),
    **dict.fromkeys(("sent", "received", "in-progress", "answered"), 3),
    **dict.fromkeys(("delivered", "undelivered", "failed", "canceled", "completed", "busy", "no-answer"), 4),
    "read": 5,
}


def signed_message(url: str, fields: list[tuple[str, str]]) -> bytes:
    """The URL, then each name immediately followed by its value, names and values sorted."""
    parts = [url]
    for name, group in groupby(sorted(fields), key=lambda field: field[0]):
        parts += [name + value for value in sorted({value for _, value in group})]
    return "".join(parts).encode()


def url_variants(url: str) -> list[str]:
    """The URL as given, without its port, and with the scheme's default port added.

    Raises:
        PayloadRejected: ``url`` cannot be parsed.
    """
    parts = split_url(url)
    host = parts.hostname or ""
    default = DEFAULT_PORTS.get(parts.scheme)
    without = _with_netloc(parts, host)
    with_port = _with_netloc(parts, f"{host}:{parts.port or default}") if (parts.port or default) else url
    return list(dict.fromkeys((url, without, with_port)))


def _with_netloc(parts: SplitResult, netloc: str) -> str:
    return parts._replace(netloc=netloc).geturl()


class TwilioProvider(SignsUrl):
    type_name = "twilio"
    kept_headers = frozenset({SIGNATURE, IDEMPOTENCY})
    api_base_url = "https://api.twilio.com"

    def verify_request(self, request: Inbound) -> Delivery:
        offered = required_header(request.headers, SIGNATURE)
        url = self.signed_url(request)
        if is_form(request.headers):
            fields = parse_form(request.body)
        else:
            claimed = request.query.get("bodySHA256", "")
            if not claimed or hashlib.sha256(request.body).hexdigest() != claimed.lower():
                raise SignatureRejected("body does not match bodySHA256")
            fields = []
        messages = (signed_message(candidate, fields) for candidate in url_variants(url))
        check_any_mac(self.settings.secrets, messages, [offered], algorithm="sha1", encoding="base64")
        return self._delivery(self.decode(request.body, request.headers), request.headers)

    def decode(self, body: bytes, headers: Mapping[str, str]) -> Any:
        return dict(parse_form(body)) if is_form(headers) else parse_json_object(body)

    @staticmethod
    def _delivery(fields: Mapping[str, Any], headers: Mapping[str, str]) -> Delivery:
        message_sid = checked_text(fields.get("MessageSid"), "resource id")
        call_sid = None if message_sid else checked_text(fields.get("CallSid"), "resource id")
        if message_sid:
            kind, sid = "message", message_sid
            status = checked_text(fields.get("MessageStatus"), "event type") or checked_text(
                fields.get("SmsStatus"), "event type"
            )
        elif call_sid:
            kind, sid, status = "call", call_sid, checked_text(fields.get("CallStatus"), "event type")
        else:
            raise PayloadRejected("neither MessageSid nor CallSid in the request")
        status = status or "received"
        event_id = checked_text(headers.get(IDEMPOTENCY), "event id") or f"{sid}:{status}"
        sequence = as_sequence(fields.get("SequenceNumber"))
        return Delivery(
            event_id, f"{kind}.{status}", sid, sequence if sequence is not None else STAGES.get(status, 0), fields
        )

    def resource_ref(self, event_type: str, resource_id: str, payload: Any) -> ResourceRef | None:
        """``/2010-04-01/Accounts/<AccountSid>/Messages/<sid>.json`` (``Calls`` for calls)."""
        account = payload.get("AccountSid") if isinstance(payload, Mapping) else None
        if not isinstance(account, str) or not account:
            return None
        kind = event_type.partition(".")[0]
        collection = "Messages" if kind == "message" else "Calls"
        path = fill_path(
            f"/2010-04-01/Accounts/{{account}}/{collection}/{{sid}}.json", account=account, sid=resource_id
        )
        return ResourceRef(kind, path)

    def sign_request(self, request: Inbound, *, secret: str, timestamp: int) -> dict[str, str]:
        fields = parse_form(request.body) if is_form(request.headers) else []
        message = signed_message(self.signed_url(request), fields)
        return {"X-Twilio-Signature": mac_text(secret, message, algorithm="sha1", encoding="base64")}

    def sample(
        self, event_type: str, data: Mapping[str, Any] | None, *, event_id: str, timestamp: int
    ) -> tuple[bytes, dict[str, str]]:
        kind, _, status = event_type.partition(".")
        sid_name = "CallSid" if kind == "call" else "MessageSid"
        fields = {
            "AccountSid": "AC00000000000000000000000000000000",
            sid_name: "CA" + "0" * 32 if kind == "call" else "SM" + "0" * 32,
            ("CallStatus" if kind == "call" else "MessageStatus"): status or "delivered",
            "From": "+15005550006",
            "To": "+15005550009",
            **(data or {}),
        }
        return urlencode(fields).encode(), {"Content-Type": FORM, "I-Twilio-Idempotency-Token": event_id}
