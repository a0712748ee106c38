"""HubSpot (v3 signatures): ``X-HubSpot-Signature-v3``, the base64 HMAC-SHA256 keyed with the
app's client secret over method + URL + raw body + ``X-HubSpot-Request-Timestamp`` (milliseconds),
checked within ``tolerance_seconds``. The URL is the one HubSpot called: ``public_url`` behind a
proxy. HubSpot's documentation has the receiver decode a few percent-escapes (``%3A``, ``%2F``,
``%3F``, ``%40``, ``%21``, ``%24``, ``%27``, ``%28``, ``%29``, ``%2A``, ``%2C``, ``%3B``) in the URL
before signing while its SDK does not, so both forms are accepted.

The body is a JSON array of up to 100 events: each becomes its own event, deduped on its
``eventId`` (a retried batch repeats them), typed by ``subscriptionType``
(``contact.propertyChange``). The resource is the CRM object (``contact:<objectId>``), ordered by
``occurredAt``, and fetched from ``/crm/v3/objects/<type>s/<id>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from .api import ResourceRef, collection_ref
from .base import (
    Delivery,
    Inbound,
    SignsUrl,
    batch_delivery,
    check_any_mac,
    mac_text,
    parse_unix_timestamp,
    required_header,
)
from .errors import PayloadRejected
from .payload import as_sequence, checked_text, parse_json_array, typed_id

SIGNATURE = "x-hubspot-signature-v3"
TIMESTAMP = "x-hubspot-request-timestamp"
#: The escapes HubSpot's documentation decodes before signing.
DECODED = {"%3A": ":", "%2F": "/", "%3F": "?", "%40": "@", "%21": "!", "%24": "$", "%27": "'", "%28": "(", "%29": ")"}
DECODED |= {"%2A": "*", "%2C": ",", "%3B": ";"}
#: CRM object types whose state can be fetched, and their collections.
COLLECTIONS = {"contact": "contacts", "company": "companies", "deal": "deals", "ticket": "tickets"}


def decode_escapes(url: str) -> str:
    for escape, char in DECODED.items():
        url = url.replace(escape, char).replace(escape.lower(), char)
    return url


class HubSpotProvider(SignsUrl):
    type_name = "hubspot"
    kept_headers = frozenset({SIGNATURE, TIMESTAMP})
    api_base_url = "https://api.hubapi.com"

    def verify_request(self, request: Inbound) -> Delivery:
        offered = required_header(request.headers, SIGNATURE)
        millis = required_header(request.headers, TIMESTAMP)
        self.check_timestamp(parse_unix_timestamp(millis, TIMESTAMP) / 1000)
        url = self.signed_url(request)
        variants = dict.fromkeys((url, decode_escapes(url)))
        messages = (f"{request.method}{u}".encode() + request.body + millis.encode() for u in variants)
        check_any_mac(self.settings.secrets, messages, [offered], encoding="base64")
        events = parse_json_array(request.body)
        return batch_delivery(request.body, events, (self._event(event) for event in events))

    @staticmethod
    def _event(event: Mapping[str, Any]) -> Delivery:
        event_id = checked_text(event.get("eventId"), "event id")
        event_type = checked_text(event.get("subscriptionType"), "event type")
        if not event_id or not event_type:
            raise PayloadRejected("an event lacks eventId or subscriptionType")
        resource_id = typed_id(event_type.partition(".")[0], event.get("objectId"))
        sequence = as_sequence(event.get("occurredAt")) if resource_id else None
        return Delivery(event_id, event_type, resource_id, sequence, event, body=orjson.dumps(event))

    def resource_ref(self, event_type: str, resource_id: str, payload: Any) -> ResourceRef | None:
        return collection_ref(resource_id, COLLECTIONS, "/crm/v3/objects/{collection}/{id}")

    def sign_request(self, request: Inbound, *, secret: str, timestamp: int) -> dict[str, str]:
        millis = str(timestamp * 1000)
        message = f"{request.method}{self.signed_url(request)}".encode() + request.body + millis.encode()
        return {
            "X-HubSpot-Signature-v3": mac_text(secret, message, encoding="base64"),
            TIMESTAMP: millis,
        }

    def sample(
        self, event_type: str, data: Mapping[str, Any] | None, *, event_id: str, timestamp: int
    ) -> tuple[bytes, dict[str, str]]:
        event = {
            "eventId": int(event_id) if event_id.isdigit() else event_id,
            "subscriptionId": 12345,
            "portalId": 62515,
            "appId": 54321,
            "occurredAt": timestamp * 1000,
            "subscriptionType": event_type,
            "attemptNumber": 0,
            "objectId": 123,
            "changeSource": "CRM",
            **(data or {}),
        }
        return orjson.dumps([event]), {"Content-Type": "application/json"}
