"""Every built-in type through the real intake over HTTP: ``hookgate send`` for each, the GET and
query-string handshakes, batches stored as one event each, a 204 answer, and a URL-signing
provider behind a proxy."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path
from urllib.parse import urlencode

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from gateway.cli import main
from gateway.models import events
from providers import PROVIDER_TYPES, Inbound
from tests.conftest import Hookgate

SECRET = "a-long-enough-shared-secret"
#: An event type ``hookgate send`` is asked for, per type.
SAMPLE_TYPES = {
    "stripe": "invoice.paid",
    "github": "issues.opened",
    "standard": "user.created",
    "hmac": "thing.updated",
    "shopify": "orders/create",
    "slack": "app_mention",
    "gitlab": "merge_request.open",
    "twilio": "message.delivered",
    "paddle": "subscription.updated",
    "square": "payment.updated",
    "linear": "Issue.update",
    "zoom": "meeting.started",
    "twitch": "channel.follow",
    "sendgrid": "delivered",
    "mailgun": "delivered",
    "intercom": "conversation.user.replied",
    "hubspot": "contact.creation",
    "pagerduty": "incident.triggered",
    "meta": "whatsapp_business_account.messages",
    "discord": "interaction.application_command",
    "msgraph": "updated",
}
#: Providers of the shared test configuration, by type.
CONFIGURED = {
    "stripe": "stripe",
    "github": "github",
    "standard": "standard",
    "hmac": "acme",
    "shopify": "shopify",
    "slack": "slack",
}


def key_pairs(directory: Path) -> dict[str, tuple[str, Path]]:
    """A fresh public key for sendgrid and discord, and a file with its private half."""
    ecdsa = ec.generate_private_key(ec.SECP256R1())
    ecdsa_public = ecdsa.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (directory / "sendgrid.pem").write_bytes(
        ecdsa.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    ed = Ed25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    (directory / "discord.key").write_text(
        ed.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()).hex()
    )
    return {
        "sendgrid": (base64.b64encode(ecdsa_public).decode(), directory / "sendgrid.pem"),
        "discord": (ed.public_key().public_bytes(raw, serialization.PublicFormat.Raw).hex(), directory / "discord.key"),
    }


@pytest.fixture
def every_type(hookgate: Hookgate, monkeypatch: pytest.MonkeyPatch) -> tuple[Hookgate, dict[str, Path]]:
    keys = key_pairs(hookgate.dir)
    for type_name in PROVIDER_TYPES:
        if type_name in CONFIGURED:
            continue
        if type_name in keys:
            hookgate.configure_provider(type_name, type=type_name, public_key=keys[type_name][0])
        elif type_name == "meta":
            hookgate.configure_provider(type_name, type=type_name, secrets=[SECRET], verify_token="my-verify-token")
        else:
            hookgate.configure_provider(type_name, type=type_name, secrets=[SECRET])
    monkeypatch.setenv("HOOKGATE_CONFIG", str(hookgate.config_path))
    return hookgate.start_intake(), {name: path for name, (_, path) in keys.items()}


def test_hookgate_send_works_for_every_built_in_type(
    every_type: tuple[Hookgate, dict[str, Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    hookgate, private_keys = every_type
    assert set(SAMPLE_TYPES) == set(PROVIDER_TYPES)
    for type_name, event_type in SAMPLE_TYPES.items():
        name = CONFIGURED.get(type_name, type_name)
        args = [
            "send",
            name,
            "--type",
            event_type,
            "--id",
            f"send-{type_name}",
            "--url",
            f"{hookgate.url}/webhooks/{name}",
        ]
        if type_name in private_keys:
            args += ["--key", str(private_keys[type_name])]
        assert main(args) == 0, capsys.readouterr()
    with hookgate.engine.connect() as conn:
        stored = {provider for (provider,) in conn.execute(select(events.c.provider))}
    assert stored == {CONFIGURED.get(t, t) for t in SAMPLE_TYPES}


def test_meta_get_handshake_and_405_elsewhere(every_type: tuple[Hookgate, dict[str, Path]]) -> None:
    hookgate, _ = every_type
    query = {"hub.mode": "subscribe", "hub.challenge": "1158201444", "hub.verify_token": "my-verify-token"}
    answer = httpx.get(f"{hookgate.url}/webhooks/meta", params=query)
    assert (answer.status_code, answer.content, answer.headers["content-type"]) == (200, b"1158201444", "text/plain")
    wrong = httpx.get(f"{hookgate.url}/webhooks/meta", params={**query, "hub.verify_token": "guess"})
    assert wrong.status_code == 401
    other = httpx.get(f"{hookgate.url}/webhooks/stripe")
    assert (other.status_code, other.headers["allow"]) == (405, "POST")
    assert httpx.put(f"{hookgate.url}/webhooks/meta").headers["allow"] == "GET, POST"
    assert hookgate.count() == 0


def test_msgraph_validation_token_is_echoed_as_text(every_type: tuple[Hookgate, dict[str, Path]]) -> None:
    hookgate, _ = every_type
    answer = httpx.post(
        f"{hookgate.url}/webhooks/msgraph?" + urlencode({"validationToken": "Validation: Testing <x> & y"})
    )
    assert (answer.status_code, answer.headers["content-type"]) == (200, "text/plain")
    assert answer.content == b"Validation: Testing <x> & y"
    assert hookgate.count() == 0
    forged = orjson.dumps({"value": [{"changeType": "updated", "resource": "Users/1", "clientState": "guess-guess"}]})
    assert httpx.post(f"{hookgate.url}/webhooks/msgraph", content=forged).status_code == 401


def test_a_batch_is_stored_as_one_event_each_and_deduped(every_type: tuple[Hookgate, dict[str, Path]]) -> None:
    hookgate, _ = every_type
    provider = hookgate.config.providers["hubspot"].provider
    url = f"{hookgate.url}/webhooks/hubspot"
    batch = [
        {"eventId": n, "subscriptionType": "contact.propertyChange", "objectId": 7, "occurredAt": n} for n in (1, 2)
    ]
    body = orjson.dumps(batch)
    headers = provider.sign_request(Inbound(body, {}, url), secret=SECRET, timestamp=int(provider.clock()))
    first = httpx.post(url, content=body, headers=headers)
    assert first.json()["events"] == [{"id": "1", "status": "accepted"}, {"id": "2", "status": "accepted"}]
    again = httpx.post(url, content=body, headers=headers)
    assert again.json()["status"] == "duplicate"
    assert hookgate.count() == 2
    row = hookgate.event("hubspot", "2")
    assert (row.event_type, row.resource_id, orjson.loads(row.body)) == (
        "contact.propertyChange",
        "contact:7",
        batch[1],
    )


def test_discord_webhook_event_is_answered_204_after_it_is_stored(every_type: tuple[Hookgate, dict[str, Path]]) -> None:
    hookgate, keys = every_type
    provider = hookgate.config.providers["discord"].provider
    body, headers = provider.signed_request("APPLICATION_AUTHORIZED", event_id="x", secret=keys["discord"].read_text())
    answer = httpx.post(f"{hookgate.url}/webhooks/discord", content=body, headers=headers)
    assert (answer.status_code, answer.content, "content-type" in answer.headers) == (204, b"", False)
    assert hookgate.count() == 1


def test_twilio_behind_a_proxy_uses_the_forwarded_scheme_and_host(every_type: tuple[Hookgate, dict[str, Path]]) -> None:
    hookgate, _ = every_type
    fields = {"AccountSid": "AC" + "1" * 32, "MessageSid": "SM" + "2" * 32, "MessageStatus": "sent"}
    public = "https://hooks.example.com/webhooks/twilio"
    message = (public + "".join(k + v for k, v in sorted(fields.items()))).encode()
    signature = base64.b64encode(hmac.new(SECRET.encode(), message, hashlib.sha1).digest()).decode()
    headers = {"X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"}
    url, body = f"{hookgate.url}/webhooks/twilio", urlencode(fields)
    assert httpx.post(url, content=body, headers=headers).status_code == 401
    proxied = {**headers, "X-Forwarded-Proto": "https", "X-Forwarded-Host": "hooks.example.com"}
    answer = httpx.post(url, content=body, headers=proxied)
    assert (answer.status_code, answer.json()["status"]) == (200, "accepted")
