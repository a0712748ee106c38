"""``hookgate check`` as a user runs it in a project directory: handler modules found where ``run``
and ``worker`` find them, ``@on`` registrations that can never run, and a store or broker that
does not answer explained with its host and reason (never its password)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from gateway.cli import main
from tests.support.servers import wait_for
from tests.test_cli import free_port
from workers.registry import never_matches

HOOKGATE = str(Path(sys.executable).with_name("hookgate"))
CONFIG = """\
providers:
  github: {type: github, secrets: ["demo-github-secret"]}
  stripe: {type: stripe, secrets: ["whsec_demo_stripe_secret_for_local_tests"]}
  shop: {type: shopify, secrets: ["shpss_test_secret_123"]}
handlers:
  - myhandlers
"""
GOOD_HANDLERS = """\
from workers import Event, on


@on("github", "issues.*")
def triage(event: Event) -> None: ...
"""
#: Line 4 names a provider that is not configured; lines 8, 12 and 16 patterns that never match.
ODD_HANDLERS = """\
from workers import Event, on


@on("githb", "issues.*")
def typo(event: Event) -> None: ...


@on("github", "issues")
def no_action(event: Event) -> None: ...


@on("shop", "orders.*")
def dotted_topic(event: Event) -> None: ...


@on("github", "ping")
def handshake(event: Event) -> None: ...
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's project directory: providers.yaml and ./myhandlers.py, nothing on PYTHONPATH."""
    (tmp_path / "providers.yaml").write_text(CONFIG)
    (tmp_path / "myhandlers.py").write_text(GOOD_HANDLERS)
    return tmp_path


def environment(project: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKGATE_") and k != "PYTHONPATH"}
    return {**env, "HOOKGATE_DATABASE_URL": f"sqlite:///{project}/hookgate.db", **extra}


def check(project: Path) -> subprocess.CompletedProcess[str]:
    """``hookgate check`` run as a user would: the console script, in the project directory."""
    return subprocess.run(
        [HOOKGATE, "check"], cwd=project, env=environment(project), capture_output=True, text=True, timeout=120
    )


def test_check_imports_handler_modules_from_the_working_directory(project: Path) -> None:
    done = check(project)
    assert done.returncode == 0, done.stderr
    assert "1 handler modules" in done.stdout


def test_a_failing_handlers_entry_is_named_with_its_file_and_line(project: Path) -> None:
    (project / "providers.yaml").write_text(CONFIG + "  - broken_hooks\n")
    (project / "broken_hooks.py").write_text("import os\n\nimport fancy_sdk\n")
    done = check(project)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "providers.yaml:7: handlers[1]: cannot import broken_hooks: "
        f"ModuleNotFoundError: No module named 'fancy_sdk' ({project}/broken_hooks.py:3)"
    ]


def test_check_fails_on_a_provider_that_is_not_configured_and_warns_of_patterns_that_never_match(
    project: Path,
) -> None:
    (project / "myhandlers.py").write_text(ODD_HANDLERS)
    done = check(project)
    assert done.returncode == 1
    err = done.stderr.splitlines()
    assert (
        f"{project}/myhandlers.py:4: @on('githb', 'issues.*'): no provider 'githb' is configured "
        "(did you mean 'github'?)"
    ) in err
    (no_action,) = [line for line in err if line.startswith(f"{project}/myhandlers.py:8: warning: ")]
    assert "@on('github', 'issues'): never matches" in no_action
    assert "'issues.*'" in no_action
    assert any(line.startswith(f"{project}/myhandlers.py:12: warning: @on('shop', 'orders.*')") for line in err)
    assert any(line.startswith(f"{project}/myhandlers.py:16: warning: @on('github', 'ping')") for line in err)

    # Warnings alone do not fail the check.
    (project / "myhandlers.py").write_text(ODD_HANDLERS.replace('"githb"', '"github"'))
    done = check(project)
    assert done.returncode == 0, done.stderr
    assert len([line for line in done.stderr.splitlines() if ": warning: " in line]) == 3
    assert "3 warnings" in done.stdout


def test_a_provider_with_no_near_match_is_a_warning(project: Path) -> None:
    """A shared handler module may serve providers this deployment does not configure."""
    (project / "myhandlers.py").write_text(GOOD_HANDLERS + '\n\n@on("hubspot")\ndef crm(event: Event) -> None: ...\n')
    done = check(project)
    assert done.returncode == 0, done.stderr
    assert f"{project}/myhandlers.py:8: warning: @on('hubspot', '*'): no provider 'hubspot' is configured" in (
        done.stderr
    )


def test_the_worker_warns_at_start_about_registrations_that_never_run(project: Path, redis_url: str) -> None:
    """``hookgate worker`` in the project directory imports ./myhandlers.py as check does, and logs
    the same findings as warnings (it starts all the same)."""
    (project / "myhandlers.py").write_text(ODD_HANDLERS)
    log = project / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [HOOKGATE, "worker", "--threads", "1"],
            cwd=project,
            env=environment(project, HOOKGATE_REDIS_URL=redis_url),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: "myhandlers.py:16" in log.read_text(), 60, interval=0.1, what="the worker's warnings")
        text = log.read_text()
        assert "myhandlers.py:4: @on('githb', 'issues.*'): no provider 'githb' is configured" in text
        assert "myhandlers.py:8: @on('github', 'issues'): never matches" in text
        assert worker.poll() is None, text
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)


@pytest.mark.parametrize(
    ("type_name", "pattern", "reason"),
    [
        ("github", "issues.*", None),
        ("github", "push", None),
        ("github", "pull_request", "always carry an action"),
        ("github", "issues/*", "never with '/'"),
        ("stripe", "invoice.paid", None),
        ("stripe", "invoice", "dotted"),
        ("stripe", "invoice/*", "use 'invoice.*'"),
        ("shopify", "orders/*", None),
        ("shopify", "orders.create", "use 'orders/create'"),
        ("standard", "anything", None),
        ("github", "*", None),
    ],
)
def test_patterns_that_never_match(type_name: str, pattern: str, reason: str | None) -> None:
    found = never_matches(type_name, pattern)
    assert found is None if reason is None else reason in (found or ""), found


# -- the store and the broker ------------------------------------------------------------------


@pytest.fixture
def bare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A configuration with no handler modules, and no HOOKGATE_* from the caller's environment."""
    for name in [name for name in os.environ if name.startswith("HOOKGATE_")]:
        monkeypatch.delenv(name)
    path = tmp_path / "providers.yaml"
    path.write_text(CONFIG.replace("  - myhandlers\n", ""))
    return path


def check_err(config: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(["check", "--config", str(config)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    return line


def test_sqlite_that_cannot_be_opened_names_the_file(
    bare: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOOKGATE_DATABASE_URL", f"sqlite:///{tmp_path}/no-such-dir/hookgate.db")
    assert check_err(bare, capsys) == (
        f"HOOKGATE_DATABASE_URL=sqlite:///{tmp_path}/no-such-dir/hookgate.db: the store does not answer: "
        f"cannot open {tmp_path}/no-such-dir/hookgate.db"
    )


@pytest.fixture(scope="module")
def postgres() -> str:
    try:
        psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3").close()
    except psycopg.Error as exc:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 (user postgres, trust) does not answer: {exc}")
    return "127.0.0.1:5432"


def test_a_missing_postgres_database_is_named_and_the_password_is_not(
    postgres: str, bare: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOOKGATE_DATABASE_URL", f"postgresql+psycopg://postgres:s3cret-pw@{postgres}/hg_no_such_db")
    assert check_err(bare, capsys) == (
        f"HOOKGATE_DATABASE_URL=postgresql+psycopg://postgres:***@{postgres}/hg_no_such_db: "
        f'the store does not answer: database "hg_no_such_db" does not exist (at {postgres})'
    )


def test_a_closed_postgres_port_is_named(
    postgres: str, bare: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    monkeypatch.setenv("HOOKGATE_DATABASE_URL", f"postgresql+psycopg://postgres:s3cret-pw@127.0.0.1:{port}/hg_b")
    line = check_err(bare, capsys)
    assert line == (
        f"HOOKGATE_DATABASE_URL=postgresql+psycopg://postgres:***@127.0.0.1:{port}/hg_b: "
        f"the store does not answer: connection refused at 127.0.0.1:{port}"
    )


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("HOOKGATE_REDIS_URL", "redis://:{password}@127.0.0.1:{port}/0"),
        ("HOOKGATE_BROKER_URL", "amqp://hookgate:{password}@127.0.0.1:{port}/hg"),
    ],
)
def test_a_broker_that_does_not_answer_is_named_without_its_password(
    bare: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    url: str,
) -> None:
    port = free_port()
    monkeypatch.setenv("HOOKGATE_DATABASE_URL", f"sqlite:///{tmp_path}/hookgate.db")
    monkeypatch.setenv(variable, url.format(password="s3cret-pw", port=port))
    assert check_err(bare, capsys) == (
        f"{variable}={url.format(password='***', port=port)}: the broker does not answer: "
        f"connection refused at 127.0.0.1:{port}"
    )


def test_a_broker_url_of_another_scheme_is_refused(
    bare: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOOKGATE_BROKER_URL", "http://user:s3cret-pw@broker.example/")
    assert check_err(bare, capsys) == (
        "hookgate: HOOKGATE_BROKER_URL: http scheme: give amqp://… (RabbitMQ) or redis://… (Redis)"
    )


def test_an_intake_writer_other_than_process_or_thread_is_refused(
    bare: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOOKGATE_INTAKE_WRITER", "fork")
    assert check_err(bare, capsys) == "hookgate: HOOKGATE_INTAKE_WRITER='fork': give process or thread"
    monkeypatch.setenv("HOOKGATE_INTAKE_WRITER", " Thread ")
    from gateway.settings import Settings

    assert Settings.from_env().intake_writer == "thread"
