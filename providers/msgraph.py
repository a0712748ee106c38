"""Microsoft Graph change notifications. Nothing is signed: each notification echoes the
``clientState`` given when the subscription was created, and ``secrets`` are the accepted values
(compared in constant time; several while one is rotated). Rich notifications' JWT
``validationTokens`` and encrypted resource data are not checked or decrypted: subscribe without
resource data, and let reconciliation fetch the resource.

Creating or renewing a subscription, Graph posts with ``?validationToken=<token>``; it is answered
``200 text/plain`` with the token, within Graph's 10 seconds, and never stored. A notification
batches changes in ``value``: each becomes its own event, typed ``<changeType>``
(``created``, ``updated``, ``deleted``) or ``lifecycle.<lifecycleEvent>``, with its ``resource``
(``Users/<id>/Messages/<id>``) as resource id, fetched from ``/v1.0/<resource>``. A change is
deduped on its ``id`` where Graph gives one (it is optional), else on a digest of its JSON, which
Graph's retries repeat.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from .api import ResourceRef, fill_path
from .base import MAX_SIGNATURE_HEADER, BaseProvider, Delivery, Handshake, Inbound, any_match, batch_delivery
from .errors import PayloadRejected, SignatureRejected
from .payload import checked_text, parse_json_object


class MicrosoftGraphProvider(BaseProvider):
    type_name = "msgraph"
    reads_url = True
    api_base_url = "https://graph.microsoft.com"

    def verify_request(self, request: Inbound) -> Delivery:
        token = request.query.get("validationToken")
        if token is not None:
            if not token or len(token) > MAX_SIGNATURE_HEADER:
                raise PayloadRejected("validationToken is empty or too long")
            return Delivery("validation", "validation", handshake=Handshake(200, token.encode(), "text/plain"))
        return self.verify(request.body, request.headers)

    def verify(self, body: bytes, headers: Mapping[str, str]) -> Delivery:
        changes = parse_json_object(body).get("value")
        if not isinstance(changes, list) or not changes or not all(isinstance(c, dict) for c in changes):
            raise PayloadRejected("body lacks a value array of notifications")
        accepted = [secret.encode() for secret in self.settings.secrets]
        for change in changes:
            state = change.get("clientState")
            if not isinstance(state, str) or not any_match(accepted, [state.encode()]):
                raise SignatureRejected("clientState does not match")
        return batch_delivery(body, changes, (self._change(change) for change in changes))

    @staticmethod
    def _change(change: Mapping[str, Any]) -> Delivery:
        body = orjson.dumps(change)
        lifecycle = checked_text(change.get("lifecycleEvent"), "event type")
        event_type = f"lifecycle.{lifecycle}" if lifecycle else checked_text(change.get("changeType"), "event type")
        if not event_type:
            raise PayloadRejected("a notification lacks changeType or lifecycleEvent")
        digest = hashlib.sha256(orjson.dumps(change, option=orjson.OPT_SORT_KEYS)).hexdigest()[:40]
        event_id = checked_text(change.get("id"), "event id") or f"change-{digest}"
        resource = None if lifecycle else checked_text(change.get("resource"), "resource id")
        return Delivery(event_id, event_type, resource, payload=change, body=body)

    def resource_ref(self, event_type: str, resource_id: str, payload: Any) -> ResourceRef | None:
        """``/v1.0/<resource>``, each segment of the resource path encoded on its own."""
        segments = [s for s in resource_id.strip("/").split("/") if s]
        if not segments:
            return None
        names = {f"s{i}": segment for i, segment in enumerate(segments)}
        path = fill_path("/v1.0/" + "/".join(f"{{{name}}}" for name in names), **names)
        kind = segments[-2].lower() if len(segments) > 1 else segments[0].lower()
        return ResourceRef(kind, path)

    def sign_sample(
        self, body: bytes, headers: dict[str, str], *, secret: str, timestamp: int, url: str
    ) -> tuple[bytes, dict[str, str]]:
        """Graph signs nothing: the sample's notifications carry ``secret`` as their clientState."""
        changes = [{**change, "clientState": secret} for change in orjson.loads(body)["value"]]
        return orjson.dumps({"value": changes}), headers

    def sample(
        self, event_type: str, data: Mapping[str, Any] | None, *, event_id: str, timestamp: int
    ) -> tuple[bytes, dict[str, str]]:
        change = {
            "subscriptionId": "7f105c7d-2dc5-4530-97cd-4e7ae6534c07",
            "subscriptionExpirationDateTime": "2026-01-03T03:04:05.000Z",
            "changeType": event_type,
            "resource": f"Users/6d8b4c5e/Messages/{event_id}",
            "resourceData": {"@odata.type": "#Microsoft.Graph.Message", "id": event_id},
            "tenantId": "84bd8158-6d4d-4958-8b9f-9d6445542f95",
            **(data or {}),
        }
        return orjson.dumps({"value": [change]}), {"Content-Type": "application/json"}
