"""GitLab sends its secret token verbatim in ``X-Gitlab-Token`` (GitLab ships no receiver SDK and
publishes no vectors). A real merge-request hook's shape is used below."""

from __future__ import annotations

import orjson
import pytest

from tests.providers.helpers import make, rejected, verify

TOKEN = "glpat-style-hook-token-123"
BODY = orjson.dumps(
    {
        "object_kind": "merge_request",
        "event_type": "merge_request",
        "project": {"id": 1, "path_with_namespace": "gitlabhq/gitlab-test"},
        "object_attributes": {"id": 99, "iid": 1, "action": "merge", "updated_at": "2013-12-03 17:23:34 UTC"},
    }
)
HEADERS = {
    "X-Gitlab-Token": TOKEN,
    "X-Gitlab-Event": "Merge Request Hook",
    "Idempotency-Key": "908a6d9e-45fd-46c8-97e6-c4f350f219dd",
    "X-Gitlab-Webhook-UUID": "b0c8bd8d-4a9e-4b3f-9f0e-1a2b3c4d5e6f",
    "Content-Type": "application/json",
}


def test_accepts_the_token_and_reads_the_event() -> None:
    delivery = verify(make("gitlab", "an-old-token-still-valid", TOKEN), BODY, HEADERS)
    assert (delivery.event_id, delivery.event_type) == ("908a6d9e-45fd-46c8-97e6-c4f350f219dd", "merge_request.merge")
    assert (delivery.resource_id, delivery.sequence) == ("merge_request:99", 1386091414000)
    ref = make("gitlab", TOKEN).resource_ref(delivery.event_type, "merge_request:99", delivery.payload)
    assert ref is not None
    assert ref.path == "/api/v4/projects/1/merge_requests/1"


def test_older_gitlab_without_an_idempotency_key_dedupes_on_the_webhook_uuid() -> None:
    headers = {k: v for k, v in HEADERS.items() if k != "Idempotency-Key"}
    assert verify(make("gitlab", TOKEN), BODY, headers).event_id == "b0c8bd8d-4a9e-4b3f-9f0e-1a2b3c4d5e6f"


@pytest.mark.parametrize(
    "headers",
    [
        {**HEADERS, "X-Gitlab-Token": "the-wrong-token-value"},
        {**HEADERS, "X-Gitlab-Token": TOKEN + "x"},
        {k: v for k, v in HEADERS.items() if k != "X-Gitlab-Token"},
    ],
)
def test_a_wrong_or_missing_token_is_401(headers: dict[str, str]) -> None:
    assert rejected(make("gitlab", TOKEN), BODY, headers).status_code == 401


def test_round_trip_through_send() -> None:
    provider = make("gitlab", TOKEN)
    body, headers = provider.signed_request("issue.open", event_id="idem-1")
    delivery = verify(provider, body, headers)
    assert (delivery.event_type, delivery.resource_id) == ("issue.open", "issue:99")
