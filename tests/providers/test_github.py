"""GitHub signatures: published vectors, and ``@octokit/webhooks-methods`` run with node."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import orjson
import pytest

from tests.providers.helpers import make, rejected, verify

SECRET = "It's a Secret to Everybody"
NODE_DIR = Path(os.environ.get("HOOKGATE_TEST_NODE_DIR", Path.home() / ".cache" / "hookgate-tests" / "node"))
OCTOKIT_SCRIPT = """
import { sign, verify } from "@octokit/webhooks-methods";
let text = "";
for await (const chunk of process.stdin) text += chunk;
const input = JSON.parse(text);
const out = [];
for (const item of input) {
  const { secret, payload, signature } = item;
  out.push(signature ? await verify(secret, payload, signature) : await sign(secret, payload));
}
console.log(JSON.stringify(out));
"""


@pytest.fixture(scope="module")
def octokit() -> Path:
    """A directory with @octokit/webhooks-methods installed (npm), or a skip where node is absent.

    With HOOKGATE_TEST_REQUIRE_NODE=1 (as .ci/run sets) a missing node fails instead of skipping.
    """
    script = NODE_DIR / "octokit.mjs"
    if not (NODE_DIR / "node_modules" / "@octokit" / "webhooks-methods").exists():
        if not (shutil.which("node") and shutil.which("npm")):
            if os.environ.get("HOOKGATE_TEST_REQUIRE_NODE"):
                pytest.fail("node and npm are required for the octokit cross-check")
            pytest.skip("node/npm not installed: the octokit cross-check needs them")
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--silent", "--prefix", str(NODE_DIR), "@octokit/webhooks-methods@5"],
            check=True,
            timeout=300,
        )
    script.write_text(OCTOKIT_SCRIPT)
    return script


def run_octokit(script: Path, items: list[dict[str, str]]) -> list[object]:
    result = subprocess.run(
        ["node", str(script)], input=json.dumps(items), capture_output=True, text=True, check=True, timeout=60
    )
    return json.loads(result.stdout)


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
    theirs, accepted = run_octokit(
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
