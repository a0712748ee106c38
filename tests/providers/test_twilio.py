"""Twilio: signatures made by Twilio's own SDK (twilio.request_validator) and the vectors of its
test suite, over forms and JSON bodies, behind a proxy and with public_url."""

from __future__ import annotations

import hashlib
from urllib.parse import parse_qsl, urlencode

import pytest
from twilio.request_validator import RequestValidator

from providers import ProviderConfigError
from tests.providers.helpers import make, rejected, verify

TOKEN = "12345"  # the auth token of Twilio's own test vectors
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
VECTOR = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675309",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
}


@pytest.fixture(autouse=True)
def short_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """The vectors' token "12345" is shorter than any real one (32 hex characters), which the
    configuration refuses; let it through here only."""
    from providers.twilio import TwilioProvider

    monkeypatch.setattr(TwilioProvider, "check_secret", lambda self, secret: None)


STATUS = {"AccountSid": "AC" + "1" * 32, "MessageSid": "SM" + "2" * 32, "MessageStatus": "delivered"}


def test_published_vector() -> None:
    body = urlencode(VECTOR).encode()
    delivery = verify(make("twilio", TOKEN), body, {**FORM, "X-Twilio-Signature": "RSOYDt4T1cUTdK1PDd93/VVr8B8="}, URL)
    assert (delivery.event_type, delivery.resource_id) == ("call.received", "CA1234567890ABCDE")


def test_repeated_parameters_vector() -> None:
    body = urlencode(
        [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234"), ("Digits", "1234")]
    )
    headers = {**FORM, "X-Twilio-Signature": "IK+Dwps556ElfBT0I3Rgjkr1wJU="}
    # No MessageSid or CallSid: authentic, so a 400 (a 401 would mean the signature failed).
    assert rejected(make("twilio", TOKEN), body.encode(), headers, URL).status_code == 400


def test_status_callback_signed_by_the_sdk_behind_a_proxy() -> None:
    public = "https://hooks.example.com/twilio/status"
    signature = RequestValidator(TOKEN).compute_signature(public + "?x=1", STATUS)
    headers = {**FORM, "X-Twilio-Signature": signature, "I-Twilio-Idempotency-Token": "idem-1"}
    body = urlencode(STATUS).encode()
    provider = make("twilio", TOKEN)
    # The intake saw http://10.0.0.5:8000/webhooks/twilio: public_url says what Twilio signed.
    internal = "http://10.0.0.5:8000/webhooks/twilio?x=1"
    assert rejected(provider, body, headers, internal).status_code == 401
    delivery = verify(make("twilio", TOKEN, public_url=public), body, headers, internal)
    assert (delivery.event_id, delivery.event_type) == ("idem-1", "message.delivered")
    assert (delivery.resource_id, delivery.sequence) == (STATUS["MessageSid"], 4)
    assert delivery.payload["MessageStatus"] == "delivered"


@pytest.mark.parametrize("signed", ["https://mycompany.com:443/myapp.php?foo=1&bar=2", URL])
def test_default_port_either_way(signed: str) -> None:
    signature = RequestValidator(TOKEN).compute_signature(signed, VECTOR)
    verify(make("twilio", TOKEN), urlencode(VECTOR).encode(), {**FORM, "X-Twilio-Signature": signature}, URL)


def test_json_body_is_checked_through_body_sha256() -> None:
    body = b'{"property": "value", "boolean": true}'
    digest = hashlib.sha256(body).hexdigest()
    assert digest == "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"  # Twilio's vector
    url = f"https://mycompany.com/myapp.php?bodySHA256={digest}"
    signature = RequestValidator(TOKEN).compute_signature(url, {})
    assert RequestValidator(TOKEN).validate(url, body.decode(), signature)
    headers = {"Content-Type": "application/json", "X-Twilio-Signature": signature}
    body_with_sid = body  # authentic but without a SID: 400
    assert rejected(make("twilio", TOKEN), body_with_sid, headers, url).status_code == 400
    assert rejected(make("twilio", TOKEN), body.replace(b"true", b"false"), headers, url).status_code == 401


@pytest.mark.parametrize(
    ("body", "secret", "url"),
    [
        (urlencode({**STATUS, "MessageStatus": "failed"}).encode(), TOKEN, "https://h.example/t"),
        (urlencode(STATUS).encode(), "another-token", "https://h.example/t"),
        (urlencode(STATUS).encode(), TOKEN, "https://h.example/other"),
    ],
)
def test_rejections(body: bytes, secret: str, url: str) -> None:
    signature = RequestValidator(secret).compute_signature("https://h.example/t", STATUS)
    assert rejected(make("twilio", TOKEN), body, {**FORM, "X-Twilio-Signature": signature}, url).status_code == 401


def test_our_signature_is_the_sdks() -> None:
    provider = make("twilio", TOKEN, public_url="https://hooks.example.com/webhooks/twilio")
    body, headers = provider.signed_request("message.sent", event_id="idem-2")
    fields = dict(parse_qsl(body.decode()))
    url = "https://hooks.example.com/webhooks/twilio"
    assert RequestValidator(TOKEN).validate(url, fields, headers["X-Twilio-Signature"])
    delivery = verify(provider, body, headers, "http://internal/webhooks/twilio")
    assert delivery.event_type == "message.sent"
    ref = provider.resource_ref(delivery.event_type, delivery.resource_id or "", delivery.payload)
    assert ref is not None
    assert ref.path == f"/2010-04-01/Accounts/{fields['AccountSid']}/Messages/{fields['MessageSid']}.json"


def test_public_url_must_be_a_bare_url() -> None:
    with pytest.raises(ProviderConfigError, match="public_url"):
        make("twilio", TOKEN, public_url="https://hooks.example.com/t?x=1")
