"""The URL a provider type reads (to check a signature over it, or for its query) may come from a
crafted ``Host`` or ``X-Forwarded-Host``: when it cannot be parsed, the request is a 400 with a
fixed reason, never an uncaught ValueError (a 500)."""

from __future__ import annotations

import pytest

from providers import PROVIDER_TYPES, Inbound, PayloadRejected, ProviderConfigError
from providers.base import SignsUrl
from tests.providers.helpers import NOW, SAMPLE_TYPES, any_type, make, rejected, verify

GOOD = "https://hooks.example.com/webhooks/x?a=b"
#: ``[`` opens an IPv6 literal that never closes; 99999 is no port; a fullwidth ``#`` fails NFKC checks.
MALFORMED = [
    "http://[/webhooks/x?a=b",
    "http://h:99999/webhooks/x?a=b",
    "http://h:port/webhooks/x?a=b",
    "http://\uff03/webhooks/x?a=b",
]
READS_URL = sorted(name for name, cls in PROVIDER_TYPES.items() if cls.reads_url)
#: The types that read the URL of a POST too (Meta reads it only for its GET subscription check).
POSTS_READ_URL = [name for name in READS_URL if name != "meta"]


def test_the_types_that_read_the_url() -> None:
    assert set(READS_URL) >= {"twilio", "square", "hubspot", "msgraph", "meta"}


#: Each type that reads a POST's URL, without ``public_url`` and, for those that sign the URL, with.
URL_SETUPS = [(name, None) for name in POSTS_READ_URL] + [
    (name, "https://hooks.example.com/webhooks/x")
    for name in POSTS_READ_URL
    if issubclass(PROVIDER_TYPES[name], SignsUrl)
]


@pytest.mark.parametrize("url", MALFORMED)
@pytest.mark.parametrize(("type_name", "public_url"), URL_SETUPS)
def test_a_malformed_request_url_is_a_400(type_name: str, url: str, public_url: str | None) -> None:
    """Signed for a good URL, then received at a malformed one: the type reads the URL (to check
    the signature, or for its query) and refuses it cleanly."""
    provider, secret = any_type(type_name, public_url)
    body, headers = provider.signed_request(
        SAMPLE_TYPES[type_name], event_id="e-1", timestamp=NOW, secret=secret, url=GOOD
    )
    failure = rejected(provider, body, headers, url)
    assert isinstance(failure, PayloadRejected)
    assert (failure.status_code, failure.reason) == (400, "request URL is malformed")


@pytest.mark.parametrize("url", MALFORMED)
def test_meta_subscription_check_at_a_malformed_url_is_a_400(url: str) -> None:
    provider, secret = any_type("meta")
    query = "hub.mode=subscribe&hub.challenge=1&hub.verify_token=my-verify-token"
    failure = rejected(provider, b"", {}, url.replace("a=b", query), "GET")
    assert (failure.status_code, failure.reason) == (400, "request URL is malformed")
    # A notification (POST) does not read the URL: it verifies wherever it arrives.
    body, headers = provider.signed_request(SAMPLE_TYPES["meta"], event_id="e-1", timestamp=NOW, secret=secret)
    assert verify(provider, body, headers, url).batch


def test_query_of_a_malformed_url_is_refused() -> None:
    with pytest.raises(PayloadRejected, match="request URL is malformed"):
        _ = Inbound(b"", {}, "http://[/webhooks/x?a=b").query
    assert Inbound(b"", {}, GOOD).query == {"a": "b"}
    assert Inbound(b"", {}, "").query == {}


@pytest.mark.parametrize("public_url", ["https://hooks.example.com:99999/webhooks/x", "https://[/webhooks/x"])
def test_a_public_url_that_cannot_be_parsed_is_a_configuration_error(public_url: str) -> None:
    with pytest.raises(ProviderConfigError, match="public_url"):
        make("twilio", "a-long-enough-shared-secret", public_url=public_url)
