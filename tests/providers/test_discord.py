"""Discord: Ed25519 signatures from a fresh key pair, checked by Discord's own discord_interactions
verify_key; the PING answers byte for byte; deferred replies for commands."""

from __future__ import annotations

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from discord_interactions import verify_key

from tests.providers.helpers import make, rejected, verify

NOW = 1_700_000_000


@pytest.fixture
def keys() -> tuple[str, str]:
    private = Ed25519PrivateKey.generate()
    seed = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return public.hex(), seed.hex()


def signed(body: bytes, seed: str, timestamp: int = NOW) -> dict[str, str]:
    """Discord's headers for ``body``, signed with the private key whose seed is ``seed``."""
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed))
    return {
        "X-Signature-Ed25519": key.sign(str(timestamp).encode() + body).hex(),
        "x-signature-timestamp": str(timestamp),
    }


def test_ping_is_answered_with_a_pong(keys: tuple[str, str]) -> None:
    public, seed = keys
    body = b'{"id":"1","application_id":"2","type":1,"token":"t","version":1}'
    headers = signed(body, seed)
    assert verify_key(body, headers["X-Signature-Ed25519"], headers["x-signature-timestamp"], public)
    delivery = verify(make("discord", public_key=public), body, headers)
    assert delivery.handshake is not None
    assert (delivery.handshake.status_code, delivery.handshake.body) == (200, b'{"type":1}')


def test_webhook_event_ping_and_event_answer_204(keys: tuple[str, str]) -> None:
    public, seed = keys
    ping = b'{"version":1,"application_id":"2","type":0}'
    shake = verify(make("discord", public_key=public), ping, signed(ping, seed)).handshake
    assert shake is not None
    assert (shake.status_code, shake.body) == (204, b"")
    event = orjson.dumps(
        {"version": 1, "application_id": "2", "type": 1, "event": {"type": "APPLICATION_AUTHORIZED", "data": {}}}
    )
    delivery = verify(make("discord", public_key=public), event, signed(event, seed))
    assert delivery.event_type == "APPLICATION_AUTHORIZED"
    assert delivery.reply is not None
    assert delivery.reply.status_code == 204


def test_a_command_is_stored_and_deferred(keys: tuple[str, str]) -> None:
    public, seed = keys
    provider = make("discord", public_key=public)
    body, headers = provider.signed_request("interaction.application_command", event_id="1189", secret=seed)
    assert verify_key(body, headers["X-Signature-Ed25519"], headers["x-signature-timestamp"], public)
    delivery = verify(provider, body, headers)
    assert (delivery.event_id, delivery.event_type) == ("1189", "interaction.application_command")
    assert delivery.reply is not None
    assert delivery.reply.body == b'{"type":5}'


@pytest.mark.parametrize("case", ["tampered", "wrong key", "stale"])
def test_rejections(keys: tuple[str, str], case: str) -> None:
    public, seed = keys
    body = b'{"id":"1","application_id":"2","type":2,"token":"t","version":1}'
    headers = signed(body, seed, NOW - 301 if case == "stale" else NOW)
    if case == "wrong key":
        public = (
            Ed25519PrivateKey.generate()
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            .hex()
        )
    sent = body.replace(b'"type":2', b'"type":3') if case == "tampered" else body
    assert rejected(make("discord", public_key=public), sent, headers).status_code == 401
