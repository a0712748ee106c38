"""Replay, as an operator runs it (``hookgate events replay``), of processed, failed and
in-flight events while the workers run: refused where it must be, and never an effect twice."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from gateway.cli import main
from tests.faults.conftest import Faults, assert_nothing_lost_or_duplicated, assert_sweeps_never_failed
from tests.support.servers import wait_for

Cli = Callable[..., tuple[int, str]]


@pytest.fixture
def cli(faults: Faults, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    monkeypatch.setenv("HOOKGATE_DATABASE_URL", faults.hg.database_url)
    monkeypatch.setenv("HOOKGATE_CONFIG", str(faults.hg.config_path))

    def run(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(["events", "replay", *args])
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    return run


def test_replay_of_processed_failed_and_in_flight_events(faults: Faults, cli: Cli) -> None:
    faults.hg.start_intake()
    faults.start_worker(threads=4)
    processed = [f"rp-done-{i}" for i in range(20)]
    failed = [f"rp-fail-{i}" for i in range(6)]
    running = [f"rp-slow-{i}" for i in range(2)]
    behind = "rp-behind"  # queued behind a running event of its resource
    answers = faults.post_many({i: faults.request("fx.replay", i) for i in processed})
    answers |= faults.post_many({i: faults.request("fail.replay", i) for i in failed})
    wait_for(lambda: faults.all_processed(processed), 30, what="the events to be processed")
    wait_for(
        lambda: all(r.status == "failed" for r in faults.rows(failed).values()), 30, what="the failing events to fail"
    )
    answers |= faults.post_many({i: faults.request(faults.slow, i) for i in running})
    wait_for(lambda: all(faults.runs()[i] == 1 for i in running), 30, what="the slow handlers to start")
    answers |= faults.post_many({behind: faults.request("fx.replay", behind, resource=f"res-{running[0]}")})
    assert {a.status for a in answers.values()} == {200}

    def snapshot(ids: list[str]) -> dict[str, tuple[str, int, int]]:
        return {i: (r.status, r.attempts, r.round) for i, r in faults.rows(ids).items()}

    everything = [*processed, *failed, *running, behind]
    effects_before, state_before = faults.effects(), snapshot(everything)

    # Processed, without --force: refused, nothing changes.
    code, out = cli(*processed)
    assert code == 1, out
    assert out.count("--force") == len(processed), out
    # In flight (processing, and queued behind it): refused, nothing changes.
    code, out = cli(*running, behind)
    assert code == 1, out
    assert out.count("in flight") == len(running) + 1, out
    assert snapshot(everything) == state_before
    assert faults.effects() == effects_before

    # Failed: runs only the handler that did not succeed (the session handler did, on try 1).
    (faults.dir / "fixed").touch()
    code, out = cli("--status", "failed")
    assert code == 0, out
    replayed_at = time.monotonic()
    wait_for(lambda: faults.all_processed(failed), 30, what="the replayed failed events to be processed")
    failed_recovered = time.monotonic() - replayed_at
    rows = faults.rows(failed)
    assert {rows[i].attempts for i in failed} == {4}
    assert all(faults.runs("done")[i] == 1 for i in failed)

    # Processed, with --force: a new round, every handler once more.
    code, out = cli("--force", *processed)
    assert code == 0, out
    assert out.count("every handler runs again") == len(processed), out
    forced_at = time.monotonic()
    wait_for(
        lambda: all(r.status == "processed" and r.round == 1 for r in faults.rows(processed).values()),
        30,
        what="the forced replays to be processed",
    )
    forced_recovered = time.monotonic() - forced_at
    assert all(faults.runs()[i] == 2 for i in processed)

    faults.release()
    figures = faults.verdict(
        "replay",
        answers,
        replayed_at,
        extra={
            "refused (processed without --force, in flight)": len(processed) + len(running) + 1,
            "failed replayed, processed after": f"{failed_recovered:.1f} s",
            "forced, processed after": f"{forced_recovered:.1f} s",
        },
    )
    assert_nothing_lost_or_duplicated(faults, figures)
    effects = faults.effects()
    assert all(effects[(i, "ledger", 1)] == 1 for i in processed), "a forced round writes its effect once"
    assert all(faults.runs()[i] == 1 for i in [*running, behind])
    assert_sweeps_never_failed(faults)


def test_a_replayed_failed_event_whose_worker_is_killed_is_tried_again(faults: Faults, cli: Cli) -> None:
    """A replay gets ``max_attempts`` tries of its own: a worker killed during the replayed try
    must not make the event ``failed``."""
    faults.hg.start_intake()
    first = faults.start_worker(threads=2)
    ids = [f"rk-{i}" for i in range(3)]
    answers = faults.post_many({i: faults.request("fail.slow", i) for i in ids})
    wait_for(
        lambda: all(r.status == "failed" for r in faults.rows(ids).values()) and len(faults.rows(ids)) == 3,
        30,
        what="the events to fail",
    )
    (faults.dir / "fixed").touch()
    code, out = cli(*ids)
    assert code == 0, out
    wait_for(lambda: sum(1 for line in faults.lines("start") if line[2] == "4") == 2, 30, what="replayed tries")
    first.kill()
    killed_at = time.monotonic()
    faults.release()
    faults.start_worker(threads=2)
    figures = faults.verdict("replay-then-sigkill", answers, killed_at, deadline=20)
    assert_nothing_lost_or_duplicated(faults, figures)
    assert_sweeps_never_failed(faults)
