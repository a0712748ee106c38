"""Slack, checked against the official ``slack_sdk`` and the published signature example."""

from __future__ import annotations

import orjson
import pytest
from slack_sdk.signature import SignatureVerifier

from tests.providers.helpers import NOW, make, rejected, verify

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
EVENT = orjson.dumps(
    {
        "type": "event_callback",
        "team_id": "T1",
        "event_id": "Ev08MFMKH6",
        "event_time": NOW,
        "event": {"type": "app_mention", "channel": "C1", "text": "<@U1> hi"},
    }
)


def slack_sdk_headers(body: bytes, secret: str = SECRET, timestamp: int = NOW, form: bool = False) -> dict[str, str]:
    signature = SignatureVerifier(secret).generate_signature(timestamp=str(timestamp), body=body.decode())
    content_type = "application/x-www-form-urlencoded" if form else "application/json"
    return {"X-Slack-Signature": signature, "X-Slack-Request-Timestamp": str(timestamp), "Content-Type": content_type}


def test_published_example_slash_command() -> None:
    body = (
        b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
        b"&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
        b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
        b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
    )
    headers = {
        "X-Slack-Signature": "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
        "X-Slack-Request-Timestamp": "1531420618",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    delivery = verify(make("slack", SECRET, now=1531420618), body, headers)
    assert (delivery.event_id, delivery.event_type) == (
        "398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c",
        "slash_command",
    )
    assert delivery.payload["command"] == "/webhook-collect"
    assert delivery.resource_id is None


def test_accepts_the_slack_sdk_and_the_sdk_accepts_ours() -> None:
    delivery = verify(make("slack", SECRET), EVENT, slack_sdk_headers(EVENT))
    assert (delivery.event_id, delivery.event_type, delivery.resource_id) == ("Ev08MFMKH6", "app_mention", None)
    provider = make("slack", SECRET)
    body, headers = provider.signed_request("reaction_added", event_id="Ev2", timestamp=NOW)
    sdk = SignatureVerifier(SECRET, clock=type("Clock", (), {"now": staticmethod(lambda: float(NOW))})())
    assert sdk.is_valid(body, headers["X-Slack-Request-Timestamp"], headers["X-Slack-Signature"])


def test_interactive_payload_in_a_form() -> None:
    payload = orjson.dumps({"type": "block_actions", "trigger_id": "123.456.abc", "actions": [{"action_id": "ok"}]})
    body = b"payload=" + payload.replace(b'"', b"%22").replace(b" ", b"+")
    delivery = verify(make("slack", SECRET), body, slack_sdk_headers(body, form=True))
    assert (delivery.event_id, delivery.event_type) == ("123.456.abc", "interactive.block_actions")
    assert make("slack", SECRET).decode(body, {"content-type": "application/x-www-form-urlencoded"})["actions"]


def test_url_verification_is_verified_then_answered_with_the_challenge() -> None:
    body = orjson.dumps(
        {
            "token": "Jhj5dZrVaK7ZwHHjRyZWjbDl",
            "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
            "type": "url_verification",
        }
    )
    delivery = verify(make("slack", SECRET), body, slack_sdk_headers(body))
    assert delivery.handshake is not None
    assert (delivery.handshake.status_code, delivery.handshake.media_type) == (200, "text/plain")
    assert delivery.handshake.body == b"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    unsigned = {**slack_sdk_headers(body), "X-Slack-Signature": "v0=" + "0" * 64}
    assert rejected(make("slack", SECRET), body, unsigned).status_code == 401


@pytest.mark.parametrize(
    ("body", "headers", "reason"),
    [
        (EVENT + b" ", slack_sdk_headers(EVENT), "signature does not match"),
        (EVENT, slack_sdk_headers(EVENT, secret="another-signing-secret"), "signature does not match"),
        (EVENT, slack_sdk_headers(EVENT, timestamp=NOW - 301), "timestamp outside the tolerance"),
        (EVENT, slack_sdk_headers(EVENT, timestamp=NOW + 301), "timestamp outside the tolerance"),
        (EVENT, {"X-Slack-Request-Timestamp": str(NOW)}, "missing x-slack-signature header"),
    ],
)
def test_rejections(body: bytes, headers: dict[str, str], reason: str) -> None:
    error = rejected(make("slack", SECRET), body, headers)
    assert (error.status_code, error.reason) == (401, reason)
