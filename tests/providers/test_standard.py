"""Standard Webhooks and Svix, checked against the official ``standardwebhooks`` and ``svix`` SDKs."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import orjson
import pytest
import standardwebhooks
import svix.webhooks

from tests.providers.helpers import NOW, make, rejected, verify

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = orjson.dumps({"type": "user.created", "data": {"id": "user_1"}})


def sdk_headers(
    body: bytes = BODY, secret: str = SECRET, timestamp: int = NOW, msg_id: str = "msg_1"
) -> dict[str, str]:
    signature = standardwebhooks.Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, UTC), body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature}


def test_published_vector() -> None:
    provider = make("standard", SECRET, now=1614265330)
    body = b'{"test": 2432232314}'
    headers = {"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "webhook-timestamp": "1614265330"}
    assert provider.sign(body, headers, secret=SECRET, timestamp=1614265330)["webhook-signature"] == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )
    bad = {**headers, "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="}
    assert rejected(provider, body, bad).status_code == 401


def test_accepts_the_standardwebhooks_sdk() -> None:
    delivery = verify(make("standard", SECRET), BODY, sdk_headers())
    assert (delivery.event_id, delivery.event_type, delivery.resource_id) == ("msg_1", "user.created", "user_1")


def test_the_standardwebhooks_sdk_accepts_our_signature() -> None:
    provider = make("standard", SECRET, now=datetime.now(UTC).timestamp())
    body, headers = provider.signed_request("user.created", event_id="msg_2")
    assert standardwebhooks.Webhook(SECRET).verify(body, headers)["type"] == "user.created"


def test_accepts_svix_headers_from_the_svix_sdk() -> None:
    signature = svix.webhooks.Webhook(SECRET).sign("msg_svix", datetime.fromtimestamp(NOW, UTC), BODY.decode())
    headers = {"svix-id": "msg_svix", "svix-timestamp": str(NOW), "svix-signature": signature}
    assert verify(make("standard", SECRET), BODY, headers).event_id == "msg_svix"


def test_rotation_several_signatures_and_secrets() -> None:
    other = "whsec_" + base64.b64encode(b"another-secret-of-32-bytes-long!").decode()
    offered = sdk_headers(secret=other)["webhook-signature"] + " " + sdk_headers()["webhook-signature"]
    headers = {**sdk_headers(), "webhook-signature": "v1a,ignored " + offered}
    assert verify(make("standard", SECRET), BODY, headers).event_id == "msg_1"
    assert verify(make("standard", other, SECRET), BODY, sdk_headers()).event_id == "msg_1"


@pytest.mark.parametrize(
    ("case", "body", "headers"),
    [
        ("tampered body", BODY + b" ", sdk_headers()),
        ("wrong secret", BODY, sdk_headers(secret="whsec_" + base64.b64encode(b"x" * 32).decode())),
        ("missing signature", BODY, {k: v for k, v in sdk_headers().items() if k != "webhook-signature"}),
        ("missing id", BODY, {k: v for k, v in sdk_headers().items() if k != "webhook-id"}),
        ("id changed", BODY, {**sdk_headers(), "webhook-id": "msg_other"}),
        ("301 s old", BODY, sdk_headers(timestamp=NOW - 301)),
        ("301 s ahead", BODY, sdk_headers(timestamp=NOW + 301)),
        ("only v1a", BODY, {**sdk_headers(), "webhook-signature": "v1a,abc"}),
    ],
)
def test_rejections(case: str, body: bytes, headers: dict[str, str]) -> None:
    assert rejected(make("standard", SECRET), body, headers).status_code == 401
