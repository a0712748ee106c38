"""Bulk replay jobs (:mod:`gateway.replays`) and the event CLI's filters: the count of a dry run,
batches that queue each event once, cancellation, a killed runner's job adopted by a worker, and
``hookgate events list|replay`` with filters, ``--json``, a progress bar and Ctrl-C."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import insert, select, update

from gateway import replays
from gateway.cli import main
from gateway.eventlog import EventFilter
from gateway.models import events, replay_jobs
from tests.conftest import Hookgate
from tests.support.servers import ROOT, wait_for

CLI = [sys.executable, "-m", "gateway.cli"]
T0 = 1_780_000_000.0  # 2026-05-28T20:26:40Z


def store(engine: Any, status: str, count: int, *, prefix: str | None = None, **values: Any) -> list[int]:
    """``count`` events with this status, received one second apart from ``T0``; their store ids."""
    prefix = prefix or status
    rows = [
        {
            "provider": "acme",
            "event_id": f"{prefix}-{n:05}",
            "event_type": "thing.updated",
            "body": orjson.dumps({"type": values.get("event_type", "thing.updated"), "data": {}}),
            "headers": "{}",
            "received_at": T0 + n,
            "status": status,
            "attempts": 3,
            "updated_at": T0 + n,
            **values,
        }
        for n in range(count)
    ]
    with engine.begin() as conn:
        conn.execute(insert(events), rows)
        query = select(events.c.id).where(events.c.event_id.startswith(f"{prefix}-")).order_by(events.c.id)
        return list(conn.scalars(query))


def statuses(engine: Any) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(conn.scalars(select(events.c.status)))


def job_row(engine: Any, job_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(replay_jobs).where(replay_jobs.c.id == job_id)).one()


def test_a_dry_run_counts_failed_events_and_with_force_the_finished_ones(engine: Any) -> None:
    store(engine, "failed", 5)
    store(engine, "processed", 3)
    store(engine, "superseded", 2)
    for unfinished in ("received", "queued", "processing"):
        store(engine, unfinished, 2)
    store(engine, "failed", 4, prefix="other", provider="other")

    def count(force: bool = False, **where: Any) -> int:
        return replays.count(engine, EventFilter(**where), force=force)

    assert count(provider="acme") == 5
    assert count(provider="acme", force=True) == 10
    assert count() == 9
    assert count(status="processed") == 0
    assert count(status="processed", force=True) == 3
    assert count(status="queued", force=True) == 0  # never an unfinished event
    assert count(received_from=T0 + 1, received_to=T0 + 3) == 4  # failed-00001..2 of both providers
    assert sum(statuses(engine).values()) == 20  # counting changed nothing
    assert statuses(engine)["failed"] == 9


def test_a_job_queues_each_failed_event_once_in_batches_and_ends_done(engine: Any) -> None:
    failed = store(engine, "failed", 1200, last_error="ValueError: boom")
    store(engine, "processed", 50)
    store(engine, "processing", 5)
    job_id, total = replays.start(engine, EventFilter(status="failed"), force=False)
    assert total == 1200
    assert replays.status(engine, job_id) == {
        "id": job_id,
        "status": "running",
        "done": 0,
        "total": 1200,
        "force": False,
        "filters": {"status": "failed"},
    }
    seen: list[tuple[int, int]] = []
    assert (
        replays.run(engine, job_id, progress=lambda done, total: seen.append((done, total)), batch_size=100) == "done"
    )
    assert seen[:12] == [(100 * n, 1200) for n in range(1, 13)]
    assert seen[12:] == [(1200, 1200)]  # the empty batch that finds nothing left
    state = replays.status(engine, job_id)
    assert state is not None
    assert (state["status"], state["done"], state["total"]) == ("done", 1200, 1200)
    assert job_row(engine, job_id).holder is None
    with engine.connect() as conn:
        rows = conn.execute(select(events).where(events.c.id.in_(failed))).all()
    assert {(r.status, r.next_trigger, r.attempts_before_round, r.round, r.message_id) for r in rows} == {
        ("queued", "bulk_replay", 3, 0, None)
    }
    assert statuses(engine) == Counter(queued=1200, processed=50, processing=5)
    # Run again (as an adopting worker would): it is done, nothing more happens.
    assert replays.run(engine, job_id) is None
    assert replays.cancel(engine, job_id) is False


def test_events_that_arrive_or_change_during_a_job_are_not_replayed_by_it(engine: Any) -> None:
    failed = store(engine, "failed", 300)
    job_id, _total = replays.start(engine, EventFilter(status="failed"), force=False)

    def meanwhile(done: int, total: int) -> None:
        if done == 100:  # after the first batch, which takes the newest hundred
            store(engine, "failed", 7, prefix="late")
            with engine.begin() as conn:
                conn.execute(update(events).where(events.c.id == failed[0]).values(status="processing"))

    assert replays.run(engine, job_id, progress=meanwhile, batch_size=100) == "done"
    state = replays.status(engine, job_id)
    assert state is not None
    assert (state["done"], state["total"]) == (299, 300)
    assert statuses(engine) == Counter(queued=299, processing=1, failed=7)


def test_an_event_that_fails_after_the_job_started_is_not_replayed_by_it(engine: Any) -> None:
    """Counted at the start, replayed as counted: an event that was retrying then and fails
    while the job runs is not in it (found in review: done went past total)."""
    store(engine, "failed", 1)
    [retrying] = store(engine, "queued", 1)
    job_id, total = replays.start(engine, EventFilter(provider="acme"), force=False)
    assert total == 1
    with engine.begin() as conn:  # its last try fails, as a worker records it
        conn.execute(update(events).where(events.c.id == retrying).values(status="failed", updated_at=T0 + 10**8))
    assert replays.run(engine, job_id) == "done"
    state = replays.status(engine, job_id)
    assert state is not None
    assert (state["done"], state["total"]) == (1, 1)
    assert statuses(engine) == Counter(queued=1, failed=1)


def test_cancelling_stops_a_job_between_batches_and_keeps_what_it_queued(engine: Any) -> None:
    store(engine, "failed", 1200)
    job_id, _ = replays.start(engine, EventFilter(status="failed"), force=False)
    seen: list[int] = []

    def cancel_after_the_first_batch(done: int, total: int) -> None:
        seen.append(done)
        assert replays.cancel(engine, job_id)

    assert replays.run(engine, job_id, progress=cancel_after_the_first_batch, batch_size=100) == "cancelled"
    assert seen == [100]
    state = replays.status(engine, job_id)
    assert state is not None
    assert (state["status"], state["done"], state["total"]) == ("cancelled", 100, 1200)
    assert statuses(engine) == Counter(queued=100, failed=1100)
    assert replays.run(engine, job_id) is None  # nobody runs a cancelled job
    assert statuses(engine) == Counter(queued=100, failed=1100)


def test_a_job_has_one_runner_at_a_time(engine: Any) -> None:
    store(engine, "failed", 300)
    job_id, _ = replays.start(engine, EventFilter(status="failed"), force=False)
    others: list[str | None] = []

    def another_runner_tries(done: int, total: int) -> None:
        others.append(replays.run(engine, job_id, holder="elsewhere:1"))
        assert replays.adoptable(engine) == []

    assert replays.run(engine, job_id, progress=another_runner_tries, batch_size=100, holder="here:1") == "done"
    assert others == [None, None, None, None]
    assert replays.status(engine, job_id)["done"] == 300  # type: ignore[index]


def test_force_replays_processed_and_superseded_events_in_a_new_round(engine: Any) -> None:
    processed = store(engine, "processed", 30)
    superseded = store(engine, "superseded", 20)
    unfinished = store(engine, "received", 10)

    job_id, total = replays.start(engine, EventFilter(provider="acme", status="processed"), force=False)
    assert total == 0
    assert replays.status(engine, job_id)["status"] == "done"  # type: ignore[index]
    assert statuses(engine) == Counter(processed=30, superseded=20, received=10)

    job_id, total = replays.start(engine, EventFilter(provider="acme"), force=True)
    assert total == 50
    assert replays.run(engine, job_id, batch_size=7) == "done"
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(select(events))}
    assert {(rows[i].status, rows[i].round, rows[i].next_trigger) for i in processed + superseded} == {
        ("queued", 1, "bulk_replay")
    }
    assert {(rows[i].status, rows[i].round) for i in unfinished} == {("received", 0)}


RUNNER = textwrap.dedent(
    """
    import sys, time
    from gateway import replays
    from gateway.database import create_store_engine

    engine = create_store_engine(sys.argv[1])

    def slowly(done, total):
        print(done, flush=True)
        time.sleep(0.2)  # a slow runner, so that it is killed halfway

    replays.run(engine, int(sys.argv[2]), progress=slowly, batch_size=10, lease_seconds=2)
    """
)


def test_a_job_whose_runner_is_killed_is_adopted_by_a_worker_and_finishes(hookgate: Hookgate) -> None:
    store(hookgate.engine, "failed", 300)
    job_id, total = replays.start(hookgate.engine, EventFilter(status="failed"), force=False)
    out = hookgate.dir / "runner.out"
    with out.open("w") as sink:
        runner = subprocess.Popen(
            [sys.executable, "-c", RUNNER, hookgate.database_url, str(job_id)], cwd=ROOT, stdout=sink
        )
    try:
        wait_for(lambda: len(out.read_text().split()) >= 3, 30, what="the runner's third batch")
        hookgate.start_worker()
        assert job_row(hookgate.engine, job_id).holder.endswith(f":{runner.pid}")
        runner.send_signal(signal.SIGKILL)
        runner.wait(timeout=30)
    finally:
        runner.kill()
    killed_at = replays.status(hookgate.engine, job_id)
    assert killed_at is not None
    assert killed_at["status"] == "running"
    assert 0 < killed_at["done"] < total
    done = wait_for(
        lambda: (s := replays.status(hookgate.engine, job_id)) and s["status"] == "done" and s,
        60,
        what="a worker to adopt and finish the job",
    )
    assert done["done"] == done["total"] == 300
    # Every event was queued once: each ran its handler once.
    wait_for(lambda: statuses(hookgate.engine) == Counter(processed=300), 60, what="the events to be processed")
    ran = Counter(line[2] for line in hookgate.effects())
    assert len(ran) == 300
    assert set(ran.values()) == {1}


def test_a_job_nobody_runs_is_run_by_a_worker(hookgate: Hookgate) -> None:
    """As the admin API leaves it: created, not run."""
    store(hookgate.engine, "processed", 40)
    job_id, total = replays.start(hookgate.engine, EventFilter(type="thing.*"), force=True)
    assert total == 40
    hookgate.start_worker()
    wait_for(
        lambda: (s := replays.status(hookgate.engine, job_id)) and s["status"] == "done" and s["done"] == 40,
        60,
        what="a worker to run the job",
    )
    wait_for(lambda: statuses(hookgate.engine) == Counter(processed=40), 60, what="the events to be processed again")
    with hookgate.engine.connect() as conn:
        assert set(conn.scalars(select(events.c.round))) == {1}
    assert Counter(line[2] for line in hookgate.effects()) == Counter({f"processed-{n:05}": 1 for n in range(40)})


# -- the CLI -------------------------------------------------------------------------------


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list_filters_and_json_lines_page_by_cursor(
    engine: Any, database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOOKGATE_DATABASE_URL", database_url)
    store(
        engine,
        "failed",
        5,
        event_type="invoice.paid",
        last_error="ValueError: Card Declined",
        error_group="h:ValueError",
    )
    store(engine, "processed", 3, event_type="invoice.created", resource_id="in_1")

    code, out, err = cli(capsys, "events", "list", "--json", "--status", "failed", "--limit", "3")
    assert code == 0
    first = [orjson.loads(line) for line in out.splitlines()]
    assert [item["event_id"] for item in first] == ["failed-00004", "failed-00003", "failed-00002"]
    assert set(first[0]) == {
        "id",
        "provider",
        "event_id",
        "type",
        "resource_id",
        "status",
        "attempts",
        "received_at",
        "last_error",
    }
    assert first[0]["received_at"] == T0 + 4
    assert first[0]["last_error"] == "ValueError: Card Declined"
    assert err.startswith("next page: --cursor ")
    cursor = err.split()[-1]
    code, out, err = cli(capsys, "events", "list", "--json", "--status", "failed", "--limit", "3", "--cursor", cursor)
    assert [orjson.loads(line)["event_id"] for line in out.splitlines()] == ["failed-00001", "failed-00000"]
    assert err == ""

    def ids(*filters: str) -> list[str]:
        code, out, _ = cli(capsys, "events", "list", "--json", *filters)
        assert code == 0
        return [orjson.loads(line)["event_id"] for line in out.splitlines()]

    assert ids("--type", "invoice.*", "--resource", "in_1") == ["processed-00002", "processed-00001", "processed-00000"]
    assert ids("--type", "invoice.paid", "--error", "card declined") == [f"failed-{n:05}" for n in (4, 3, 2, 1, 0)]
    assert ids("--since", "2026-05-28T20:26:41Z", "--until", str(T0 + 3), "--status", "failed") == [
        "failed-00002",
        "failed-00001",
    ]
    assert ids("--event-id", "failed-00003", "--group", "h:ValueError") == ["failed-00003"]
    assert ids("--provider", "nobody") == []
    # The table stays the default.
    code, out, _ = cli(capsys, "events", "list", "--status", "processed")
    assert out.splitlines()[0].split()[:3] == ["ID", "RECEIVED", "PROVIDER"]
    assert len(out.splitlines()) == 4
    code, out, err = cli(capsys, "events", "list", "--since", "yesterday")
    assert code == 1
    assert "'yesterday' is not a time" in err


def test_replay_with_filters_counts_then_runs_a_job_with_progress(
    engine: Any, database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOOKGATE_DATABASE_URL", database_url)
    store(engine, "failed", 1200)
    store(engine, "failed", 10, prefix="other", provider="other")
    store(engine, "processed", 4)

    code, out, _ = cli(capsys, "events", "replay", "--provider", "acme", "--dry-run")
    assert (code, out) == (0, "would queue 1200 events: handlers that succeeded are not run again\n")
    code, out, _ = cli(capsys, "events", "replay", "--status", "processed", "--force", "--dry-run")
    assert (code, out) == (0, "would queue 4 events: every handler runs again\n")
    assert statuses(engine) == Counter(failed=1210, processed=4)

    code, out, err = cli(capsys, "events", "replay", "--provider", "acme", "--type", "thing.*")
    assert code == 0
    assert out == "replay job 1: queued 1200 of 1200 events: handlers that succeeded are not run again\n"
    # Not a terminal: plain lines, one per tenth done, the last one complete.
    lines = err.splitlines()
    assert lines[0] == f"[{'.' * 30}]   0%  0/1200 events"
    assert lines[-1] == f"[{'#' * 30}] 100%  1200/1200 events"
    assert len(lines) <= 11
    assert statuses(engine) == Counter(queued=1200, failed=10, processed=4)

    code, out, err = cli(capsys, "events", "replay", "--provider", "acme", "--status", "failed")
    assert (code, out) == (0, "no events to replay\n")
    code, out, err = cli(capsys, "events", "replay", "1", "--type", "thing.*")
    assert code == 2
    assert "not both" in err
    code, out, err = cli(capsys, "events", "replay")
    assert code == 2
    assert "filter them" in err


def cli_env(database_url: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("HOOKGATE_")}
    return {**env, "PYTHONPATH": str(ROOT), "HOOKGATE_DATABASE_URL": database_url}


def test_on_a_terminal_the_progress_bar_is_redrawn_in_place(engine: Any, database_url: str, tmp_path: Path) -> None:
    store(engine, "failed", 1200)
    parent, child = pty.openpty()
    process = subprocess.Popen(
        [*CLI, "events", "replay", "--status", "failed"],
        cwd=tmp_path,
        env=cli_env(database_url),
        stdout=subprocess.PIPE,
        stderr=child,
        text=True,
    )
    os.close(child)
    out, _ = process.communicate(timeout=60)
    shown = b""
    while True:
        try:
            chunk = os.read(parent, 4096)
        except OSError:  # EIO: the terminal's other end is closed
            break
        if not chunk:
            break
        shown += chunk
    os.close(parent)
    assert process.returncode == 0, shown
    assert out == "replay job 1: queued 1200 of 1200 events: handlers that succeeded are not run again\n"
    text = shown.decode()
    assert text.startswith(f"\r[{'.' * 30}]   0%  0/1200 events\r")
    assert text.endswith(f"\r[{'#' * 30}] 100%  1200/1200 events\r\n")  # the terminal turns \n into \r\n
    assert text.count("\n") == 1


def test_ctrl_c_cancels_the_job_after_its_current_batch(engine: Any, database_url: str, tmp_path: Path) -> None:
    store(engine, "failed", 30000)
    process = subprocess.Popen(
        [*CLI, "events", "replay", "--status", "failed"],
        cwd=tmp_path,
        env=cli_env(database_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    lines: list[str] = []
    while not lines or "  0%" in lines[-1]:  # wait for the first batches
        line = process.stderr.readline()
        assert line, "the CLI ended before it reported progress"
        lines.append(line)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    state = replays.status(engine, 1)
    assert state is not None
    assert state["status"] == "cancelled"
    assert 0 < state["done"] < state["total"] == 30000
    assert out == f"replay job 1 cancelled: queued {state['done']} of 30000 events; the others are left as they were\n"
    assert "Traceback" not in err
    assert statuses(engine) == Counter(queued=state["done"], failed=30000 - state["done"])
    assert replays.adoptable(engine) == []  # a cancelled job is nobody's to adopt
