"""GitHub signatures: published vectors, and ``@octokit/webhooks-methods`` run with node."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.providers.helpers import make, rejected, verify
from tests.support.node_sdk import node_script, run_node

SECRET = "It's a Secret to Everybody"


@pytest.fixture(scope="module")
def octokit() -> Path:
    """``sign`` (no signature given) or ``verify`` of @octokit/webhooks-methods, per item."""
    return node_script(
        "octokit",
        "@octokit/webhooks-methods",
        "5",
        'import { sign, verify } from "@octokit/webhooks-methods";',
        "const { secret, payload, signature } = item;"
        " return signature ? await verify(secret, payload, signature) : await sign(secret, payload);",
    )


def headers(signature: str, event: str = "issues", delivery: str = "d-1") -> dict[str, str]:
    return {"X-Hub-Signature-256": signature, "X-GitHub-Event": event, "X-GitHub-Delivery": delivery}


def test_published_vector_from_githubs_docs() -> None:
    provider = make("github", SECRET)
    signature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert provider.sign(b"Hello, World!", {}, secret=SECRET, timestamp=0)["X-Hub-Signature-256"] == signature
    # The docs' body is not JSON: the signature is accepted, then the body is refused as 400.
    assert rejected(provider, b"Hello, World!", headers(signature)).status_code == 400


def test_octokit_test_vector() -> None:
    signature = "sha256=4864d2759938a15468b5df9ade20bf161da9b4f737ea61794142f3484236bda3"
    delivery = verify(make("github", "mysecret"), b'{"foo":"bar"}', headers(signature, "push"))
    assert (delivery.event_id, delivery.event_type) == ("d-1", "push")


def test_octokit_signs_what_we_accept_and_verifies_what_we_sign(octokit: Path) -> None:
    payload = orjson.dumps({"action": "opened", "issue": {"id": 7, "title": "caf\u00e9 \u2603"}}).decode()
    ours = make("github", SECRET).sign(payload.encode(), {}, secret=SECRET, timestamp=0)["X-Hub-Signature-256"]
    theirs, accepted = run_node(
        octokit,
        [
            {"secret": SECRET, "payload": payload},
            {"secret": SECRET, "payload": payload, "signature": ours},
        ],
    )
    assert accepted is True
    delivery = verify(make("github", SECRET), payload.encode(), headers(str(theirs)))
    assert (delivery.event_type, delivery.resource_id) == ("issues.opened", "issue:7")


def test_ping_is_a_handshake_and_still_verified() -> None:
    provider = make("github", SECRET)
    body = b'{"zen":"Keep it logically awesome.","hook_id":1}'
    signature = provider.sign(body, {}, secret=SECRET, timestamp=0)["X-Hub-Signature-256"]
    delivery = verify(provider, body, headers(signature, "ping"))
    assert delivery.handshake is not None
    assert delivery.handshake.status_code == 200
    assert rejected(provider, body + b" ", headers(signature, "ping")).status_code == 401


def test_rotation_accepts_the_old_and_the_new_secret() -> None:
    body = b'{"action":"closed"}'
    old = make("github", "old-secret").sign(body, {}, secret="old-secret", timestamp=0)["X-Hub-Signature-256"]
    assert verify(make("github", SECRET, "old-secret"), body, headers(old)).event_type == "issues.closed"


@pytest.mark.parametrize(
    ("case", "signature", "status"),
    [
        ("wrong secret", "sha256=" + "0" * 64, 401),
        ("sha1 only", "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59", 401),
        ("short", "sha256=abc", 401),
        ("empty", "", 401),
    ],
)
def test_rejections(case: str, signature: str, status: int) -> None:
    assert rejected(make("github", SECRET), b"{}", headers(signature)).status_code == status


def test_missing_delivery_header_is_400_after_verification() -> None:
    provider = make("github", SECRET)
    signature = provider.sign(b"{}", {}, secret=SECRET, timestamp=0)["X-Hub-Signature-256"]
    assert rejected(provider, b"{}", {"X-Hub-Signature-256": signature, "X-GitHub-Event": "push"}).status_code == 400
