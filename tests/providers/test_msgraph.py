"""Microsoft Graph: nothing is signed, so the check is the clientState echo; the validationToken
handshake; a batch of changes; the reconciliation path of a resource."""

from __future__ import annotations

import orjson
import pytest

from providers.api import UnsafeUrl
from tests.providers.helpers import make, rejected, verify

STATE = "secretClientValue-1"
URL = "https://hooks.example.com/webhooks/msgraph"


def change(client_state: str = STATE, **extra: str) -> dict[str, object]:
    return {
        "subscriptionId": "7f105c7d-2dc5-4530-97cd-4e7ae6534c07",
        "changeType": "created",
        "resource": "Users/6d8b4c5e/Messages/AAMkAGUw",
        "clientState": client_state,
        **extra,
    }


def test_validation_token_is_echoed_as_plain_text() -> None:
    shake = verify(make("msgraph", STATE), b"", {}, URL + "?validationToken=Validation%3A+Testing%20client").handshake
    assert shake is not None
    assert (shake.status_code, shake.body, shake.media_type) == (200, b"Validation: Testing client", "text/plain")


def test_a_batch_of_changes() -> None:
    body = orjson.dumps({"value": [change(), change(changeType="updated"), change(lifecycleEvent="missed")]})
    delivery = verify(make("msgraph", "old-client-state", STATE), body, {}, URL)
    assert [(d.event_type, d.resource_id) for d in delivery.batch] == [
        ("created", "Users/6d8b4c5e/Messages/AAMkAGUw"),
        ("updated", "Users/6d8b4c5e/Messages/AAMkAGUw"),
        ("lifecycle.missed", None),
    ]
    assert len({d.event_id for d in delivery.batch}) == 3
    with_id = orjson.dumps({"value": [change(id="1565293727947")]})
    assert verify(make("msgraph", STATE), with_id, {}, URL).batch[0].event_id == "1565293727947"
    again = verify(make("msgraph", STATE), body, {}, URL)
    assert [d.event_id for d in again.batch] == [d.event_id for d in delivery.batch]  # retries dedupe


@pytest.mark.parametrize("states", [["wrong-client-state"], [STATE, "wrong-client-state"]])
def test_any_wrong_client_state_rejects_the_request(states: list[str]) -> None:
    body = orjson.dumps({"value": [change(s) for s in states]})
    assert rejected(make("msgraph", STATE), body, {}, URL).status_code == 401


def test_resource_path_is_encoded_segment_by_segment() -> None:
    provider = make("msgraph", STATE)
    ref = provider.resource_ref("updated", "Users/6d8b/Messages/AA+k?x=1", {})
    assert ref is not None
    assert (ref.type, ref.path) == ("messages", "/v1.0/Users/6d8b/Messages/AA%2Bk%3Fx%3D1")
    with pytest.raises(UnsafeUrl):
        provider.resource_ref("updated", "Users/6d8b/../../admin", {})
