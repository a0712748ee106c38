"""Providers with no official SDK that verifies webhooks: each request is built here from the
provider's documentation with plain ``hmac`` (independently of the provider modules), then the
same four checks run for every one of them: a genuine request is accepted with the right id,
type and resource; a tampered body, a wrong secret and (where a time is signed) a stale time are
401. Twitch also has a published vector; the handshakes are checked byte for byte."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from tests.providers.helpers import NOW, make, rejected, verify

SECRET = "whsec-documented-0123456789"
OTHER = "another-secret-9876543210"


def mac(secret: str, message: bytes, algorithm: Any = hashlib.sha256) -> str:
    return hmac.new(secret.encode(), message, algorithm).hexdigest()


@dataclass(frozen=True)
class Case:
    type_name: str
    #: (secret, signed time) → body and headers, as the provider documents them
    build: Callable[[str, int], tuple[bytes, dict[str, str]]]
    expected: tuple[str, str, str | None]  # event id, type, resource
    timed: bool = True
    options: dict[str, str] | None = None


def linear(secret: str, when: int) -> tuple[bytes, dict[str, str]]:
    body = orjson.dumps(
        {
            "action": "update",
            "type": "Issue",
            "data": {"id": "iss-1", "updatedAt": "2026-01-02T03:04:05.000Z"},
            "webhookTimestamp": when * 1000,
        }
    )
    return body, {"Linear-Signature": mac(secret, body), "Linear-Delivery": "d-1"}


def zoom(secret: str, when: int) -> tuple[bytes, dict[str, str]]:
    body = orjson.dumps(
        {
            "event": "meeting.started",
            "event_ts": 1767323045000,
            "payload": {"object": {"id": 85746065432, "uuid": "u1=="}},
        }
    )
    return body, {
        "x-zm-request-timestamp": str(when),
        "x-zm-signature": "v0=" + mac(secret, f"v0:{when}:".encode() + body),
    }


def twitch(secret: str, when: int) -> tuple[bytes, dict[str, str]]:
    from datetime import UTC, datetime

    stamp = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.123456789Z")
    body = b'{"subscription":{"type":"channel.follow"},"event":{"user_id":"1"}}'
    headers = {
        "Twitch-Eventsub-Message-Id": "m-1",
        "Twitch-Eventsub-Message-Timestamp": stamp,
        "Twitch-Eventsub-Message-Type": "notification",
        "Twitch-Eventsub-Subscription-Type": "channel.follow",
        "Twitch-Eventsub-Message-Signature": "sha256=" + mac(secret, f"m-1{stamp}".encode() + body),
    }
    return body, headers


def mailgun(secret: str, when: int) -> tuple[bytes, dict[str, str]]:
    token = "a" * 50
    block = {"timestamp": str(when), "token": token, "signature": mac(secret, f"{when}{token}".encode())}
    event = {"id": "mg-1", "event": "delivered", "recipient": "someone@example.com"}
    return orjson.dumps({"signature": block, "event-data": event}), {}


def intercom(secret: str, when: int) -> tuple[bytes, dict[str, str]]:
    item = {"type": "conversation", "id": "147", "updated_at": 1767323045}
    body = orjson.dumps(
        {"type": "notification_event", "id": "notif_1", "topic": "conversation.user.replied", "data": {"item": item}}
    )
    return body, {"X-Hub-Signature": "sha1=" + mac(secret, body, hashlib.sha1)}


def pagerduty(secret: str, when: int) -> tuple[bytes, dict[str, str]]:
    event = {
        "id": "01DEN4HPBQAJRNIVTKGYBRDRZB",
        "event_type": "incident.triggered",
        "resource_type": "incident",
        "occurred_at": "2026-01-02T03:04:05.000Z",
        "data": {"id": "PGR0VU2", "type": "incident"},
    }
    body = orjson.dumps({"event": event})
    return body, {"X-PagerDuty-Signature": f"v1={mac('rotated-away-secret', body)},v1={mac(secret, body)}"}


def meta(secret: str, when: int) -> tuple[bytes, dict[str, str]]:
    status = {"id": "wamid.HBgM", "status": "delivered", "timestamp": "1767323045"}
    change = {"field": "messages", "value": {"messaging_product": "whatsapp", "statuses": [status]}}
    body = orjson.dumps({"object": "whatsapp_business_account", "entry": [{"id": "1029", "changes": [change]}]})
    return body, {"X-Hub-Signature-256": "sha256=" + mac(secret, body)}


CASES = [
    Case("linear", linear, ("Issue:update:iss-1:2026-01-02T03:04:05.000Z", "Issue.update", "Issue:iss-1")),
    Case("zoom", zoom, ("meeting.started:1767323045000:u1==", "meeting.started", "meeting:u1==")),
    Case("twitch", twitch, ("m-1", "channel.follow", None)),
    Case("mailgun", mailgun, ("mg-1", "delivered", None)),
    Case("intercom", intercom, ("notif_1", "conversation.user.replied", "conversation:147"), timed=False),
    Case("pagerduty", pagerduty, ("01DEN4HPBQAJRNIVTKGYBRDRZB", "incident.triggered", "incident:PGR0VU2"), timed=False),
    Case(
        "meta",
        meta,
        ("wamid.HBgM:delivered", "whatsapp_business_account.messages.delivered", "message:wamid.HBgM"),
        timed=False,
        options={"verify_token": "my-verify-token"},
    ),
]
IDS = [case.type_name for case in CASES]


def provider_for(case: Case, now: int = NOW) -> Any:
    return make(case.type_name, SECRET, now=now, **(case.options or {}))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_genuine_request(case: Case) -> None:
    body, headers = case.build(SECRET, NOW)
    delivery = verify(provider_for(case), body, headers)
    event = delivery.batch[0] if delivery.batch else delivery
    assert (event.event_id, event.event_type, event.resource_id) == case.expected


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_our_signer_agrees(case: Case) -> None:
    """``hookgate send`` signs as the provider does: its requests verify."""
    provider = provider_for(case)
    event_type = case.expected[1].removesuffix(".delivered") if case.type_name == "meta" else case.expected[1]
    body, headers = provider.signed_request(event_type, event_id="e-1")
    verify(provider, body, headers)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_tampered_body(case: Case) -> None:
    body, headers = case.build(SECRET, NOW)
    tampered = body.replace(b"1", b"2", 1)
    assert tampered != body
    assert rejected(provider_for(case), tampered, headers).status_code == 401


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_wrong_secret(case: Case) -> None:
    body, headers = case.build(OTHER, NOW)
    assert rejected(provider_for(case), body, headers).status_code == 401


@pytest.mark.parametrize("case", [c for c in CASES if c.timed], ids=[c.type_name for c in CASES if c.timed])
@pytest.mark.parametrize("offset", [-301, 301])
def test_stale_or_future_time(case: Case, offset: int) -> None:
    body, headers = case.build(SECRET, NOW + offset)
    assert rejected(provider_for(case), body, headers).status_code == 401


def test_twitch_published_vector() -> None:
    body = (
        b'{"subscription":{"id":"ae2ff348-e102-16be-a3eb-6830c1bf38d2","status":"enabled","type":"channel.follow",'
        b'"version":"1","condition":{"broadcaster_user_id":"44429626"},"transport":{"method":"webhook",'
        b'"callback":"null"},"created_at":"2021-02-19T23:47:00.7621315Z"},"event":{"user_id":"28408015",'
        b'"user_login":"testFromUser","user_name":"testFromUser","broadcaster_user_id":"44429626",'
        b'"broadcaster_user_login":"44429626","broadcaster_user_name":"testBroadcaster"}}'
    )
    assert len(body) == 458
    headers = {
        "Twitch-Eventsub-Message-Id": "ae2ff348-e102-16be-a3eb-6830c1bf38d2",
        "Twitch-Eventsub-Message-Timestamp": "2021-02-19T23:47:00.8091512Z",
        "Twitch-Eventsub-Message-Signature": "sha256=d10f5bd9474b7ac7bd7105eb79c2d52768b4d0cd2a135982c3bf5a1d59a78823",
    }
    provider = make("twitch", "secretabcd", now=1613778420)
    assert verify(provider, body, headers).event_type == "channel.follow"
    assert rejected(make("twitch", "secretabcd", now=1613778420 + 601), body, headers).status_code == 401


# -- handshakes, byte for byte -------------------------------------------------------------


def test_zoom_url_validation() -> None:
    body = (
        b'{"payload":{"plainToken":"qgg8vlvZRS6UYooatFL8Aw"},"event_ts":1654503849680,'
        b'"event":"endpoint.url_validation"}'
    )
    headers = {"x-zm-request-timestamp": str(NOW), "x-zm-signature": "v0=" + mac(SECRET, f"v0:{NOW}:".encode() + body)}
    shake = verify(make("zoom", OTHER, SECRET), body, headers).handshake
    assert shake is not None
    encrypted = mac(SECRET, b"qgg8vlvZRS6UYooatFL8Aw")  # under the secret that signed, not the first
    assert shake.body == b'{"plainToken":"qgg8vlvZRS6UYooatFL8Aw","encryptedToken":"' + encrypted.encode() + b'"}'
    assert (shake.status_code, shake.media_type) == (200, "application/json")
    assert rejected(make("zoom", OTHER), body, headers).status_code == 401


def test_twitch_callback_verification() -> None:
    body = b'{"challenge":"pogchamp-kappa-360noscope-vohiyo","subscription":{"type":"channel.follow"}}'
    stamp = "2023-11-14T22:13:20.000000000Z"
    headers = {
        "Twitch-Eventsub-Message-Id": "m-2",
        "Twitch-Eventsub-Message-Timestamp": stamp,
        "Twitch-Eventsub-Message-Type": "webhook_callback_verification",
        "Twitch-Eventsub-Message-Signature": "sha256=" + mac(SECRET, f"m-2{stamp}".encode() + body),
    }
    shake = verify(make("twitch", SECRET), body, headers).handshake
    assert shake is not None
    assert (shake.status_code, shake.body, shake.media_type) == (200, b"pogchamp-kappa-360noscope-vohiyo", "text/plain")
    headers["Twitch-Eventsub-Message-Signature"] = "sha256=" + mac(OTHER, f"m-2{stamp}".encode() + body)
    assert rejected(make("twitch", SECRET), body, headers).status_code == 401


def test_meta_subscription_check() -> None:
    provider = make("meta", SECRET, verify_token="my-verify-token")
    url = "https://hooks.example.com/webhooks/meta?hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=my-verify-token"
    shake = verify(provider, b"", {}, url, "GET").handshake
    assert shake is not None
    assert (shake.status_code, shake.body, shake.media_type) == (200, b"1158201444", "text/plain")
    assert rejected(provider, b"", {}, url.replace("my-verify-token", "guess"), "GET").status_code == 401


def test_intercom_ping_is_not_stored() -> None:
    body = b'{"type":"notification_event","id":"notif_ping","topic":"ping","data":{"item":{"type":"ping"}}}'
    delivery = verify(make("intercom", SECRET), body, {"X-Hub-Signature": "sha1=" + mac(SECRET, body, hashlib.sha1)})
    assert delivery.handshake is not None


def test_mailgun_signs_only_timestamp_and_token() -> None:
    """The limitation the README states: Mailgun's signature does not cover event-data, so a
    changed event with a captured signature block passes while its timestamp is fresh; a changed
    token or timestamp does not."""
    body, headers = mailgun(SECRET, NOW)
    provider = make("mailgun", SECRET, now=NOW)
    assert verify(provider, body.replace(b"delivered", b"failed"), headers).event_type == "failed"
    assert rejected(provider, body.replace(b'"aaaa', b'"baaa', 1), headers).status_code == 401
