"""Retention: finished events go after ``events_days``, their ids answer ``duplicate`` until
``dedupe_days``, unfinished events stay; the workers prune under a lease, ``hookgate prune`` on
demand. The clock is moved forward rather than waited for."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select, update

from gateway.cli import main
from gateway.config import Retention, load_config
from gateway.errors import ConfigError
from gateway.eventlog import find_event, list_events
from gateway.models import PROCESSING, PRUNED, events, handler_runs
from gateway.retention import DAY, Pruner
from tests.conftest import Hookgate
from tests.support.rows import insert_waiting
from tests.support.servers import wait_for
from workers.leases import release_named_lease, take_named_lease


def configure_retention(hookgate: Hookgate, **retention: Any) -> None:
    data = yaml.safe_load(hookgate.config_path.read_text())
    data["retention"] = retention
    hookgate.config_path.write_text(yaml.safe_dump(data))
    hookgate.config = load_config(hookgate.config_path)


def processed(hookgate: Hookgate, *event_ids: str) -> None:
    for event_id in event_ids:
        body, headers = hookgate.signed("github", "issues.opened", event_id)
        assert hookgate.post("github", body, headers).json()["status"] == "accepted"
    for event_id in event_ids:
        hookgate.wait_status("github", event_id, "processed")


def unfinished_rows(hookgate: Hookgate, now: float) -> list[int]:
    """Old events that never finished: a waiting one, a queued one and one being processed."""
    ids = [
        insert_waiting(hookgate.engine, "old-received", None, now, due=False),
        insert_waiting(hookgate.engine, "old-queued", "tok-q", now, due=False),
        insert_waiting(hookgate.engine, "old-processing", "tok-p", now, due=False),
    ]
    with hookgate.engine.begin() as conn:
        conn.execute(update(events).where(events.c.id == ids[2]).values(status=PROCESSING, lease_expires_at=now + 3600))
        conn.execute(update(events).where(events.c.id.in_(ids)).values(received_at=now - 365 * DAY))
    return ids


def effects_of(hookgate: Hookgate, event_id: str) -> int:
    return sum(1 for effect in hookgate.effects() if effect[2] == event_id)


def test_finished_events_go_their_ids_stay_duplicate_until_dedupe_days(hookgate: Hookgate) -> None:
    configure_retention(hookgate, events_days=7, dedupe_days=30)
    hookgate.start_intake()
    hookgate.start_worker()
    processed(hookgate, "ret-1", "ret-2")
    now = time.time()
    unfinished = unfinished_rows(hookgate, now)
    with hookgate.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(handler_runs)).scalar_one() > 0

    # Six days on, nothing is old enough.
    assert Pruner(hookgate.engine, hookgate.config, clock=lambda: now + 6 * DAY).run().events == 0

    # Eight days on, the two processed events go; their ids stay.
    report = Pruner(hookgate.engine, hookgate.config, clock=lambda: now + 8 * DAY).run()
    assert (report.deleted, report.tombstoned, report.forgotten) == (0, 2, 0)
    listed = {row.event_id for row in list_events(hookgate.engine).rows}
    assert listed == {"old-received", "old-queued", "old-processing"}
    assert find_event(hookgate.engine, "ret-1") is None
    with hookgate.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(handler_runs)).scalar_one() == 0
        gone = conn.execute(select(events.c.status, events.c.body).where(events.c.event_id == "ret-1")).one()
        assert tuple(gone) == (PRUNED, b"")
        assert sorted(conn.execute(select(events.c.id).where(events.c.id.in_(unfinished))).scalars()) == unfinished

    # A retry of a pruned event inside dedupe_days is a duplicate, and its handlers do not run again.
    body, headers = hookgate.signed("github", "issues.opened", "ret-1")
    assert hookgate.post("github", body, headers).json()["status"] == "duplicate"
    processed(hookgate, "ret-marker")  # the worker is alive and has drained what it was sent
    assert effects_of(hookgate, "ret-1") == 1

    # Past dedupe_days the ids are forgotten: the same event is then new.
    report = Pruner(hookgate.engine, hookgate.config, clock=lambda: now + 31 * DAY).run()
    assert (report.deleted, report.tombstoned, report.forgotten) == (1, 0, 2)  # ret-marker goes entirely
    assert hookgate.post("github", body, headers).json()["status"] == "accepted"
    hookgate.wait_status("github", "ret-1", "processed")
    assert effects_of(hookgate, "ret-1") == 2
    with hookgate.engine.connect() as conn:
        assert sorted(conn.execute(select(events.c.id).where(events.c.id.in_(unfinished))).scalars()) == unfinished


def test_a_provider_s_own_retention_overrides_the_top_level_one(hookgate: Hookgate) -> None:
    configure_retention(hookgate, events_days=30, dedupe_days=30)
    hookgate.configure_provider("acme", retention={"events_days": 1, "dedupe_days": 3})
    now = time.time()
    for event_id, provider in (("a-1", "acme"), ("g-1", "github")):
        pk = insert_waiting(hookgate.engine, event_id, "tok", now, due=False)
        with hookgate.engine.begin() as conn:
            conn.execute(update(events).where(events.c.id == pk).values(provider=provider, status="processed"))
    report = Pruner(hookgate.engine, hookgate.config, clock=lambda: now + 4 * DAY).run()
    assert (report.deleted, report.by_provider) == (1, {"acme": 1})
    assert {row.event_id for row in list_events(hookgate.engine).rows} == {"g-1"}


def test_prune_command_reports_and_dry_run_changes_nothing(
    hookgate: Hookgate, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_retention(hookgate, events_days=7, dedupe_days=7)
    hookgate.start_intake()
    hookgate.start_worker()
    processed(hookgate, "cli-1", "cli-2", "cli-3")
    unfinished_rows(hookgate, time.time())
    with hookgate.engine.begin() as conn:  # two of them are eight days old
        conn.execute(
            update(events).where(events.c.event_id.in_(["cli-1", "cli-2"])).values(received_at=time.time() - 8 * DAY)
        )
    monkeypatch.setenv("HOOKGATE_DATABASE_URL", hookgate.database_url)
    monkeypatch.setenv("HOOKGATE_CONFIG", str(hookgate.config_path))
    capsys.readouterr()
    assert main(["prune", "--dry-run"]) == 0
    assert capsys.readouterr().out.strip() == "would prune 2 events"
    assert len(list_events(hookgate.engine).rows) == 6
    assert main(["prune"]) == 0
    assert capsys.readouterr().out.startswith("pruned 2 events in ")
    assert {row.event_id for row in list_events(hookgate.engine).rows} == {
        "cli-3",
        "old-received",
        "old-queued",
        "old-processing",
    }
    assert main(["prune"]) == 0
    assert capsys.readouterr().out.strip() == "pruned 0 events"


def test_workers_prune_periodically(hookgate: Hookgate) -> None:
    configure_retention(hookgate, events_days=0.5 / DAY, dedupe_days=3)  # half a second
    hookgate.configure_workers(prune_interval_seconds=0.2)
    hookgate.start_intake()
    worker = hookgate.start_worker()
    processed(hookgate, "periodic-1")
    wait_for(lambda: hookgate.event("github", "periodic-1").status == PRUNED, 30, what="the worker to prune")
    assert find_event(hookgate.engine, "periodic-1") is None
    worker.stop()
    assert "retention: pruned 1 events" in worker.log.read_text()


def test_one_holder_of_the_prune_lease_at_a_time(engine: Any) -> None:
    assert take_named_lease(engine, "prune", "a", 60)
    assert not take_named_lease(engine, "prune", "b", 60)
    assert take_named_lease(engine, "prune", "a", 60)  # the holder extends it
    release_named_lease(engine, "prune", "a")
    assert take_named_lease(engine, "prune", "b", 0.01)
    wait_for(lambda: take_named_lease(engine, "prune", "c", 60), 10, what="the lease to expire")


@pytest.mark.parametrize(
    ("retention", "problem"),
    [
        ({"dedupe_days": 2}, "retention.dedupe_days: must be at least 3"),
        ({"events_days": 0}, "retention.events_days: must be a number of days > 0"),
        ({"events_day": 3}, "did you mean 'events_days'"),
        ("30", "retention: must be a mapping"),
    ],
)
def test_retention_settings_are_checked(tmp_path: Path, retention: Any, problem: str) -> None:
    path = tmp_path / "providers.yaml"
    for where in ("top", "provider"):
        data: dict[str, Any] = {"providers": {"github": {"type": "github", "secrets": ["a-long-enough-secret"]}}}
        if where == "top":
            data["retention"] = retention
        else:
            data["providers"]["github"]["retention"] = retention
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(ConfigError) as raised:
            load_config(path)
        assert any(problem in line for line in raised.value.problems), raised.value.problems


def test_a_provider_inherits_what_its_retention_does_not_say(tmp_path: Path) -> None:
    path = tmp_path / "providers.yaml"
    data = {
        "retention": {"events_days": 10, "dedupe_days": 20},
        "providers": {
            "github": {"type": "github", "secrets": ["a-long-enough-secret"], "retention": {"events_days": 2}}
        },
    }
    path.write_text(yaml.safe_dump(data))
    config = load_config(path)
    assert config.retention == Retention(10, 20)
    assert config.retention_by_provider == {"github": Retention(2, 20)}
