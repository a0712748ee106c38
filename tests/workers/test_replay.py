"""Replay as an operator uses it: ``hookgate events replay`` against real workers and a real store.

Replaying a failed event runs the handlers that have not succeeded; a processed event is replayed
only with ``--force``, which runs every handler again and says so; history is never erased.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from gateway.cli import main
from gateway.models import handler_runs
from tests.conftest import Hookgate


@pytest.fixture
def cli(hookgate: Hookgate, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HOOKGATE_DATABASE_URL", hookgate.database_url)
    monkeypatch.setenv("HOOKGATE_CONFIG", str(hookgate.config_path))

    def run(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(["events", *args])
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    return run


def runs(hookgate: Hookgate, pk: int) -> list[str]:
    with hookgate.engine.connect() as conn:
        return sorted(conn.scalars(select(handler_runs.c.handler).where(handler_runs.c.event_pk == pk)))


def test_replaying_a_failed_event_runs_only_what_did_not_succeed_and_keeps_its_history(hookgate: Hookgate, cli) -> None:  # type: ignore[no-untyped-def]
    hookgate.start_intake()
    hookgate.start_worker()
    assert hookgate.post("acme", *hookgate.signed("acme", "fail.until_fixed", "fix-me")).status_code == 200
    failed = hookgate.wait_status("acme", "fix-me", "failed")
    assert failed.attempts == 3, failed.last_error
    assert "not fixed yet on try 3" in failed.last_error
    (hookgate.dir / "fixed").touch()
    code, out = cli("replay", "fix-me")  # the provider's event id, as `show` takes it
    assert code == 0, out
    assert "fix-me" in out
    row = hookgate.wait_status("acme", "fix-me", "processed")
    assert row.attempts == 4, ("replay must not erase the attempt count", row.last_error)
    assert [line[2] for line in hookgate.effects("sibling")] == ["fix-me"]  # it had succeeded: not run again
    assert [line[2] for line in hookgate.effects()] == ["fix-me"]
    assert runs(hookgate, row.id) == ["tests.support.handlers.acme_handler", "tests.support.handlers.acme_sibling"]


def test_a_processed_event_is_replayed_only_with_force_which_runs_every_handler_again(hookgate: Hookgate, cli) -> None:  # type: ignore[no-untyped-def]
    hookgate.start_intake()
    worker = hookgate.start_worker()
    assert hookgate.post("acme", *hookgate.signed("acme", "fail.once", "done-1")).status_code == 200
    row = hookgate.wait_status("acme", "done-1", "processed")
    assert row.attempts == 2
    code, out = cli("replay", str(row.id))
    assert code == 1
    assert "--force" in out
    assert hookgate.event("acme", "done-1").status == "processed"
    code, out = cli("replay", str(row.id), "--force")
    assert code == 0, out
    assert "every handler" in out
    again = hookgate.wait_status("acme", "done-1", "processed")
    assert again.attempts == 3
    assert sorted(line[2] for line in hookgate.effects("sibling")) == ["done-1", "done-1"]
    assert [line[2] for line in hookgate.effects()] == ["done-1", "done-1"]
    assert "IntegrityError" not in worker.log.read_text()
    code, out = cli("show", "done-1")
    handler_runs_shown = out[out.index("handler runs:") : out.index("attempt history:")]
    assert handler_runs_shown.count("tests.support.handlers.acme_handler") == 2, out  # both rounds are in the history


def test_replay_of_an_unknown_event_or_status_is_an_error(hookgate: Hookgate, cli) -> None:  # type: ignore[no-untyped-def]
    code, out = cli("replay", "no-such-event")
    assert code == 1
    assert "no event no-such-event" in out
    code, out = cli("replay", "--status", "bogus")
    assert code == 1
    assert "bogus" in out


def test_an_event_still_in_flight_is_not_replayed(hookgate: Hookgate, cli) -> None:  # type: ignore[no-untyped-def]
    hookgate.start_intake()
    assert hookgate.post("acme", *hookgate.signed("acme", "thing.updated", "in-flight")).status_code == 200
    before = hookgate.event("acme", "in-flight")
    code, out = cli("replay", "in-flight")
    assert code == 1
    assert "in flight" in out
    after = hookgate.event("acme", "in-flight")
    assert (after.status, after.message_id, after.attempts) == (before.status, before.message_id, before.attempts)
