"""``type: hmac``: a declared scheme, checked against an independent computation."""

from __future__ import annotations

import base64
import hashlib
import hmac

import orjson
import pytest

from providers import ProviderConfigError
from tests.providers.helpers import HMAC_OPTIONS, NOW, make, rejected, verify

OPTIONS = HMAC_OPTIONS
BODY = b'{"type":"thing.updated","data":{"id":"t-1","version":7}}'


def by_hand(secret: str, timestamp: int, body: bytes = BODY) -> dict[str, str]:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Acme-Signature": "sha256=" + mac, "X-Acme-Timestamp": str(timestamp), "X-Acme-Event-Id": "e-1"}


def test_accepts_an_independently_computed_signature() -> None:
    delivery = verify(make("hmac", "acme-secret", **OPTIONS), BODY, by_hand("acme-secret", NOW))
    assert (delivery.event_id, delivery.event_type, delivery.resource_id, delivery.sequence) == (
        "e-1",
        "thing.updated",
        "t-1",
        7,
    )


def test_base64_sha1_without_timestamp() -> None:
    options = {
        "signature": {"header": "X-Sig", "algorithm": "sha1", "encoding": "base64"},
        "event": {"id": "body:id", "type": "body:kind"},
    }
    body = b'{"id":"x1","kind":"created"}'
    signature = base64.b64encode(hmac.new(b"k" * 16, body, hashlib.sha1).digest()).decode()
    assert verify(make("hmac", "k" * 16, **options), body, {"X-Sig": signature}).event_id == "x1"


def test_rotation_and_rejections() -> None:
    provider = make("hmac", "acme-secret", "acme-secret-2", **OPTIONS)
    assert verify(provider, BODY, by_hand("acme-secret-2", NOW)).event_id == "e-1"
    assert rejected(provider, BODY, by_hand("other-secret", NOW)).status_code == 401
    assert rejected(provider, BODY + b" ", by_hand("acme-secret", NOW)).status_code == 401
    assert rejected(provider, BODY, by_hand("acme-secret", NOW - 301)).status_code == 401
    assert rejected(provider, BODY, by_hand("acme-secret", NOW + 301)).status_code == 401
    no_timestamp = {k: v for k, v in by_hand("acme-secret", NOW).items() if k != "X-Acme-Timestamp"}
    assert rejected(provider, BODY, no_timestamp).reason == "missing X-Acme-Timestamp header"


def test_sign_round_trip() -> None:
    provider = make("hmac", "acme-secret", **OPTIONS)
    body, headers = provider.signed_request("thing.created", event_id="e-9", timestamp=NOW)
    assert verify(provider, body, headers).event_type == "thing.created"


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({**OPTIONS, "signature": {"algorithm": "sha256"}}, "signature.header"),
        ({**OPTIONS, "signature": {**OPTIONS["signature"], "algorithm": "md5"}}, "signature.algorithm"),
        ({**OPTIONS, "signed_payload": "{timestamp}"}, "signed_payload"),
        ({**OPTIONS, "event": {"type": "body:type"}}, "event.id"),
        ({**OPTIONS, "event": {**OPTIONS["event"], "id": "query:x"}}, "event.id"),
        ({**OPTIONS, "colour": "blue"}, "colour"),
    ],
)
def test_invalid_options_name_the_field(options: dict[str, object], field: str) -> None:
    with pytest.raises(ProviderConfigError) as info:
        make("hmac", "acme-secret", **options)
    assert field in [f for f, _ in info.value.problems]


def test_short_secret_is_refused() -> None:
    with pytest.raises(ProviderConfigError, match="secrets\\[0\\]: secret is shorter"):
        make("hmac", "short", **OPTIONS)


@pytest.mark.parametrize(
    "data",
    [[{"id": "r-1"}], {"id": 1.5, "version": 3}, {"id": {"nested": "r-1"}}, "a string", {"id": "r-1", "version": [1]}],
    ids=["data-a-list", "float-id", "object-id", "data-a-string", "list-version"],
)
def test_a_resource_of_another_shape_is_kept_without_order_not_refused(data: object) -> None:
    """Id and type are required and checked; the resource and its sequence are optional, so an
    event whose body does not have them in the configured shape is stored without them (a 400
    would be retried until the sender disables the endpoint)."""
    body = orjson.dumps({"type": "thing.updated", "data": data})
    delivery = verify(make("hmac", "acme-secret", **OPTIONS), body, by_hand("acme-secret", NOW, body))
    assert delivery.event_type == "thing.updated"
    if isinstance(data, dict) and data.get("version") == [1]:
        assert (delivery.resource_id, delivery.sequence) == ("r-1", None)
    else:
        assert (delivery.resource_id, delivery.sequence) == (None, None)


def test_a_resource_id_with_a_control_character_is_still_refused() -> None:
    body = orjson.dumps({"type": "thing.updated", "data": {"id": "r\x1f1", "version": 2}})
    failure = rejected(make("hmac", "acme-secret", **OPTIONS), body, by_hand("acme-secret", NOW, body))
    assert (failure.status_code, failure.reason) == (400, "resource id contains control characters")
