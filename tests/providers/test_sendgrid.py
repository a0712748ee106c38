"""SendGrid: the published ECDSA vector of SendGrid's SDK tests, and batches signed with a fresh
P-256 key and checked by the SDK's EventWebhook."""

from __future__ import annotations

import base64

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sendgrid.helpers.eventwebhook import EventWebhook

from providers import ProviderConfigError
from tests.providers.helpers import make, rejected, verify

VECTOR_KEY = (
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7"
    "dAfSmpqIM8kF9mN1flpVKS3GRqe62gw+2fNNRaINXvVpiglSI8eNEc6wEA3F+g=="
)
WRONG_KEY = (
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqTxd43gyp8IOEto2LdIfjRQr"
    "Ibsd4SXZkLW6jDutdhXSJCWHw8REntlo7aNDthvj+y7GjUuFDb/R1NGe1OPzpA=="
)
VECTOR_BODY = (
    b'[{"email":"hello@world.com","event":"dropped","reason":"Bounced Address","sg_event_id":'
    b'"ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA","sg_message_id":'
    b'"LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0","smtp-id":'
    b'"<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>","timestamp":1600112492}]\r\n'
)
VECTOR_HEADERS = {
    "X-Twilio-Email-Event-Webhook-Signature": (
        "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM+uOe5W0JuG+luQAbPIqHh89M15TluLtEZtM="
    ),
    "X-Twilio-Email-Event-Webhook-Timestamp": "1600112502",
}


def test_published_vector() -> None:
    delivery = verify(make("sendgrid", now=1600112502, public_key=VECTOR_KEY), VECTOR_BODY, VECTOR_HEADERS)
    [event] = delivery.batch
    assert (event.event_id, event.event_type) == ("ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA", "dropped")


def test_published_vector_rejections() -> None:
    assert (
        rejected(make("sendgrid", now=1600112502, public_key=WRONG_KEY), VECTOR_BODY, VECTOR_HEADERS).status_code == 401
    )
    tampered = VECTOR_BODY.replace(b"dropped", b"delivered")
    assert (
        rejected(make("sendgrid", now=1600112502, public_key=VECTOR_KEY), tampered, VECTOR_HEADERS).status_code == 401
    )
    stale = make("sendgrid", now=1600112502 + 301, public_key=VECTOR_KEY)
    assert rejected(stale, VECTOR_BODY, VECTOR_HEADERS).status_code == 401


@pytest.fixture
def key_pair() -> tuple[str, str]:
    private = ec.generate_private_key(ec.SECP256R1())
    der = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return base64.b64encode(der).decode(), pem.decode()


def test_a_batch_signed_by_us_satisfies_sendgrids_sdk(key_pair: tuple[str, str]) -> None:
    public, private = key_pair
    provider = make("sendgrid", public_key=public)
    body, headers = provider.signed_request("delivered", event_id="sg-1", secret=private)
    assert EventWebhook(public).verify_signature(
        body.decode(),
        headers["X-Twilio-Email-Event-Webhook-Signature"],
        headers["x-twilio-email-event-webhook-timestamp"],
    )
    two = orjson.dumps([{"sg_event_id": "a", "event": "open"}, {"sg_event_id": "b", "event": "click"}])
    signed = make("sendgrid", public_key=public).sign(two, {}, secret=private, timestamp=1_700_000_000)
    delivery = verify(provider, two, signed)
    assert [(e.event_id, e.event_type, e.resource_id) for e in delivery.batch] == [
        ("a", "open", None),
        ("b", "click", None),
    ]


def test_public_key_is_checked_when_loaded() -> None:
    with pytest.raises(ProviderConfigError, match="public_key"):
        make("sendgrid", public_key="not-a-key")
