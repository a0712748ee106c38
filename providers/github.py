"""GitHub: ``X-Hub-Signature-256: sha256=<hex>`` over the raw body; no timestamp is signed.

The delivery GUID (``X-GitHub-Delivery``) is the dedupe key: redeliveries reuse it. The event
type is ``X-GitHub-Event`` refined by the body's ``action`` (``issues.opened``). ``ping``, sent
when a hook is created, is answered as a handshake and never stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from .api import ResourceRef
from .base import BaseProvider, Delivery, Handshake, check_mac, mac_text, required_header
from .errors import PayloadRejected, SignatureRejected
from .payload import as_sequence, as_text, checked_text, parse_json_object

HEADER = "x-hub-signature-256"
PREFIX = "sha256="
PONG = Handshake(200, b'{"status":"handshake","event":"ping"}')

#: Payload keys naming the object an event is about, most specific first.
RESOURCE_KEYS = (
    "issue",
    "pull_request",
    "check_run",
    "check_suite",
    "workflow_run",
    "workflow_job",
    "release",
    "deployment",
    "discussion",
    "milestone",
    "label",
    "repository",
)


def _named_object(payload: Any) -> tuple[str, Mapping[str, Any]] | None:
    """The most specific object the payload is about, with its key (lenient: for stored payloads)."""
    for key in RESOURCE_KEYS:
        obj = payload.get(key) if isinstance(payload, Mapping) else None
        if isinstance(obj, Mapping) and as_text(obj.get("id")):
            return key, obj
    return None


def _resource(payload: Mapping[str, Any]) -> tuple[str | None, int | None]:
    """The resource id (``issue:<id>``) and sequence of a body being verified: the object
    :func:`_named_object` finds, but a named object that is not an object, or whose id is not
    text, is a 400 rather than passed over."""
    for key in RESOURCE_KEYS:
        obj = payload.get(key)
        if obj is None:
            continue
        if not isinstance(obj, Mapping):
            raise PayloadRejected(f"{key} is not an object")
        object_id = checked_text(obj.get("id"), "resource id")
        if object_id:
            return f"{key}:{object_id}", as_sequence(obj.get("updated_at"))
    return None, None


class GitHubProvider(BaseProvider):
    type_name = "github"
    kept_headers = frozenset(
        {
            HEADER,
            "x-github-event",
            "x-github-delivery",
            "x-github-hook-id",
            "x-github-hook-installation-target-type",
            "x-github-hook-installation-target-id",
        }
    )
    api_base_url = "https://api.github.com"
    api_headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}

    def verify(self, body: bytes, headers: Mapping[str, str]) -> Delivery:
        offered = required_header(headers, HEADER)
        if not offered.startswith(PREFIX) or len(offered) != len(PREFIX) + 64:
            raise SignatureRejected(f"malformed {HEADER} header")
        check_mac(self.settings.secrets, body, [offered], prefix=PREFIX)
        event = checked_text(headers.get("x-github-event"), "event type")
        delivery_id = checked_text(headers.get("x-github-delivery"), "event id")
        if not event or not delivery_id:
            raise PayloadRejected("missing X-GitHub-Event or X-GitHub-Delivery header")
        payload = parse_json_object(body)
        if event == "ping":
            return Delivery(event_id=delivery_id, event_type="ping", payload=payload, handshake=PONG)
        action = checked_text(payload.get("action"), "action")
        event_type = f"{event}.{action}" if action else event
        resource_id, sequence = _resource(payload)
        return Delivery(delivery_id, event_type, resource_id, sequence, payload)

    def resource_ref(self, event_type: str, resource_id: str, payload: Any) -> ResourceRef | None:
        """The object's own API URL from the payload (``issue.url`` and so on), which must be
        on the configured API host: GitHub Enterprise payloads name their own host."""
        found = _named_object(payload)
        if found is None or not isinstance(found[1].get("url"), str):
            return None
        return ResourceRef(found[0], url=found[1]["url"])

    def sign(self, body: bytes, headers: Mapping[str, str], *, secret: str, timestamp: int) -> dict[str, str]:
        return {"X-Hub-Signature-256": mac_text(secret, body, prefix=PREFIX)}

    def sample(
        self, event_type: str, data: Mapping[str, Any] | None, *, event_id: str, timestamp: int
    ) -> tuple[bytes, dict[str, str]]:
        event, _, action = event_type.partition(".")
        payload: dict[str, Any] = (
            dict(data)
            if data
            else {
                "repository": {"id": 1296269, "full_name": "octocat/Hello-World"},
                "sender": {"login": "octocat", "id": 1},
            }
        )
        if action:
            payload.setdefault("action", action)
        if event == "issues" and "issue" not in payload:
            payload["issue"] = {"id": 1, "number": 1347, "title": "Found a bug", "state": "open"}
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/hookgate-send",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": event_id,
            "X-GitHub-Hook-ID": "1",
        }
        return orjson.dumps(payload), headers
