"""GitLab: ``X-Gitlab-Token`` carries the hook's secret token itself, not a MAC of the body.

The token is compared in constant time against every configured secret. Because nothing signs
the body or a time, a tampered body with a stolen token verifies: treat the token as a password,
serve the endpoint over HTTPS only, and rely on reconciliation for the state that matters (the
README's provider table says so).

The dedupe key is ``Idempotency-Key`` (stable across GitLab's retries of one delivery), else
``X-Gitlab-Webhook-UUID`` (older GitLab versions, one per delivery). The type is the body's
``object_kind`` refined by ``object_attributes.action`` (``merge_request.merge``); the resource
is the object (``merge_request:<id>``), its sequence ``object_attributes.updated_at``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from .api import ResourceRef, fill_path
from .base import BaseProvider, Delivery, any_match, required_header
from .errors import PayloadRejected, SignatureRejected
from .payload import as_sequence, as_text, checked_text, dig, parse_json_object

TOKEN_HEADER = "x-gitlab-token"  # noqa: S105 (a header name, not a secret)
#: object_kind → the REST collection of the project that holds it, addressed by ``iid``.
COLLECTIONS = {"merge_request": "merge_requests", "issue": "issues", "work_item": "issues"}


class GitLabProvider(BaseProvider):
    type_name = "gitlab"
    kept_headers = frozenset(
        {"x-gitlab-event", "x-gitlab-event-uuid", "x-gitlab-webhook-uuid", "idempotency-key", "x-gitlab-instance"}
    )
    api_base_url = "https://gitlab.com"

    def verify(self, body: bytes, headers: Mapping[str, str]) -> Delivery:
        offered = required_header(headers, TOKEN_HEADER).encode()
        if not any_match((s.encode() for s in self.settings.secrets), [offered]):
            raise SignatureRejected("token does not match")
        event_id = checked_text(headers.get("idempotency-key"), "event id") or checked_text(
            headers.get("x-gitlab-webhook-uuid"), "event id"
        )
        if not event_id:
            raise PayloadRejected("missing Idempotency-Key or X-Gitlab-Webhook-UUID header")
        payload = parse_json_object(body)
        kind = checked_text(payload.get("object_kind"), "event type") or checked_text(
            payload.get("event_name"), "event type"
        )
        if not kind:
            raise PayloadRejected("body lacks object_kind")
        attributes = payload.get("object_attributes")
        if attributes is None:
            attributes = {}
        elif not isinstance(attributes, Mapping):
            raise PayloadRejected("object_attributes is not an object")
        action = checked_text(attributes.get("action"), "action")
        event_type = f"{kind}.{action}" if action else kind
        object_id = checked_text(attributes.get("id"), "resource id")
        resource_id = f"{kind}:{object_id}" if object_id and kind != "push" else None
        sequence = as_sequence(attributes.get("updated_at")) if resource_id else None
        return Delivery(event_id, event_type, resource_id, sequence, payload)

    def resource_ref(self, event_type: str, resource_id: str, payload: Any) -> ResourceRef | None:
        """``/api/v4/projects/<project id>/<merge_requests|issues>/<iid>``."""
        kind = resource_id.partition(":")[0]
        project, iid = as_text(dig(payload, "project.id")), as_text(dig(payload, "object_attributes.iid"))
        if kind not in COLLECTIONS or not project or not iid:
            return None
        path = fill_path(f"/api/v4/projects/{{project}}/{COLLECTIONS[kind]}/{{iid}}", project=project, iid=iid)
        return ResourceRef(kind, path)

    def sign(self, body: bytes, headers: Mapping[str, str], *, secret: str, timestamp: int) -> dict[str, str]:
        return {"X-Gitlab-Token": secret}

    def sample(
        self, event_type: str, data: Mapping[str, Any] | None, *, event_id: str, timestamp: int
    ) -> tuple[bytes, dict[str, str]]:
        kind, _, action = event_type.partition(".")
        attributes = dict(data) if data else {"id": 99, "iid": 1, "title": "Fix the bug", "state": "opened"}
        if action:
            attributes.setdefault("action", action)
        attributes.setdefault("updated_at", "2026-01-02 03:04:05 UTC")
        payload = {"object_kind": kind, "project": {"id": 15, "path_with_namespace": "group/project"}}
        payload["object_attributes"] = attributes
        header_event = " ".join(part.capitalize() for part in kind.split("_")) + " Hook"
        headers = {
            "Content-Type": "application/json",
            "X-Gitlab-Event": header_event,
            "Idempotency-Key": event_id,
            "X-Gitlab-Webhook-UUID": event_id,
        }
        return orjson.dumps(payload), headers
