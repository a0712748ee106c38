"""The attempt history and the failure groups, written by real worker processes: one attempt per
try, in the transaction of its outcome, with what triggered it, its errors and where they were
raised, the reconciliation's answer and the worker; none for a try whose lease was lost."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from sqlalchemy import event, func, select
from sqlmodel import SQLModel

from gateway.attempts import attempts_for, failure_groups
from gateway.cli import main
from gateway.eventlog import EventFilter, list_events, replay
from gateway.models import attempts
from gateway.retention import DAY, Pruner
from tests.conftest import Hookgate
from tests.support import handlers
from tests.support.fake_api import Answer, FakeApi
from tests.support.handlers import DeferredChild
from tests.support.servers import WorkerProcess, wait_for
from tests.workers.test_guarantees import create_ledger, store_raw_event

ACME_HANDLER = "tests.support.handlers.acme_handler"
HOST = socket.gethostname()


def raised_at(text: str) -> str:
    """The frame, as an attempt names it, of the line of tests/support/handlers.py holding ``text``."""
    lines = Path(handlers.__file__).read_text().splitlines()
    number = next(n for n, line in enumerate(lines, 1) if text in line)
    return f"handlers.py:{number} in behave"


def history(hookgate: Hookgate, event_id: str) -> list[dict[str, Any]]:
    return attempts_for(hookgate.engine, hookgate.event("acme", event_id).id)


def pids(hookgate: Hookgate, kind: str, event_id: str) -> list[str]:
    return [line[4] for line in hookgate.effects(kind) if line[2] == event_id]


def post(hookgate: Hookgate, event_type: str, event_id: str, data: dict[str, Any] | None = None) -> None:
    assert hookgate.post("acme", *hookgate.signed("acme", event_type, event_id, data)).status_code == 200


def stays(predicate: Any, seconds: float, what: str) -> None:
    """Assert that ``predicate`` holds at every poll for ``seconds`` (an absence cannot be awaited)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate(), what
        time.sleep(0.05)


@contextmanager
def stopped(worker: WorkerProcess) -> Iterator[None]:
    """The worker's processes stopped (SIGSTOP) for the duration of the block."""
    os.killpg(worker.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(worker.process.pid, signal.SIGCONT)


@pytest.fixture
def show(hookgate: Hookgate, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    monkeypatch.setenv("HOOKGATE_DATABASE_URL", hookgate.database_url)
    monkeypatch.setenv("HOOKGATE_CONFIG", str(hookgate.config_path))

    def run(event_id: str) -> str:
        capsys.readouterr()
        assert main(["events", "show", event_id]) == 0
        return capsys.readouterr().out

    return run


def test_a_failed_try_and_the_retry_that_processed_it_are_both_recorded_and_shown(
    hookgate: Hookgate, show: Any
) -> None:
    hookgate.start_intake()
    hookgate.start_worker()
    post(hookgate, "fail.once", "once-1")
    row = hookgate.wait_status("acme", "once-1", "processed")
    first, second = history(hookgate, "once-1")
    worker = f"{HOST}:{pids(hookgate, 'effect', 'once-1')[0]}"
    frame = raised_at('raise ValueError(f"boom on try')
    assert (first["attempt"], first["trigger"], first["outcome"], first["worker"]) == (1, "initial", "retry", worker)
    assert first["errors"] == [
        {"handler": ACME_HANDLER, "type": "ValueError", "message": "boom on try 1", "frame": frame}
    ]
    assert first["error"] == f"{ACME_HANDLER}: ValueError: boom on try 1"
    assert (second["attempt"], second["trigger"], second["outcome"], second["worker"]) == (
        2,
        "retry",
        "processed",
        worker,
    )
    assert (second["errors"], second["error"], second["reconcile_status"]) == ([], None, None)
    assert (
        row.received_at <= first["started_at"] <= first["finished_at"] <= second["started_at"] <= second["finished_at"]
    )
    assert row.error_group is None, "a processed event is in no failure group"

    out = show("once-1")
    timeline = out[out.index("attempt history:") :].splitlines()
    assert timeline[1].split()[:1] + timeline[1].split()[5:8] == ["#1", "initial", "retry", worker]
    assert timeline[2].strip() == f"{ACME_HANDLER} raised ValueError: boom on try 1 at {frame}"
    assert timeline[3].split()[:1] + timeline[3].split()[5:8] == ["#2", "retry", "processed", worker]


def test_a_replay_is_its_own_trigger_and_leaves_the_failure_group(hookgate: Hookgate) -> None:
    hookgate.start_intake()
    hookgate.start_worker()
    post(hookgate, "fail.until_fixed", "fix-1")
    failed = hookgate.wait_status("acme", "fix-1", "failed")
    group = f"{ACME_HANDLER}:ValueError"
    assert failed.error_group == group
    tries = history(hookgate, "fix-1")
    assert [(a["trigger"], a["outcome"]) for a in tries] == [
        ("initial", "retry"),
        ("retry", "retry"),
        ("retry", "failed"),
    ]
    assert [a["errors"][0]["message"] for a in tries] == [f"not fixed yet on try {n}" for n in (1, 2, 3)]
    assert [(g["group"], g["count"]) for g in failure_groups(hookgate.engine)] == [(group, 1)]

    (hookgate.dir / "fixed").touch()
    assert len(replay(hookgate.engine, ["fix-1"]).queued) == 1
    row = hookgate.wait_status("acme", "fix-1", "processed")
    last = history(hookgate, "fix-1")[-1]
    assert (last["attempt"], last["trigger"], last["outcome"], last["errors"]) == (4, "replay", "processed", [])
    assert pids(hookgate, "sibling", "fix-1") == pids(hookgate, "sibling", "fix-1")[:1], "the sibling ran again"
    assert row.error_group is None
    assert failure_groups(hookgate.engine) == []


def test_a_try_whose_lease_was_lost_writes_no_attempt(hookgate: Hookgate) -> None:
    """SIGSTOP past the lease: the sweep re-sends the event (trigger ``sweep``), another worker
    processes it, and the stale worker, resumed, commits nothing, its attempt included."""
    hookgate.start_intake()
    stale = hookgate.start_worker()
    post(hookgate, "slow.lost", "lost-1")
    wait_for(lambda: hookgate.effects("started"), 30, what="the handler to start")
    with stopped(stale):
        hookgate.start_worker()
        wait_for(lambda: len(hookgate.effects("started")) == 2, 30, what="another worker to take the event over")
        (hookgate.dir / "release").touch()
        hookgate.wait_status("acme", "lost-1", "processed")
    wait_for(lambda: len(hookgate.effects("released")) == 2, 30, what="the resumed worker's handler to return")
    taker = pids(hookgate, "started", "lost-1")[1]
    only = [(a["attempt"], a["trigger"], a["outcome"], a["worker"]) for a in history(hookgate, "lost-1")]
    assert only == [(2, "sweep", "processed", f"{HOST}:{taker}")]
    stays(lambda: len(history(hookgate, "lost-1")) == 1, 1.0, "the stale worker wrote an attempt")


def test_a_try_cut_short_by_the_worker_s_stop_is_deferred_not_a_failure(hookgate: Hookgate) -> None:
    hookgate.configure_workers(stop_timeout_seconds=0.5)
    hookgate.start_intake()
    stopping = hookgate.start_worker()
    post(hookgate, "slow.cut", "cut-1")
    wait_for(lambda: hookgate.effects("started"), 30, what="the handler to start")
    stopping.process.send_signal(signal.SIGTERM)
    assert stopping.process.wait(timeout=30) == 0
    (cut,) = history(hookgate, "cut-1")
    assert (cut["trigger"], cut["outcome"]) == ("initial", "deferred")
    assert [(e["handler"], e["type"]) for e in cut["errors"]] == [(ACME_HANDLER, "workers.calls.WorkerStopping")]
    waiting = hookgate.event("acme", "cut-1")
    assert (waiting.status, waiting.next_trigger, waiting.error_group) == ("queued", "retry", None)
    (hookgate.dir / "release").touch()
    hookgate.start_worker()
    hookgate.wait_status("acme", "cut-1", "processed")
    assert [(a["trigger"], a["outcome"]) for a in history(hookgate, "cut-1")] == [
        ("initial", "deferred"),
        ("retry", "processed"),
    ]


def test_an_event_whose_message_the_broker_lost_is_tried_for_the_sweep(hookgate: Hookgate, redis_url: str) -> None:
    hookgate.start_intake()
    post(hookgate, "thing.updated", "flushed-1")
    client = redis.Redis.from_url(redis_url)
    wait_for(lambda: client.llen("hookgate:hookgate") == 1, 10, what="the event enqueued")
    client.flushall()
    client.close()
    hookgate.start_worker()
    hookgate.wait_status("acme", "flushed-1", "processed")
    assert [(a["trigger"], a["outcome"]) for a in history(hookgate, "flushed-1")] == [("sweep", "processed")]


def test_events_failing_alike_with_different_messages_form_one_failure_group(hookgate: Hookgate) -> None:
    hookgate.start_intake()
    hookgate.start_worker()
    for event_id in ("acct-1", "acct-2"):
        post(hookgate, "fail.by_id", event_id)
    post(hookgate, "fail.always", "other-1")
    post(hookgate, "thing.updated", "fine-1", {"id": "fine", "version": 1})
    for event_id in ("acct-1", "acct-2", "other-1"):
        hookgate.wait_status("acme", event_id, "failed")
    hookgate.wait_status("acme", "fine-1", "processed")
    assert {history(hookgate, e)[0]["errors"][0]["message"] for e in ("acct-1", "acct-2")} == {
        "no account for acct-1",
        "no account for acct-2",
    }
    statements: list[tuple[str, Any]] = []

    def capture(*args: Any) -> None:
        statements.append((args[2], args[3]))

    event.listen(hookgate.engine, "before_cursor_execute", capture)
    groups = failure_groups(hookgate.engine)
    event.remove(hookgate.engine, "before_cursor_execute", capture)
    group = f"{ACME_HANDLER}:ValueError"
    assert [(g["type"], g["group"], g["count"]) for g in groups] == [
        ("fail.by_id", group, 2),
        ("fail.always", group, 1),
    ]
    accounts = groups[0]
    assert accounts["example"] in (
        {"provider": "acme", "event_id": "acct-1"},
        {"provider": "acme", "event_id": "acct-2"},
    )
    assert f"no account for {accounts['example']['event_id']}" in accounts["last_error"]
    assert accounts["first_seen"] <= accounts["last_seen"]
    # "Replay this group" is a bulk replay over this filter.
    where = EventFilter(provider="acme", type="fail.by_id", group=group)
    assert sorted(row.event_id for row in list_events(hookgate.engine, where).rows) == ["acct-1", "acct-2"]
    if hookgate.engine.dialect.name == "sqlite":
        ((statement, parameters),) = statements
        with hookgate.engine.connect() as conn:
            steps = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            plan = " / ".join(str(step[3]) for step in steps)
        assert "USING INDEX ix_hookgate_events_error_group" in plan, plan


def test_failures_before_and_after_the_handlers_are_grouped_by_their_stage(hookgate: Hookgate) -> None:
    """A body that cannot be decoded, and an outcome whose commit the database refuses."""
    create_ledger(hookgate)
    SQLModel.metadata.create_all(hookgate.engine, tables=[DeferredChild.__table__])  # type: ignore[list-item]
    hookgate.start_intake()
    hookgate.start_worker()
    store_raw_event(hookgate, "acme", "undecodable-1", b"{not json", None)
    post(hookgate, "orphan.write", "orphan-1")
    undecodable = hookgate.wait_status("acme", "undecodable-1", "failed")
    (only,) = history(hookgate, "undecodable-1")
    assert (only["outcome"], only["errors"][0]["handler"]) == ("failed", "decode")
    assert undecodable.error_group == f"decode:{only['errors'][0]['type'].rsplit('.', 1)[-1]}"
    orphan = hookgate.wait_status("acme", "orphan-1", "failed")
    tries = history(hookgate, "orphan-1")
    assert [a["outcome"] for a in tries] == ["retry", "retry", "failed"]
    assert {(e["handler"], e["type"]) for a in tries for e in a["errors"]} == {
        ("commit", "sqlalchemy.exc.IntegrityError")
    }
    assert orphan.error_group == "commit:IntegrityError"


def test_the_reconciliation_s_answer_is_recorded_with_each_try(hookgate: Hookgate, fake_api: FakeApi) -> None:
    fake_api.states["/v1/things/flaky"] = {"id": "flaky", "version": 1}
    fake_api.script("/v1/things/flaky", Answer(503, {"error": "busy"}))
    fake_api.script("/v1/things/locked", Answer(403, {"error": "forbidden"}))
    api = {"base_url": fake_api.url, "token": "api-token-123", "resource_path": "/v1/things/{resource}"}
    hookgate.configure_provider("acme", api=api)
    hookgate.start_intake()
    hookgate.start_worker()
    post(hookgate, "thing.updated", "flaky-1", {"id": "flaky", "version": 1})
    post(hookgate, "thing.updated", "locked-1", {"id": "locked", "version": 1})
    hookgate.wait_status("acme", "flaky-1", "processed")
    busy, fetched = history(hookgate, "flaky-1")
    assert (busy["outcome"], busy["reconcile_status"]) == ("retry", 503)
    assert "answered 503" in busy["reconcile_error"]
    assert [(e["handler"], e["type"]) for e in busy["errors"]] == [("reconcile", "workers.reconcile.ReconcileError")]
    assert busy["errors"][0]["frame"].startswith("reconcile.py:")
    assert (fetched["outcome"], fetched["reconcile_status"], fetched["reconcile_error"]) == ("processed", 200, None)
    locked = hookgate.wait_status("acme", "locked-1", "failed")
    (refused,) = history(hookgate, "locked-1")
    assert (refused["outcome"], refused["reconcile_status"]) == ("failed", 403)
    assert locked.error_group == "reconcile:ReconcileError"


def test_retention_removes_an_event_s_attempts_with_it(hookgate: Hookgate) -> None:
    """acme's events become tombstones (an update: the foreign key's cascade does not apply),
    github's are deleted."""
    data = yaml.safe_load(hookgate.config_path.read_text())
    data["retention"] = {"events_days": 7, "dedupe_days": 30}
    hookgate.config_path.write_text(yaml.safe_dump(data))
    hookgate.configure_provider("github", retention={"events_days": 7, "dedupe_days": 7})
    hookgate.start_intake()
    hookgate.start_worker()
    post(hookgate, "fail.once", "old-1")
    post(hookgate, "fail.always", "old-2")
    assert hookgate.post("github", *hookgate.signed("github", "issues.opened", "old-3")).status_code == 200
    hookgate.wait_status("acme", "old-1", "processed")
    hookgate.wait_status("acme", "old-2", "failed")
    hookgate.wait_status("github", "old-3", "processed")

    def stored_attempts() -> int:
        with hookgate.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(attempts)).scalar_one())

    assert stored_attempts() == 2 + 3 + 1
    now = time.time()
    report = Pruner(hookgate.engine, hookgate.config, clock=lambda: now + 8 * DAY).run()
    assert (report.tombstoned, report.deleted) == (2, 1)
    assert stored_attempts() == 0
    assert hookgate.event("acme", "old-2").error_group is None, "a pruned event stays in a failure group"
    assert failure_groups(hookgate.engine) == []


def test_an_event_the_sweep_gives_up_on_has_its_last_attempt_recorded(hookgate: Hookgate) -> None:
    """Its worker stopped on every try (killed, stalled): the sweep marks it ``failed``, and the
    attempt row of that outcome is the sweep's, so the event page and the ``failures`` alerts
    see it (found in review: there was none)."""
    from sqlalchemy import update

    from gateway.models import events
    from gateway.queue import EventQueue, create_broker
    from tests.support.rows import insert_waiting
    from workers.recovery import GIVEN_UP_GROUP, RecoverySweep

    settings = hookgate.config.workers
    pk = insert_waiting(hookgate.engine, "crashed", "tok", time.time(), attempts=settings.max_attempts)
    with hookgate.engine.begin() as conn:
        conn.execute(update(events).where(events.c.id == pk).values(status="processing", lease_expires_at=0.0))
    RecoverySweep(hookgate.engine, EventQueue(create_broker(hookgate.broker_url)), settings).run_once()
    [row] = attempts_for(hookgate.engine, pk)
    assert (row["attempt"], row["outcome"], row["worker"]) == (
        settings.max_attempts,
        "failed",
        "unknown: its lease expired",
    )
    assert row["errors"][0]["type"] == "LeaseExpired"
    assert "LeaseExpired" in row["error"]
    assert [g["group"] for g in failure_groups(hookgate.engine)] == [GIVEN_UP_GROUP]
