"""The outbound URL guard, API settings, resource references and Retry-After."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from providers import PROVIDER_TYPES, ProviderSettings
from providers.api import ApiSettings, ResourceRef, UnsafeUrl, api_url, fill_path
from workers.reconcile import MAX_RETRY_AFTER, parse_retry_after


@pytest.mark.parametrize(
    ("base", "target", "expected"),
    [
        ("https://api.github.com", "/repos/o/r/issues/1", "https://api.github.com/repos/o/r/issues/1"),
        ("https://api.github.com", "https://api.github.com/repos/o/r", "https://api.github.com/repos/o/r"),
        ("https://api.github.com", "https://api.github.com:443/repos/o/r", "https://api.github.com:443/repos/o/r"),
        ("https://ghe.example.com/api/v3", "https://ghe.example.com/api/v3/repos/o/r", None),
        ("http://127.0.0.1:8080", "/v1/things/a%3Fb%20c", "http://127.0.0.1:8080/v1/things/a%3Fb%20c"),
        (
            "https://api.github.com",
            "/repos/o/r/labels/good%20first%20issue",
            "https://api.github.com/repos/o/r/labels/good%20first%20issue",
        ),
        ("https://api.github.com", "/repos/o/r/issues/1?page=1", "https://api.github.com/repos/o/r/issues/1?page=1"),
    ],
)
def test_urls_on_the_configured_api_are_allowed(base: str, target: str, expected: str | None) -> None:
    assert api_url(base, target) == (expected or target)


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:6379/",  # Redis on the worker's host
        "http://169.254.169.254/latest/meta-data/",  # a cloud metadata address
        "https://api.github.com.evil.example/repos",  # a look-alike host
        "https://api.github.com:8443/repos",  # another port
        "http://api.github.com/repos",  # another scheme
        "https://user:pass@api.github.com/repos",  # credentials in the URL
        "//evil.example/repos",  # scheme-relative
        "https://api.github.com/repos/../../admin",  # dot segments
        "https://api.github.com:notaport/repos",
        "file:///etc/passwd",
    ],
)
def test_urls_elsewhere_are_refused(target: str) -> None:
    with pytest.raises(UnsafeUrl, match="refused to fetch"):
        api_url("https://api.github.com", target)


@pytest.mark.parametrize(
    "target",
    [
        "https://api.github.com/repos/%2e%2e/%2e%2e/admin",  # dot segments, percent-encoded
        "https://api.github.com/repos/%2E%2E/admin",
        "https://api.github.com/repos/.%2e/admin",
        "https://api.github.com/repos/%252e%252e/admin",  # encoded twice, for a server that decodes twice
        "https://api.github.com/repos/o%2f..%2f..%2fadmin",  # an encoded slash
        "https://api.github.com/repos/o%2F..%2F..%2Fadmin",
        "https://api.github.com/repos\\..\\..\\admin",  # backslashes, which some servers take as slashes
        "https://api.github.com/repos/o%5c..%5cadmin",
        "https://api.github.com/repos/o\x00/r",  # control characters
        "https://api.github.com/repos/o%00/r",
        "https://api.github.com/repos/o/r\nHost: evil.example",
        "/repos/%2e%2e/%2e%2e/admin",  # the same as paths
        "/v1/things/a%2Fb",
        "/v1/things/a\\b",
    ],
)
def test_disguised_dot_segments_slashes_and_control_characters_are_refused(target: str) -> None:
    with pytest.raises(UnsafeUrl, match="refused to fetch"):
        api_url("https://api.github.com", target)


@pytest.mark.parametrize("target", ["https://[/repos", "https://api.github.com:99999/repos", "http://[::1/x"])
def test_unparseable_urls_are_refused(target: str) -> None:
    with pytest.raises(UnsafeUrl, match="refused to fetch"):
        api_url("https://api.github.com", target)


def test_urls_outside_the_base_path_are_refused() -> None:
    with pytest.raises(UnsafeUrl, match="outside the configured API path /api/v3"):
        api_url("https://ghe.example.com/api/v3", "https://ghe.example.com/api/v30/repos")
    with pytest.raises(UnsafeUrl, match="outside"):
        api_url("https://ghe.example.com/api/v3", "https://ghe.example.com/admin")


def test_ids_are_one_encoded_path_segment() -> None:
    assert fill_path("/v1/things/{resource}", resource="a?c#d e:f") == "/v1/things/a%3Fc%23d%20e%3Af"
    assert fill_path("/v1/things/{resource}", resource="caf\u00e9") == "/v1/things/caf%C3%A9"


@pytest.mark.parametrize(
    "value", ["", ".", "..", "a/b", "../../admin", "a\\b", "%2e%2e", "%2E.", "a%2fb", "a\x00", "a\nb"]
)
def test_ids_that_would_change_the_path_are_refused(value: str) -> None:
    with pytest.raises(UnsafeUrl, match="refused to put"):
        fill_path("/v1/things/{resource}", resource=value)


def test_api_settings_report_every_problem() -> None:
    settings, problems = ApiSettings.parse(
        {"base_url": "ftp://x", "token": "", "basic": {"username": "u"}, "bogus": 1, "read_timeout_seconds": 0},
        None,
    )
    assert settings is None
    assert dict(problems).keys() == {
        "api.bogus",
        "api.base_url",
        "api.token",
        "api.basic",
        "api.read_timeout_seconds",
    }
    assert ApiSettings.parse({"resource_path": "/v1/things"}, "https://x.example")[1] == [
        ("api.resource_path", "must be a path containing {resource}, e.g. /v1/things/{resource}")
    ]


def test_built_in_types_know_their_public_api() -> None:
    settings, problems = ApiSettings.parse({"token": "sk_test"}, PROVIDER_TYPES["stripe"].api_base_url)
    assert problems == []
    assert settings is not None
    assert (settings.base_url, settings.token) == ("https://api.stripe.com", "sk_test")


def stripe_ref(payload: dict[str, object], resource_id: str) -> ResourceRef | None:
    provider = PROVIDER_TYPES["stripe"](ProviderSettings("stripe", "stripe", ("whsec_12345678",)))
    return provider.resource_ref("x.updated", resource_id, payload)


def test_stripe_references_the_object_an_event_names() -> None:
    snapshot = {"data": {"object": {"id": "cs_1", "object": "checkout.session"}}}
    assert stripe_ref(snapshot, "cs_1") == ResourceRef("checkout.session", "/v1/checkout/sessions/cs_1")
    thin = {"related_object": {"id": "mtr_1", "type": "billing.meter", "url": "/v1/billing/meters/mtr_1"}}
    assert stripe_ref(thin, "mtr_1") == ResourceRef("billing.meter", url="/v1/billing/meters/mtr_1")


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("charge?expand[]=customer#", "/v1/charge%3Fexpand%5B%5D%3Dcustomer%23s/ch_1"),  # no query smuggled in
        ("a b", "/v1/a%20bs/ch_1"),
    ],
)
def test_stripe_object_type_is_encoded_segment_by_segment(kind: str, path: str) -> None:
    ref = stripe_ref({"data": {"object": {"id": "ch_1", "object": kind}}}, "ch_1")
    assert ref == ResourceRef(kind, path)
    assert api_url("https://api.stripe.com", path) == "https://api.stripe.com" + path


@pytest.mark.parametrize("kind", ["x/../../admin", "checkout..session", "%2e%2e", "a\\b", ".session"])
def test_stripe_object_type_that_would_change_the_path_is_refused(kind: str) -> None:
    with pytest.raises(UnsafeUrl):
        stripe_ref({"data": {"object": {"id": "ch_1", "object": kind}}}, "ch_1")


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert parse_retry_after("2", 0.0) == 2.0
    assert parse_retry_after(formatdate(1_000_030, usegmt=True), 1_000_000.0) == pytest.approx(30.0)
    assert parse_retry_after("99999999", 0.0) == MAX_RETRY_AFTER
    assert parse_retry_after("soon", 0.0) is None
    assert parse_retry_after(None, 0.0) is None
