"""Stripe: ``Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]``.

HMAC-SHA256 keyed with the whole ``whsec_…`` string (not base64-decoded), over
``"<t>." + body``. Several ``v1`` items are sent while a rolled secret overlaps the new one.
Stripe's SDK only refuses old timestamps; we refuse both directions, as a replay window should.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from .api import ResourceRef, fill_path
from .base import (
    BaseProvider,
    Delivery,
    check_mac,
    mac_text,
    parse_unix_timestamp,
    required_header,
)
from .errors import PayloadRejected, SignatureRejected
from .payload import as_sequence, as_text, checked_dig, checked_text, dig, parse_json_object

HEADER = "stripe-signature"


class StripeProvider(BaseProvider):
    type_name = "stripe"
    kept_headers = frozenset({HEADER})
    api_base_url = "https://api.stripe.com"

    def verify(self, body: bytes, headers: Mapping[str, str]) -> Delivery:
        timestamp, offered = self._parse_header(required_header(headers, HEADER))
        self.check_timestamp(timestamp)
        check_mac(self.settings.secrets, b"%d." % timestamp + body, offered)
        payload = parse_json_object(body)
        event_id = checked_text(payload.get("id"), "event id")
        event_type = checked_text(payload.get("type"), "event type")
        if not event_id or not event_type:
            raise PayloadRejected("body lacks the event's id or type")
        return Delivery(
            event_id=event_id,
            event_type=event_type,
            resource_id=checked_text(checked_dig(payload, "data.object.id"), "resource id")
            or checked_text(checked_dig(payload, "related_object.id"), "resource id"),
            sequence=as_sequence(payload.get("created")),
            payload=payload,
        )

    def resource_ref(self, event_type: str, resource_id: str, payload: Any) -> ResourceRef | None:
        """The object the event names: ``/v1/<object>s/<id>`` from a snapshot event's
        ``data.object`` (``checkout.session`` → ``/v1/checkout/sessions/<id>``), or a thin
        event's ``related_object.url`` (checked against the API host like any payload URL)."""
        obj = dig(payload, "data.object")
        if isinstance(obj, Mapping) and isinstance(obj.get("object"), str) and obj.get("id") == resource_id:
            kind = obj["object"]
            # Each dotted part of the type is one path segment, encoded (and checked) like an id.
            parts = {f"part{index}": part for index, part in enumerate(kind.split("."))}
            template = "/v1/" + "/".join(f"{{{name}}}" for name in parts) + "s/{id}"
            return ResourceRef(kind, fill_path(template, **parts, id=resource_id))
        related = payload.get("related_object") if isinstance(payload, Mapping) else None
        if isinstance(related, Mapping) and isinstance(related.get("url"), str):
            return ResourceRef(as_text(related.get("type")), url=related["url"])
        return None

    @staticmethod
    def _parse_header(value: str) -> tuple[int, list[str]]:
        timestamp: int | None = None
        signatures = []
        for item in value.split(","):
            key, _, val = item.strip().partition("=")
            if key == "t" and timestamp is None:
                timestamp = parse_unix_timestamp(val, HEADER)
            elif key == "v1":
                signatures.append(val)
        if timestamp is None or not signatures:
            raise SignatureRejected(f"malformed {HEADER} header")
        return timestamp, signatures

    def sign(self, body: bytes, headers: Mapping[str, str], *, secret: str, timestamp: int) -> dict[str, str]:
        return {"Stripe-Signature": f"t={timestamp},v1={mac_text(secret, b'%d.' % timestamp + body)}"}

    def sample(
        self, event_type: str, data: Mapping[str, Any] | None, *, event_id: str, timestamp: int
    ) -> tuple[bytes, dict[str, str]]:
        obj = dict(data) if data else {"id": f"obj_{int(time.time() * 1000)}", "object": event_type.split(".")[0]}
        payload = {
            "id": event_id,
            "object": "event",
            "api_version": "2024-06-20",
            "created": timestamp,
            "livemode": False,
            "type": event_type,
            "data": {"object": obj},
        }
        return orjson.dumps(payload), {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        }
