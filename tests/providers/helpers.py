"""Building providers with a frozen clock, and case-insensitive headers like the intake's."""

from __future__ import annotations

import base64
import functools
from collections.abc import Mapping
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.datastructures import Headers

from providers import PROVIDER_TYPES, BaseProvider, Delivery, DeliveryRejected, Inbound, ProviderSettings

NOW = 1_700_000_000


def make(type_name: str, *secrets: str, now: float = NOW, **options: Any) -> BaseProvider:
    settings = ProviderSettings(name=type_name, type=type_name, secrets=secrets, options=options)
    return PROVIDER_TYPES[type_name](settings, clock=lambda: now)


def verify(
    provider: BaseProvider, body: bytes, headers: Mapping[str, str], url: str = "", method: str = "POST"
) -> Delivery:
    """What the intake does: the request as the provider type sees it."""
    return provider.verify_request(Inbound(body, Headers(headers=dict(headers)), url, method))


def rejected(
    provider: BaseProvider, body: bytes, headers: Mapping[str, str], url: str = "", method: str = "POST"
) -> DeliveryRejected:
    with pytest.raises(DeliveryRejected) as info:
        verify(provider, body, headers, url, method)
    return info.value


#: An event type each built-in type can build a sample of.
SAMPLE_TYPES = {
    "discord": "interaction.application_command",
    "github": "issues.opened",
    "gitlab": "merge_request.open",
    "hmac": "thing.updated",
    "hubspot": "contact.creation",
    "intercom": "conversation.user.replied",
    "linear": "Issue.update",
    "mailgun": "delivered",
    "meta": "whatsapp_business_account.messages",
    "msgraph": "updated",
    "paddle": "subscription.updated",
    "pagerduty": "incident.triggered",
    "sendgrid": "delivered",
    "shopify": "orders/create",
    "slack": "app_mention",
    "square": "payment.updated",
    "standard": "user.created",
    "stripe": "invoice.paid",
    "twilio": "message.delivered",
    "twitch": "channel.follow",
    "zoom": "meeting.started",
}
#: A ``type: hmac`` whose id comes from a header and the rest from the body.
HMAC_OPTIONS: dict[str, Any] = {
    "signature": {"header": "X-Acme-Signature", "algorithm": "sha256", "encoding": "hex", "prefix": "sha256="},
    "timestamp": {"header": "X-Acme-Timestamp"},
    "signed_payload": "{timestamp}.{body}",
    "event": {
        "id": "header:X-Acme-Event-Id",
        "type": "body:type",
        "resource": "body:data.id",
        "sequence": "body:data.version",
    },
}
SHARED_SECRET = "a-long-enough-shared-secret"
STANDARD_SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


@functools.cache
def any_type(type_name: str, public_url: str | None = None) -> tuple[BaseProvider, str]:
    """A provider of ``type_name`` on the frozen clock (with ``public_url`` if given), and the
    secret (or private key) that signs for it: a fresh key pair for the key-pair types, as their
    own tests make."""
    options: dict[str, Any] = {} if public_url is None else {"public_url": public_url}
    if type_name == "sendgrid":
        ecdsa = ec.generate_private_key(ec.SECP256R1())
        public = ecdsa.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        pem = ecdsa.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return make(type_name, public_key=base64.b64encode(public).decode()), pem.decode()
    if type_name == "discord":
        ed = Ed25519PrivateKey.generate()
        raw = serialization.Encoding.Raw
        public = ed.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
        seed = ed.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        return make(type_name, public_key=public.hex()), seed.hex()
    secret = STANDARD_SECRET if type_name == "standard" else SHARED_SECRET
    if type_name == "hmac":
        options = HMAC_OPTIONS
    elif type_name == "meta":
        options = {"verify_token": "my-verify-token"}
    return make(type_name, secret, **options), secret
