"""Authentic bodies of a shape no provider sends: every type answers them with a Delivery or a
DeliveryRejected (401/400), never another exception (a 500).

Each example is a correctly signed request whose body is the type's own sample with any part
replaced by a random JSON value (lists where objects go, objects where ids go, huge numbers,
control characters), or a random JSON value outright, with random values in the headers the type
reads. A Delivery that comes back must hold what the store can keep: text ids and types without
control characters, and a sequence that fits a BIGINT.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from starlette.datastructures import Headers

from providers import PROVIDER_TYPES, BaseProvider, Delivery, DeliveryRejected, Inbound, PayloadRejected
from providers.payload import FORM, as_sequence, checked_text, is_form, parse_form
from tests.providers.helpers import NOW, SAMPLE_TYPES, any_type, make, rejected, verify

INT64 = (-(2**63), 2**63 - 1)
CONTROL = {chr(c) for c in (*range(0x20), *range(0x7F, 0xA0))}
URL = "https://hooks.example.com/webhooks/x"
#: Sample events per type: the ordinary one, and the handshakes and variants it tells apart.
TEMPLATES: dict[str, list[str]] = {name: [event_type] for name, event_type in SAMPLE_TYPES.items()}
TEMPLATES["discord"] += ["ping", "interaction.message_component", "APPLICATION_AUTHORIZED"]
TEMPLATES["github"] += ["ping", "pull_request.closed"]
TEMPLATES["intercom"] += ["ping"]
TEMPLATES["slack"] += ["url_verification", "slash_command"]
TEMPLATES["twilio"] += ["call.completed"]
TEMPLATES["twitch"] += ["webhook_callback_verification"]
TEMPLATES["zoom"] += ["endpoint.url_validation"]
#: A ``type: hmac`` that reads everything from nested body paths.
HMAC_BODY_OPTIONS = {
    "signature": {"header": "X-Sig", "algorithm": "sha512", "encoding": "base64"},
    "event": {
        "id": "body:meta.id",
        "type": "body:meta.kind",
        "resource": "body:data.object.id",
        "sequence": "body:data.object.seq",
    },
}
#: Sample data where a type's own sample leaves out a path it reads.
SAMPLE_DATA = {"hmac": {"object": {"id": "o-1", "seq": 3}, "id": "d-1", "version": 2}}

#: Keys the extractors look for, mixed into random objects.
USUAL_KEYS = [
    *("id", "type", "event", "data", "object", "event_id", "event_type", "value", "entry", "changes"),
    *("messaging", "messages", "statuses", "status", "timestamp", "field", "updated_at", "version"),
    *("eventId", "subscriptionType", "objectId", "occurredAt", "sg_event_id", "MessageSid", "CallSid"),
    *("SequenceNumber", "payload", "token", "challenge", "plainToken", "event_ts", "item", "action"),
    *("clientState", "changeType", "lifecycleEvent", "resource", "trigger_id", "command", "subscription"),
    *("object_kind", "object_attributes", "admin_graphql_api_id", "related_object", "created", "topic"),
    *("webhookTimestamp", "updatedAt", "event-data", "resource_type", "meta", "kind", "seq", "uuid"),
]
#: Strings that mean something to some extractor, or that break naive parsing.
TRICKY_TEXT = [
    *("", "0", "1", "-1", "--5", "\u00b2", "\u0661\u0662", "9" * 19, "9" * 30, "1e300", "nan", "inf"),
    *("2026-01-02T03:04:05Z", "0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59", "2013-12-03 17:23:34 UTC"),
    *("evt\x00", "a\x1fb", "\x7f", "x\x9by", "ping", "url_verification", "webhook_callback_verification"),
    *("endpoint.url_validation", "revocation", "subscribe", "payment", "contact.creation", "issue:1"),
]

texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=12) | st.sampled_from(TRICKY_TEXT)
#: orjson reads integers from -2**63 to 2**64 - 1 as int (beyond, as float).
numbers = (
    st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.sampled_from([0, 1, 2, 5, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([1e300, -1e300, 9.3e18, 1.5, -0.0])
)
scalars = st.none() | st.booleans() | numbers | texts
keys = st.sampled_from(USUAL_KEYS) | texts
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3), max_leaves=6
)
header_values = st.text(st.characters(max_codepoint=255, exclude_categories=["Cs"]), max_size=20) | st.sampled_from(
    [text for text in TRICKY_TEXT if all(ord(c) < 256 for c in text)]
)


def like(template: Any) -> st.SearchStrategy[Any]:
    """Values shaped like ``template``, any part of which may be a random JSON value instead (an
    object may gain a few of the usual keys too)."""
    if isinstance(template, dict):
        same: st.SearchStrategy[Any] = st.tuples(
            st.dictionaries(st.sampled_from(USUAL_KEYS), json_values, max_size=2),
            st.fixed_dictionaries({key: like(value) for key, value in template.items()}),
        ).map(lambda pair: {**pair[0], **pair[1]})
    elif isinstance(template, list):
        same = st.lists(like(template[0]) if template else json_values, min_size=1, max_size=3)
    else:
        same = mostly(st.just(template), scalars)
    return mostly(same, json_values)


def mostly(usual: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``usual`` five times in six, else ``other`` (``one_of`` would pick each half the time)."""
    return st.sampled_from([True] * 5 + [False]).flatmap(lambda keep: usual if keep else other)


def form_like(fields: dict[str, str]) -> st.SearchStrategy[dict[str, str]]:
    """Form fields: the template's with any value replaced, and a few of the usual names."""
    return st.tuples(
        st.dictionaries(st.sampled_from(USUAL_KEYS), texts, max_size=2),
        st.fixed_dictionaries({name: mostly(st.just(value), texts) for name, value in fields.items()}),
    ).map(lambda pair: {**pair[0], **pair[1]})


def headers_for(provider: BaseProvider) -> st.SearchStrategy[dict[str, str]]:
    """Random values in the headers this type reads and stores, and in a few others."""
    names = sorted(provider.stored_headers() | {"x-other", "idempotency-key", "linear-delivery"})
    return st.dictionaries(st.sampled_from(names), header_values | st.just(FORM), max_size=3)


def check(delivery: Delivery) -> None:
    """What the store needs of every event: text ids and types free of control characters, and a
    sequence that fits a signed 64-bit column."""
    for part in (delivery, *delivery.batch):
        assert isinstance(part.event_id, str)
        assert isinstance(part.event_type, str)
        assert part.resource_id is None or isinstance(part.resource_id, str)
        for text in (part.event_id, part.event_type, part.resource_id or ""):
            assert not CONTROL & set(text), (part.event_id, part.event_type, part.resource_id)
        if part.sequence is not None:
            assert type(part.sequence) is int
            assert INT64[0] <= part.sequence <= INT64[1]


def signable(type_name: str, payload: Any) -> bool:
    """Mailgun and Graph put the signature (or clientState) inside the body, which needs a shape
    to hold it; any other body is sent as it is."""
    if type_name == "mailgun":
        return isinstance(payload, dict)
    if type_name == "msgraph":
        changes = payload.get("value") if isinstance(payload, dict) else None
        return isinstance(changes, list) and all(isinstance(change, dict) for change in changes)
    return True


TEMPLATE_STRATEGIES: dict[tuple[str, str], st.SearchStrategy[Any]] = {}


def template_strategy(type_name: str, event_type: str, body: bytes, form: bool) -> st.SearchStrategy[Any]:
    """The strategy for bodies like a type's sample of ``event_type``, built once."""
    key = (type_name, event_type)
    if key not in TEMPLATE_STRATEGIES:
        TEMPLATE_STRATEGIES[key] = form_like(dict(parse_form(body))) if form else like(orjson.loads(body))
    return TEMPLATE_STRATEGIES[key]


def hostile_request(data: st.DataObject, type_name: str, provider: BaseProvider, secret: str) -> Inbound:
    """A request built from a sample of the type, mangled, then signed as the type signs."""
    event_type = data.draw(st.sampled_from(TEMPLATES.get(type_name, ["thing.updated"])), label="template")
    body, sample_headers = provider.sample(event_type, SAMPLE_DATA.get(type_name), event_id="evt-1", timestamp=NOW)
    headers = {name.lower(): value for name, value in sample_headers.items()}
    payload: Any = None
    if is_form(headers):
        fields = data.draw(template_strategy(type_name, event_type, body, True), label="form")
        body = urlencode(fields).encode()
    else:
        payload = data.draw(template_strategy(type_name, event_type, body, False), label="payload")
        if type_name == "mailgun" and isinstance(payload, dict):
            payload.pop("signature", None)  # sign_sample adds the genuine block
        body = orjson.dumps(payload)
    headers.update(data.draw(headers_for(provider), label="headers"))
    query = data.draw(st.dictionaries(keys, texts, max_size=2), label="query")
    method = (
        data.draw(st.sampled_from(["POST", "POST", "POST", "GET"]), label="method") if provider.accepts_get else "POST"
    )
    if type_name == "twilio" and not is_form(headers):
        query["bodySHA256"] = hashlib.sha256(body).hexdigest()
    if type_name == "meta" and method == "GET":
        mode, token = st.just("subscribe") | texts, st.just("my-verify-token") | texts
        query |= data.draw(
            st.fixed_dictionaries({}, optional={"hub.mode": mode, "hub.challenge": texts, "hub.verify_token": token})
        )
    if type_name == "msgraph" and data.draw(st.booleans(), label="validationToken"):
        query["validationToken"] = data.draw(texts)
    url = f"{URL}?{urlencode(query)}" if query else URL
    # A body the type cannot even sign (Twilio: JSON sent as a form) goes as it is.
    with contextlib.suppress(DeliveryRejected):
        if signable(type_name, payload):
            body, headers = provider.sign_sample(body, headers, secret=secret, timestamp=NOW, url=url)
    headers = {name.lower(): value for name, value in headers.items()}  # the signed value wins
    return Inbound(body, Headers(headers=headers), url, method)


def hostile_provider(type_name: str) -> tuple[BaseProvider, str]:
    if type_name == "hmac-body":
        return make("hmac", "a-long-enough-shared-secret", **HMAC_BODY_OPTIONS), "a-long-enough-shared-secret"
    return any_type(type_name)


EXPLORE = bool(os.environ.get("HOOKGATE_TEST_EXPLORE"))


@pytest.mark.parametrize("type_name", [*sorted(PROVIDER_TYPES), "hmac-body"])
# The same examples every run (HOOKGATE_TEST_EXPLORE=1 draws new ones): the gate must not fail
# at random, and exploring is done on purpose, as when this found the hmac resource gap.
@settings(
    max_examples=1000 if EXPLORE else 150,
    derandomize=not EXPLORE,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data())
def test_every_type_answers_any_signed_body_with_a_delivery_or_a_rejection(type_name: str, data: st.DataObject) -> None:
    provider, secret = hostile_provider(type_name)
    request = hostile_request(data, type_name.partition("-")[0], provider, secret)
    outcome: Delivery | DeliveryRejected
    try:
        outcome = provider.verify_request(request)
    except DeliveryRejected as exc:
        outcome = exc
    if isinstance(outcome, DeliveryRejected):
        event(f"{outcome.status_code} {outcome.reason}")  # --hypothesis-show-statistics: what was reached
        assert outcome.status_code in (400, 401)
        assert isinstance(outcome.reason, str)
    else:
        event("delivery")
        check(outcome)


def test_the_strategy_reaches_the_extractors() -> None:
    """Unmangled samples verify for every type: the signing above is the type's own."""
    for type_name in [*sorted(PROVIDER_TYPES), "hmac-body"]:
        provider, secret = hostile_provider(type_name)
        for event_type in TEMPLATES.get(type_name, ["thing.updated"]):
            body, headers = provider.sample(event_type, None, event_id="evt-1", timestamp=NOW)
            url = URL
            if type_name == "twilio" and not is_form({k.lower(): v for k, v in headers.items()}):
                url += "?bodySHA256=" + hashlib.sha256(body).hexdigest()
            body, headers = provider.sign_sample(body, headers, secret=secret, timestamp=NOW, url=url)
            check(verify(provider, body, headers, url))


# -- the examples of the issue, and the number rules ----------------------------------------


def discord_request(payload: Any) -> tuple[BaseProvider, bytes, dict[str, str]]:
    provider, seed = any_type("discord")
    body = orjson.dumps(payload)
    return (provider, *provider.sign_sample(body, {}, secret=seed, timestamp=NOW, url=""))


@pytest.mark.parametrize("kind", [[2], {"a": 1}, "2", 2.0, True, None])
def test_discord_interaction_type_that_is_not_a_number_is_a_400(kind: Any) -> None:
    provider, body, headers = discord_request({"id": "1", "type": kind, "token": "t"})
    failure = rejected(provider, body, headers)
    assert isinstance(failure, PayloadRejected)


def test_discord_interaction_id_of_the_wrong_shape_is_a_400() -> None:
    provider, body, headers = discord_request({"id": ["1"], "type": 2, "token": "t"})
    assert rejected(provider, body, headers).reason == "event id is not a string or an integer"


def meta_request(entry: dict[str, Any]) -> tuple[BaseProvider, bytes, dict[str, str]]:
    provider, secret = any_type("meta")
    body = orjson.dumps({"object": "page", "entry": [{"id": "1", "time": NOW, **entry}]})
    return (provider, *provider.sign_sample(body, {}, secret=secret, timestamp=NOW, url=""))


@pytest.mark.parametrize(
    "entry",
    [{"changes": 5}, {"changes": "abc"}, {"changes": {"field": "feed"}}, {"changes": [5]}, {"messaging": {"a": 1}}],
)
def test_meta_changes_that_are_not_a_list_of_objects_are_a_400(entry: dict[str, Any]) -> None:
    provider, body, headers = meta_request(entry)
    failure = rejected(provider, body, headers)
    assert (failure.status_code, failure.reason) == (400, "an entry's changes or messaging is not a list of objects")


def test_meta_message_id_with_control_characters_is_a_400() -> None:
    value = {"messages": [{"id": "wamid.\x00", "type": "text"}]}
    provider, body, headers = meta_request({"changes": [{"field": "messages", "value": value}]})
    assert rejected(provider, body, headers).reason == "event id contains control characters"


def stripe_event(**fields: Any) -> tuple[BaseProvider, bytes, dict[str, str]]:
    provider, secret = any_type("stripe")
    payload = {"id": "evt_1", "type": "invoice.paid", "created": NOW, "data": {"object": {"id": "in_1"}}, **fields}
    body = orjson.dumps(payload)
    return (provider, *provider.sign_sample(body, {}, secret=secret, timestamp=NOW, url=""))


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"id": "evt_\x00"}, "event id contains control characters"),
        ({"type": "invoice\npaid"}, "event type contains control characters"),
        ({"data": {"object": {"id": "in_\x1b[31m"}}}, "resource id contains control characters"),
        ({"id": ["evt_1"]}, "event id is not a string or an integer"),
        ({"data": {"object": {"id": {"x": 1}}}}, "resource id is not a string or an integer"),
        ({"data": [1]}, "data is not an object"),
        ({"created": 2**63}, "sequence out of range"),
        ({"created": 2**64 - 1}, "sequence out of range"),
        ({"created": -1e19}, "sequence out of range"),
        ({"created": 1e300}, "sequence out of range"),
        ({"created": "9" * 5000}, "sequence out of range"),
        ({"created": [NOW]}, "sequence is not a number or a time"),
        ({"created": True}, "sequence is not a number or a time"),
    ],
)
def test_stripe_fields_of_the_wrong_shape_are_a_400_with_the_reason(fields: dict[str, Any], reason: str) -> None:
    failure = rejected(*stripe_event(**fields))
    assert (failure.status_code, failure.reason) == (400, reason)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (2**63 - 1, 2**63 - 1),
        (-(2**63), -(2**63)),
        (1.9e18, 1_900_000_000_000_000_000),
        ("-42", -42),
        ("2026-01-02T03:04:05Z", 1_767_323_045_000),
        ("2026-01-02T03:04:05", 1_767_323_045_000),  # no zone: UTC, not the host's zone
        ("2013-12-03 17:23:34 UTC", 1_386_091_414_000),
        ("\u00b2", None),  # Unicode digits are not a number here
        ("--5", None),
        ("soon", None),
        (None, None),
    ],
)
def test_sequences_within_a_bigint(value: Any, expected: int | None) -> None:
    assert as_sequence(value) == expected


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 1e19, float("inf"), float("nan"), "9" * 20, "-" + "9" * 30])
def test_sequences_outside_a_bigint_are_refused(value: Any) -> None:
    with pytest.raises(PayloadRejected, match="sequence out of range"):
        as_sequence(value)


def test_checked_text() -> None:
    assert checked_text("evt_1", "event id") == "evt_1"
    assert checked_text(2**64 - 1, "event id") == str(2**64 - 1)
    assert checked_text("", "event id") is None
    assert checked_text(None, "event id") is None
    assert checked_text("caf\u00e9 \u2603", "event id") == "caf\u00e9 \u2603"
    for wrong in (True, 1.5, [], {}):
        with pytest.raises(PayloadRejected, match="event id is not a string or an integer"):
            checked_text(wrong, "event id")
    for control in ("\x00", "a\tb", "\x7f", "\x85"):
        with pytest.raises(PayloadRejected, match="event id contains control characters"):
            checked_text(control, "event id")
