"""providers.yaml: substitution, validation, and problems reported with file and line."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import ENV_REFERENCE, load_config
from gateway.errors import ConfigError
from providers import PROVIDER_TYPES
from tests.support.servers import ROOT
from tests.test_cli import EXAMPLE_CONFIG


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "providers.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def problems(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ or {})
    return info.value.problems


def test_env_substitution_and_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        defaults: {tolerance_seconds: 60}
        providers:
          stripe: {type: stripe, secrets: ["${STRIPE_SECRET}", "${OLD:-whsec_fallback_value}"], tolerance_seconds: 10}
          github: {type: github, secrets: ["${GH}"]}
        handlers: [examples.handlers]
    """,
    )
    config = load_config(path, {"STRIPE_SECRET": "whsec_from_env", "GH": "github-secret"})
    stripe = config.providers["stripe"].provider.settings
    assert stripe.secrets == ("whsec_from_env", "whsec_fallback_value")
    assert stripe.tolerance_seconds == 10
    assert config.providers["github"].provider.settings.tolerance_seconds == 60
    assert config.providers["github"].max_body_bytes == 1_048_576
    assert config.handlers == ("examples.handlers",)


def test_missing_variable_names_it_the_provider_and_the_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        providers:
          github:
            type: github
            secrets: ["${GITHUB_WEBHOOK_SECRET}"]
    """,
    )
    assert problems(path) == [
        f"{path}:4: providers.github.secrets[0]: "
        "environment variable GITHUB_WEBHOOK_SECRET is not set (provider github)",
    ]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        defaults: {tolerance_seconds: -1}
        providers:
          stripe: {type: stripe, secrets: []}
          acme:
            type: hmac
            secrets: ["long-enough-secret"]
            signature: {algorithm: md5}
            event: {id: "header:X-Id"}
          Bad Name: {type: nope}
        workers: {lease_seconds: 0, speed: 3}
    """,
    )
    found = problems(path)
    expected = [
        ":1: defaults.tolerance_seconds: must be a whole number >= 0",
        ":3: providers.stripe.secrets: at least one secret is required",
        ":7: providers.acme.signature.header: required",
        ":7: providers.acme.signature.algorithm: must be one of",
        ":8: providers.acme.event.type: required",
        ":9: providers.Bad Name: provider names are lower-case",
        ":9: providers.Bad Name.type: unknown type 'nope'",
        ":10: workers.lease_seconds: must be a number > 0",
        ":10: workers.speed: unknown key",
    ]
    for fragment in expected:
        assert any(fragment in p for p in found), (fragment, found)
    assert all(p.startswith(str(path)) for p in found)


def test_invalid_yaml_points_at_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "providers:\n  stripe: {type: stripe\n  github: [\n")
    (problem,) = problems(path)
    assert problem.startswith(f"{path}:")
    assert "not valid YAML" in problem


def test_hookgate_check_exits_1_and_lists_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOKGATE_DATABASE_URL", f"sqlite:///{tmp_path}/db.sqlite")
    monkeypatch.delenv("HOOKGATE_REDIS_URL", raising=False)
    path = write(
        tmp_path,
        """
        providers:
          stripe: {type: stripe, secrets: ["${NOT_SET_ANYWHERE}"]}
        handlers: [no_such_module_here]
    """,
    )
    assert main(["check", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "NOT_SET_ANYWHERE is not set (provider stripe)" in err
    monkeypatch.setenv("NOT_SET_ANYWHERE", "whsec_now_it_is_set")
    assert main(["check", "--config", str(path)]) == 1
    assert "cannot import no_such_module_here" in capsys.readouterr().err


def test_hookgate_check_passes_on_the_example(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOKGATE_DATABASE_URL", f"sqlite:///{tmp_path}/db.sqlite")
    monkeypatch.delenv("HOOKGATE_REDIS_URL", raising=False)
    assert main(["check", "--config", str(EXAMPLE_CONFIG)]) == 0
    assert "4 providers" in capsys.readouterr().out


def test_the_shipped_example_as_committed_passes_check_with_nothing_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """About the shipped example only: providers.yaml *as committed* (``git show HEAD:``), so that a
    user's edits to their working copy, which the README invites, never fail this test."""
    try:
        shipped = subprocess.run(
            ["git", "show", "HEAD:providers.yaml"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the shipped providers.yaml is checked from the repository's HEAD")
    for name, _ in ENV_REFERENCE.findall(shipped):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOOKGATE_DATABASE_URL", f"sqlite:///{tmp_path}/db.sqlite")
    monkeypatch.delenv("HOOKGATE_REDIS_URL", raising=False)
    assert main(["check", "--config", str(write(tmp_path, shipped))]) == 0, capsys.readouterr().err


def test_api_and_ordering_settings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        defaults: {ordering: {window_ms: 500}}
        providers:
          stripe: {type: stripe, secrets: [whsec_12345678], api: {token: "${STRIPE_API_KEY}"}}
          github: {type: github, secrets: [github-secret], ordering: {window_ms: 0}}
        """,
    )
    config = load_config(path, {"STRIPE_API_KEY": "sk_test_1"})
    stripe, github = config.providers["stripe"], config.providers["github"]
    assert stripe.api is not None
    assert (stripe.api.base_url, stripe.api.token) == ("https://api.stripe.com", "sk_test_1")
    assert (stripe.window_seconds, github.window_seconds, github.api) == (0.5, 0.0, None)


def test_api_and_ordering_problems_name_their_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        providers:
          acme:
            type: hmac
            secrets: [acme-secret]
            signature: {header: X-Sig}
            event: {id: "header:X-Id", type: "body:type"}
            api:
              token: abc
              resource_path: /things
            ordering: {window_ms: -1, jitter: 3}
        """,
    )
    assert problems(path) == [
        f"{path}:10: providers.acme.ordering.jitter: unknown key (known: window_ms)",
        f"{path}:10: providers.acme.ordering.window_ms: must be a whole number >= 0",
        f"{path}:7: providers.acme.api.base_url: required: the provider API's base URL, e.g. https://api.example.com",
        f"{path}:9: providers.acme.api.resource_path: must be a path containing {{resource}}, "
        "e.g. /v1/things/{resource}",
    ]


def test_type_specific_keys_are_checked_with_their_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        providers:
          sg:
            type: sendgrid
            public_key: not-base64!
          wa:
            type: meta
            secrets: [an-app-secret]
          sms:
            type: twilio
            secrets: [an-auth-token]
            public_url: https://hooks.example.com/twilio?x=1
        """,
    )
    found = problems(path)
    assert [line.split(": ")[1] for line in found] == [
        "providers.sg.public_key",
        "providers.wa.verify_token",
        "providers.sms.public_url",
    ]
    assert [line.split(": ")[0].rsplit(":", 1)[1] for line in found] == ["4", "5", "11"]


def test_a_misspelt_key_is_named_with_the_key_it_probably_meant(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        providers:
          stripe:
            tpye: stripe
            secrets: [whsec_12345678]
          gh: {type: githb, secrets: [github-secret]}
          sms: {type: twilio, secrets: [an-auth-token], public_ulr: "https://hooks.example.com/sms"}
          acme:
            type: hmac
            secrets: [acme-secret]
            signature: {header: X-Sig}
            event: {id: "header:X-Id", type: "body:type"}
            api: {base_url: "https://api.acme.example", tokn: abc}
        defaults: {tolerence_seconds: 60, max_body_bytes: 1024}
        workers: {lease_secs: 5}
        """,
    )
    assert problems(path) == [
        f"{path}:13: defaults.tolerence_seconds: unknown key: did you mean 'tolerance_seconds'?",
        f"{path}:3: providers.stripe.tpye: unknown key: did you mean 'type'?",
        f"{path}:2: providers.stripe.type: required: one of the built-in types, e.g. type: stripe",
        f"{path}:5: providers.gh.type: unknown type 'githb': did you mean 'github'? (built in: "
        + ", ".join(sorted(PROVIDER_TYPES))
        + ")",
        f"{path}:6: providers.sms.public_ulr: unknown key for type 'twilio': did you mean 'public_url'?",
        f"{path}:12: providers.acme.api.tokn: unknown key: did you mean 'token'?",
        f"{path}:14: workers.lease_secs: unknown key: did you mean 'lease_seconds'?",
    ]


def test_a_misspelt_section_is_named_with_the_section_it_probably_meant(tmp_path: Path) -> None:
    path = write(tmp_path, "provders:\n  stripe: {type: stripe, secrets: [whsec_12345678]}\n")
    assert problems(path) == [
        f"{path}:1: provders: unknown section: did you mean 'providers'? "
        "(known: defaults, providers, handlers, workers, retention, alerts)",
        f"{path}:1: providers: at least one provider is required",
    ]


def test_an_unknown_key_with_no_near_match_lists_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "providers:\n  stripe: {type: stripe, secrets: [whsec_12345678], colour: blue}\n")
    (problem,) = problems(path)
    assert problem.startswith(f"{path}:2: providers.stripe.colour: unknown key for type 'stripe' (known: ")
    assert "secrets" in problem
