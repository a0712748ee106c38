"""Linear: requests checked by Linear's own SDK (@linear/sdk's LinearWebhookClient, under node),
which verifies the signature and the signed webhookTimestamp against the real clock."""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path

import orjson
import pytest

from tests.providers.helpers import make, rejected, verify
from tests.support.node_sdk import node_script, run_node

SECRET = "lin_wh_0123456789abcdefghijklmnop"


@pytest.fixture(scope="module")
def linear_sdk() -> Path:
    """``verify`` of LinearWebhookClient per item: true, or the message it throws."""
    return node_script(
        "linear",
        "@linear/sdk",
        "98",
        'import { LinearWebhookClient } from "@linear/sdk/webhooks";',
        "try { return new LinearWebhookClient(item.secret).verify(Buffer.from(item.body), item.signature); }"
        " catch (error) { return error.message; }",
    )


def issue_update(sent_at_ms: int) -> bytes:
    data = {"id": "2174add1-f7c8-44e3-bbf3-2d60b5ea8bc9", "title": "Fix", "updatedAt": "2026-01-02T03:04:05.000Z"}
    return orjson.dumps({"action": "update", "type": "Issue", "data": data, "webhookTimestamp": sent_at_ms})


def test_the_sdk_and_hookgate_agree(linear_sdk: Path) -> None:
    now = time.time()
    provider = make("linear", SECRET, now=now)
    body, headers = provider.signed_request("Issue.update", event_id="d-1")
    fresh = issue_update(int(now * 1000))
    signature = hmac.new(SECRET.encode(), fresh, hashlib.sha256).hexdigest()
    stale = issue_update(int((now - 120) * 1000))
    stale_signature = hmac.new(SECRET.encode(), stale, hashlib.sha256).hexdigest()
    answers = run_node(
        linear_sdk,
        [
            {"secret": SECRET, "body": body.decode(), "signature": headers["Linear-Signature"]},
            {"secret": SECRET, "body": fresh.decode(), "signature": signature},
            {"secret": SECRET, "body": fresh.decode().replace("Fix", "Fax"), "signature": signature},
            {"secret": "another-secret-value", "body": fresh.decode(), "signature": signature},
            {"secret": SECRET, "body": stale.decode(), "signature": stale_signature},
        ],
    )
    assert answers == [
        True,
        True,
        "Invalid webhook signature",
        "Invalid webhook signature",
        "Invalid webhook timestamp",
    ]
    delivery = verify(provider, fresh, {"Linear-Signature": signature})
    assert (delivery.event_type, delivery.resource_id) == ("Issue.update", "Issue:2174add1-f7c8-44e3-bbf3-2d60b5ea8bc9")
    assert rejected(provider, fresh.replace(b"Fix", b"Fax"), {"Linear-Signature": signature}).status_code == 401
