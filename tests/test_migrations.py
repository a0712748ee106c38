"""Schema migrations: a store that release 0.1 made upgrades to head with every event kept and
processable; ``serve`` and ``worker`` refuse a schema that is behind; ``--sql`` is only SQL."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, select, text

from gateway import models, schema
from gateway.database import create_store_engine
from gateway.models import events, handler_runs
from tests.conftest import Hookgate, write_config
from tests.support.schema import apply_sql, create_release_0_1, drop_everything, snapshot
from tests.support.servers import ROOT


def hookgate_cli(*args: str, database_url: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOOKGATE_DATABASE_URL": database_url, "PYTHONPATH": str(ROOT)}
    if config is not None:
        env["HOOKGATE_CONFIG"] = str(config)
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


#: Events as release 0.1 wrote them (its columns only), in the states a live store holds.
OLD_EVENTS = (
    ("github", "old-processed", "processed"),
    ("github", "old-queued", "queued"),
    ("github", "old-failed", "failed"),
)


def seed_release_0_1(engine: Engine, hookgate: Hookgate) -> None:
    with engine.begin() as conn:
        for pk, (provider, event_id, status) in enumerate(OLD_EVENTS, start=1):
            body, headers = hookgate.signed(provider, "issues.opened", event_id)
            conn.execute(
                text(
                    "INSERT INTO hookgate_events (id, provider, event_id, event_type, body, headers, received_at,"
                    " status, attempts, message_id, sweep_after, updated_at) VALUES (:id, :provider, :event_id,"
                    " 'issues.opened', :body, :headers, :now, :status, :attempts, :token, :due, :now)"
                ),
                {
                    "id": pk,
                    "provider": provider,
                    "event_id": event_id,
                    "body": body,
                    "headers": orjson.dumps(headers).decode(),
                    "now": time.time() - 60,
                    "status": status,
                    "attempts": 0 if status == "queued" else 1,
                    "token": f"token-{pk}",
                    "due": 0.0 if status == "queued" else None,
                },
            )
        conn.execute(text("INSERT INTO hookgate_handler_runs (event_pk, handler, finished_at) VALUES (1, 'h', 1.0)"))
        if conn.dialect.name == "postgresql":  # ids were given: move the sequence past them, as 0.1's inserts did
            conn.execute(text("SELECT setval('hookgate_events_id_seq', 3)"))


@pytest.fixture
def old_store(database_url: str, tmp_path: Path) -> Iterator[Engine]:
    """A store exactly as release 0.1 left it: its tables, its rows, no version table."""
    engine = create_store_engine(database_url)
    drop_everything(engine)
    create_release_0_1(engine)
    seed_release_0_1(engine, Hookgate(tmp_path, database_url, "", engine))
    yield engine
    engine.dispose()


def stored_rows(engine: Engine) -> dict[str, Any]:
    """What 0.1 stored, by its own columns."""
    with engine.connect() as conn:
        rows = conn.execute(select(events.c.id, events.c.event_id, events.c.status, events.c.body, events.c.attempts))
        runs = conn.execute(select(handler_runs.c.event_pk, handler_runs.c.handler, handler_runs.c.finished_at))
        return {"events": sorted(map(tuple, rows)), "handler_runs": sorted(map(tuple, runs))}


def fresh_snapshot(engine: Engine) -> dict[str, Any]:
    drop_everything(engine)
    assert schema.prepare_store(engine, upgrade=False) == schema.Migration(None, schema.HEAD)
    return snapshot(engine)


def test_head_is_the_newest_revision_and_the_chain_is_linear() -> None:
    script = ScriptDirectory.from_config(schema._alembic_config())
    assert script.get_heads() == [schema.HEAD]
    assert schema._revisions()[0] == schema.RELEASE_0_1
    assert len(schema._revisions()) == len(set(schema._revisions()))


def test_a_release_0_1_store_upgrades_to_the_schema_a_new_store_gets(old_store: Engine) -> None:
    url = str(old_store.url.render_as_string(hide_password=False))
    kept = stored_rows(old_store)
    done = hookgate_cli("migrate", database_url=url)
    assert done.returncode == 0, done.stderr
    assert f"from schema revision 0001 to {schema.HEAD}" in done.stdout
    assert stored_rows(old_store) == kept
    with old_store.connect() as conn:
        assert conn.execute(select(events.c.round, events.c.attempts_before_round)).all() == [(0, 0)] * 3
        assert conn.execute(select(handler_runs.c.round)).scalars().all() == [0]
        assert conn.execute(select(schema.version_table.c.version_num)).scalars().all() == [schema.HEAD]
    upgraded = snapshot(old_store)

    again = hookgate_cli("migrate", database_url=url)
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout
    assert snapshot(old_store) == upgraded

    # What a developer runs before adding a revision: the models and the upgraded store agree.
    check = subprocess.run(
        [sys.executable, "-m", "alembic", "check"],
        cwd=ROOT,
        env={**os.environ, "HOOKGATE_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "No new upgrade operations detected" in check.stdout + check.stderr, check.stdout + check.stderr

    assert upgraded == fresh_snapshot(old_store)


@pytest.mark.parametrize("command", [["serve"], ["worker"], ["events", "list"]])
def test_serve_worker_and_events_refuse_a_store_that_is_behind(
    old_store: Engine, tmp_path: Path, command: list[str]
) -> None:
    url = str(old_store.url.render_as_string(hide_password=False))
    before = snapshot(old_store)
    done = hookgate_cli(*command, database_url=url, config=write_config(tmp_path))
    assert done.returncode == 1
    assert "schema revision 0001 (release 0.1)" in done.stderr
    assert "run `hookgate migrate`" in done.stderr
    assert "Traceback" not in done.stderr
    assert snapshot(old_store) == before  # nothing created, not even the version table


def test_upgraded_events_are_processed_and_deduplicated(old_store: Engine, request: pytest.FixtureRequest) -> None:
    url = str(old_store.url.render_as_string(hide_password=False))
    assert hookgate_cli("migrate", database_url=url).returncode == 0
    hookgate: Hookgate = request.getfixturevalue("hookgate")
    hookgate.start_intake()
    replayed = hookgate_cli("events", "replay", "old-failed", database_url=url)
    assert replayed.returncode == 0, replayed.stderr
    hookgate.start_worker()
    # The queued one is found by the recovery sweep (its message is long gone), the failed one replayed.
    for event_id in ("old-queued", "old-failed"):
        hookgate.wait_status("github", event_id, "processed")
    body, headers = hookgate.signed("github", "issues.opened", "old-processed")
    assert hookgate.post("github", body, headers).json()["status"] == "duplicate"
    fresh = hookgate.signed("github", "issues.opened", "new-after-upgrade")
    assert hookgate.post("github", *fresh).json()["status"] == "accepted"
    hookgate.wait_status("github", "new-after-upgrade", "processed")
    assert sorted(e[2] for e in hookgate.effects()) == ["new-after-upgrade", "old-failed", "old-queued"]


def test_an_empty_store_is_created_at_head_by_migrate(database_url: str) -> None:
    engine = create_store_engine(database_url)
    drop_everything(engine)
    done = hookgate_cli("migrate", database_url=database_url)
    assert done.returncode == 0, done.stderr
    assert "created the store at" in done.stdout
    with engine.connect() as conn:
        assert schema.stored_revision(conn) == schema.HEAD
    engine.dispose()


@pytest.mark.parametrize("start", [None, "0001"])
def test_migrate_sql_prints_only_sql_that_builds_the_same_schema(database_url: str, start: str | None) -> None:
    engine = create_store_engine(database_url)
    drop_everything(engine)
    if start:
        create_release_0_1(engine)
    before = snapshot(engine)
    args = ["migrate", "--sql"] + (["--from", start] if start else [])
    done = hookgate_cli(*args, database_url=database_url)
    assert done.returncode == 0, done.stderr
    assert snapshot(engine) == before  # no database touched
    lines = [line for line in done.stdout.splitlines() if line.strip() and not line.startswith("--")]
    assert lines
    assert all(not line.startswith(("INFO", "WARNING", "20")) for line in lines)
    assert "alembic_version" in done.stdout
    apply_sql(engine, done.stdout)
    applied = snapshot(engine)
    with engine.connect() as conn:
        assert schema.stored_revision(conn) == schema.HEAD
    assert applied == fresh_snapshot(engine)
    engine.dispose()


def test_two_migrates_started_at_once_both_succeed(old_store: Engine) -> None:
    url = str(old_store.url.render_as_string(hide_password=False))
    env = {**os.environ, "HOOKGATE_DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "migrate"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=120), *p.communicate()) for p in started]
    assert [code for code, _, _ in results] == [0, 0], results
    outs = sorted(out for _, out, _ in results)
    assert "nothing to do" in outs[0]
    assert "from schema revision 0001" in outs[1]
    with old_store.connect() as conn:
        assert conn.execute(select(schema.version_table.c.version_num)).scalars().all() == [schema.HEAD]
    assert stored_rows(old_store)["events"][0][1] == "old-processed"


def test_a_worker_started_while_serve_creates_the_store_finds_it_current(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``serve`` and ``worker`` started together on a new store: ``serve`` creates it, and the
    worker's look at it (several reads) may straddle that commit: no version table yet, then the
    events table there. It took the store for revision 0003 and exited (seen in
    bench/side_by_side.py). Here the creating commit lands between its first read and the rest."""
    engine = create_store_engine(database_url)
    drop_everything(engine)
    created, commit_now, committed = threading.Event(), threading.Event(), threading.Event()
    straddled = threading.Event()

    def create() -> None:
        try:
            with schema._schema_lock(engine) as conn:
                models.SQLModel.metadata.create_all(conn, tables=list(models.TABLES))
                schema._stamp(conn, schema.HEAD)
                created.set()
                commit_now.wait(30)
        finally:
            committed.set()

    real_inspect = schema.inspect
    starting = threading.local()

    class Straddling:
        """The starter's inspector: the creator commits right after its first read."""

        def __init__(self, conn: Any) -> None:
            self.inspector = real_inspect(conn)

        def has_table(self, name: str) -> bool:
            found = self.inspector.has_table(name)
            if getattr(starting, "first", False):
                starting.first = False
                commit_now.set()
                assert committed.wait(30)
                straddled.set()
            return found

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inspector, name)

    def inspect(conn: Any) -> Any:
        return Straddling(conn) if hasattr(starting, "first") else real_inspect(conn)

    monkeypatch.setattr(schema, "inspect", inspect)
    outcome: dict[str, Any] = {}

    def start() -> None:
        starting.first = True
        starter = create_store_engine(database_url)
        try:
            outcome["done"] = schema.prepare_store(starter, upgrade=False)
        except Exception as exc:
            outcome["error"] = exc
        finally:
            starter.dispose()

    creator = threading.Thread(target=create)
    starter = threading.Thread(target=start)
    try:
        creator.start()
        assert created.wait(30)
        starter.start()
        starter.join(60)
        assert not starter.is_alive()
    finally:
        commit_now.set()
        creator.join(30)
        engine.dispose()
    assert straddled.is_set()  # the creating commit fell between the starter's reads
    assert "error" not in outcome, outcome
    assert outcome["done"].after == schema.HEAD


def test_a_store_from_a_newer_release_is_refused_even_by_migrate(database_url: str) -> None:
    engine = create_store_engine(database_url)
    drop_everything(engine)
    schema.prepare_store(engine, upgrade=True)
    with engine.begin() as conn:
        conn.execute(schema.version_table.update().values(version_num="9999"))
    done = hookgate_cli("migrate", database_url=database_url)
    assert done.returncode == 1
    assert "revision 9999, which this release does not know" in done.stderr
    engine.dispose()


def test_run_upgrades_its_sqlite_store_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_cli import QuickStart

    engine = create_store_engine(f"sqlite:///{tmp_path}/hookgate.db")
    create_release_0_1(engine)
    quick = QuickStart(tmp_path, "run", monkeypatch)  # returns once it answers /healthz
    try:
        with engine.connect() as conn:
            assert schema.stored_revision(conn) == schema.HEAD
        quick.send("github", "issues.opened", "after-upgrade")
    finally:
        quick.stop()
    assert f"store upgraded from schema revision 0001 to {schema.HEAD}" in (tmp_path / "hookgate.log").read_text()
    engine.dispose()
