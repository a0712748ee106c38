"""``type: hmac``: any sender that signs with an HMAC, described in providers.yaml.

Example::

    signature: {header: X-Acme-Signature, algorithm: sha256, encoding: hex, prefix: "sha256="}
    timestamp: {header: X-Acme-Timestamp}          # optional; unit: seconds | milliseconds
    signed_payload: "{timestamp}.{body}"           # default "{body}"
    event:
      id: header:X-Acme-Event-Id                   # header:<name> or body:<dotted.path>
      type: body:type
      resource: body:data.id                       # optional
      sequence: body:data.version                  # optional
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from .base import (
    BaseProvider,
    Delivery,
    check_mac,
    mac_text,
    parse_unix_timestamp,
    required_header,
)
from .errors import PayloadRejected
from .payload import as_sequence, as_text, checked_dig, checked_text, dig, parse_json_object

ALGORITHMS = ("sha1", "sha256", "sha512")
ENCODINGS = ("hex", "base64")
EVENT_FIELDS = ("id", "type", "resource", "sequence")


class DeclarativeHmacProvider(BaseProvider):
    type_name = "hmac"
    option_keys = frozenset({"signature", "timestamp", "signed_payload", "event"})

    def check_options(self, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        signature = options.get("signature")
        if not isinstance(signature, Mapping):
            signature = {}
        if not signature.get("header"):
            problems.append(("signature.header", "required: the header that carries the signature"))
        if signature.get("algorithm", "sha256") not in ALGORITHMS:
            problems.append(("signature.algorithm", f"must be one of {', '.join(ALGORITHMS)}"))
        if signature.get("encoding", "hex") not in ENCODINGS:
            problems.append(("signature.encoding", f"must be one of {', '.join(ENCODINGS)}"))
        timestamp = options.get("timestamp") or {}
        if not isinstance(timestamp, Mapping) or (timestamp and not timestamp.get("header")):
            problems.append(("timestamp.header", "required when timestamp is given"))
        elif timestamp.get("unit", "seconds") not in ("seconds", "milliseconds"):
            problems.append(("timestamp.unit", "must be seconds or milliseconds"))
        template = options.get("signed_payload", "{body}")
        if not isinstance(template, str) or template.count("{body}") != 1:
            problems.append(("signed_payload", "must contain {body} exactly once"))
        elif "{timestamp}" in template and not timestamp:
            problems.append(("signed_payload", "uses {timestamp} but no timestamp header is configured"))
        elif template.replace("{body}", "").replace("{timestamp}", "").count("{"):
            problems.append(("signed_payload", "only {timestamp} and {body} may be used"))
        event = options.get("event")
        if not isinstance(event, Mapping):
            return [*problems, ("event", "required: where the event's id and type are found")]
        for name in EVENT_FIELDS:
            source = event.get(name)
            if source is None and name in ("id", "type"):
                problems.append((f"event.{name}", "required"))
            elif source is not None and not (isinstance(source, str) and source.startswith(("header:", "body:"))):
                problems.append((f"event.{name}", "must be header:<Name> or body:<dotted.path>"))
        problems += [(f"event.{key}", "unknown key") for key in event if key not in EVENT_FIELDS]
        return problems

    def stored_headers(self) -> frozenset[str]:
        named = [self._signature["header"], self._timestamp.get("header", "")]
        named += [src.partition(":")[2] for src in self.settings.options["event"].values() if src.startswith("header:")]
        return super().stored_headers() | {name.lower() for name in named if name}

    @property
    def _signature(self) -> Mapping[str, Any]:
        return self.settings.options["signature"]

    @property
    def _timestamp(self) -> Mapping[str, Any]:
        return self.settings.options.get("timestamp") or {}

    def _signed_bytes(self, body: bytes, timestamp: str) -> bytes:
        template = self.settings.options.get("signed_payload", "{body}")
        before, _, after = template.partition("{body}")
        return (
            before.replace("{timestamp}", timestamp).encode() + body + after.replace("{timestamp}", timestamp).encode()
        )

    @property
    def _mac_options(self) -> dict[str, str]:
        """How the configured signature is written: algorithm, encoding and prefix."""
        signature = self._signature
        return {
            "algorithm": signature.get("algorithm", "sha256"),
            "encoding": signature.get("encoding", "hex"),
            "prefix": signature.get("prefix", ""),
        }

    def verify(self, body: bytes, headers: Mapping[str, str]) -> Delivery:
        offered = required_header(headers, self._signature["header"])
        timestamp = ""
        if self._timestamp:
            name = self._timestamp["header"]
            timestamp = required_header(headers, name)
            seconds = parse_unix_timestamp(timestamp, name)
            self.check_timestamp(seconds / 1000 if self._timestamp.get("unit") == "milliseconds" else seconds)
        check_mac(self.settings.secrets, self._signed_bytes(body, timestamp), [offered], **self._mac_options)
        payload = parse_json_object(body)
        event_id = checked_text(self._extract("id", payload, headers, checked_dig), "event id")
        event_type = checked_text(self._extract("type", payload, headers, checked_dig), "event type")
        if not event_id or not event_type:
            raise PayloadRejected("the event's id or type is missing")
        # The resource and its sequence are optional: where a sender's body does not have them in
        # the shape configured, the event is kept without per-resource order rather than refused
        # (a refusal would be retried until the sender disables the endpoint).
        resource = self._extract("resource", payload, headers, dig)
        resource_id = checked_text(resource, "resource id") if isinstance(resource, str) else as_text(resource)
        sequence = self._extract("sequence", payload, headers, dig) if resource_id else None
        if isinstance(sequence, bool | list | dict):
            sequence = None
        return Delivery(event_id, event_type, resource_id, as_sequence(sequence), payload)

    def _extract(self, name: str, payload: Any, headers: Mapping[str, str], follow: Callable[[Any, str], Any]) -> Any:
        """The configured source of ``name``: a header, or a body path read with ``follow``."""
        source = self.settings.options["event"].get(name)
        if source is None:
            return None
        kind, _, where = source.partition(":")
        return headers.get(where) if kind == "header" else follow(payload, where)

    def sign(self, body: bytes, headers: Mapping[str, str], *, secret: str, timestamp: int) -> dict[str, str]:
        signed: dict[str, str] = {}
        stamp = ""
        if self._timestamp:
            stamp = str(timestamp * 1000 if self._timestamp.get("unit") == "milliseconds" else timestamp)
            signed[self._timestamp["header"]] = stamp
        signed[self._signature["header"]] = mac_text(secret, self._signed_bytes(body, stamp), **self._mac_options)
        return signed

    def sample(
        self, event_type: str, data: Mapping[str, Any] | None, *, event_id: str, timestamp: int
    ) -> tuple[bytes, dict[str, str]]:
        payload: dict[str, Any] = {"data": dict(data) if data else {"id": "obj_1", "version": 1}}
        headers = {"Content-Type": "application/json"}
        for name, value in (("id", event_id), ("type", event_type)):
            kind, _, where = self.settings.options["event"][name].partition(":")
            if kind == "header":
                headers[where] = value
            else:
                *parents, leaf = where.split(".")
                node = payload
                for part in parents:
                    node = node.setdefault(part, {})
                node[leaf] = value
        return orjson.dumps(payload), headers
