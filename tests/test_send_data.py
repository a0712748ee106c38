"""``hookgate send --data FILE``: the help says, per provider type, what the file's JSON object
replaces (or is merged into), and each type's sample really puts it there."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson
import pytest

from gateway.cli import SEND_DATA, main
from providers import PROVIDER_TYPES, BaseProvider, ProviderSettings
from tests.providers.helpers import HMAC_OPTIONS, SAMPLE_TYPES
from tests.test_cli import EXAMPLE_CONFIG

#: Where each type's sample puts ``data``, found by reading its ``sample()``: a path into the
#: body ("" for the whole body), whether the sample's own object there is replaced or kept, and
#: how the help names that place.
WHERE: dict[str, tuple[str, str, str]] = {
    "discord": ("data", "replaces", "data"),
    "github": ("", "replaces", "the whole payload"),
    "gitlab": ("object_attributes", "replaces", "object_attributes"),
    "hmac": ("data", "replaces", "data"),
    "hubspot": ("[0]", "is merged into", "the event"),
    "intercom": ("data.item", "replaces", "data.item"),
    "linear": ("data", "is merged into", "data"),
    "mailgun": ("event-data", "is merged into", "event-data"),
    "meta": ("entry[0].changes[0].value", "replaces", "entry[0].changes[0].value"),
    "msgraph": ("value[0]", "is merged into", "the notification"),
    "paddle": ("data", "replaces", "data"),
    "pagerduty": ("event.data", "replaces", "event.data"),
    "sendgrid": ("[0]", "is merged into", "the event"),
    "shopify": ("", "replaces", "the whole payload"),
    "slack": ("event", "replaces", "event"),
    "square": ("data.object.payment", "replaces", "data.object.<kind>"),
    "standard": ("data", "replaces", "data"),
    "stripe": ("data.object", "replaces", "data.object"),
    "twilio": ("", "is merged into", "the form fields"),
    "twitch": ("event", "replaces", "event"),
    "zoom": ("payload.object", "replaces", "payload.object"),
}


def at(body: Any, path: str) -> Any:
    for part in path.replace("[", ".[").split("."):
        if part:
            body = body[int(part[1:-1])] if part.startswith("[") else body[part]
    return body


def sample(type_name: str, data: dict[str, Any] | None) -> Any:
    """The decoded body of the type's sample; the provider is built without validation, since
    ``sample()`` needs no secret."""
    provider = object.__new__(PROVIDER_TYPES[type_name])
    assert isinstance(provider, BaseProvider)
    provider.settings = ProviderSettings(name=type_name, type=type_name, options=HMAC_OPTIONS)
    body, _ = provider.sample(SAMPLE_TYPES[type_name], data, event_id="evt_1", timestamp=1_700_000_000)
    return dict(parse_qsl(body.decode())) if type_name == "twilio" else orjson.loads(body)


def test_every_type_is_described() -> None:
    assert set(SEND_DATA) == set(PROVIDER_TYPES) == set(WHERE)


@pytest.mark.parametrize("type_name", sorted(WHERE))
def test_the_help_says_where_the_data_goes(type_name: str) -> None:
    path, verb, spoken = WHERE[type_name]
    described = SEND_DATA[type_name]
    assert described == f"{verb} {spoken}" or described.startswith(f"{verb} {spoken} "), described
    own = at(sample(type_name, None), path)
    placed = at(sample(type_name, {"hookgate_marker": "m"}), path)
    assert placed["hookgate_marker"] == "m"
    kept = set(own) <= set(placed)
    assert kept if verb == "is merged into" else not kept, (own, placed)


def test_send_help_lists_what_data_replaces_per_type(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["send", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "--data FILE" in out
    for type_name, described in SEND_DATA.items():
        assert f"  {type_name:<10} {described}" in out


def test_data_that_is_not_a_json_object_is_refused_with_a_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "bad.json").write_text("{nope")
    for name, reason in (("list.json", "must hold a json object"), ("bad.json", "unexpected"), ("none.json", "")):
        args = ["send", "stripe", "--type", "invoice.paid", "--data", str(tmp_path / name)]
        assert main([*args, "--config", str(EXAMPLE_CONFIG), "--url", "http://127.0.0.1:9/"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"--data {tmp_path / name}: "), err
        assert reason in err.lower(), err
