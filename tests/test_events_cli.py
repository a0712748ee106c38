"""``hookgate events list|show|replay``: what an event waits for, a missing store, and a closed pipe."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, inspect
from sqlalchemy.engine import make_url

from gateway.cli import main
from gateway.database import create_store_engine
from gateway.models import PROCESSED, events
from tests.conftest import Hookgate
from tests.support.servers import ROOT, wait_for

CLI = [sys.executable, "-m", "gateway.cli"]


def when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def run_cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no Hookgate settings but those given."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("HOOKGATE_")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def test_list_and_show_say_when_a_retry_runs_and_which_event_one_waits_behind(
    hookgate: Hookgate, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    hookgate.configure_workers(min_backoff_seconds=300, max_backoff_seconds=300)
    hookgate.start_intake()
    hookgate.start_worker()
    for event_id, event_type, version in (("head", "fail.once", 1), ("behind", "thing.updated", 2)):
        body, headers = hookgate.signed("acme", event_type, event_id, {"id": "obj-r", "version": version})
        assert hookgate.post("acme", body, headers).status_code == 200
    head = wait_for(
        lambda: (row := hookgate.event("acme", "head")).attempts == 1 and row.status == "queued" and row,
        30,
        what="the head's retry to be scheduled",
    )
    behind = hookgate.event("acme", "behind")
    assert behind.status in ("received", "queued")
    retry = f"retry 2 at {when(head.sweep_after)}"
    waiting = f"waiting behind event {head.id}"

    monkeypatch.setenv("HOOKGATE_DATABASE_URL", hookgate.database_url)
    assert main(["events", "list"]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines}
    assert retry in rows[str(head.id)]
    assert waiting in rows[str(behind.id)]
    assert "NEXT" in header
    # A fixed-width table: every column starts where its heading does.
    for line in lines:
        assert line.index("acme") == header.index("PROVIDER")
        assert line[header.index("NEXT") - 2 : header.index("NEXT")] == "  "
        assert line[header.index("NEXT")] != " "
    assert main(["events", "show", str(head.id)]) == 0
    assert f"next:      {retry}" in capsys.readouterr().out.splitlines()
    assert main(["events", "show", "behind"]) == 0
    assert f"next:      {waiting}" in capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("command", [["list"], ["show", "1"], ["replay", "1"]])
def test_outside_a_project_the_event_commands_say_there_is_no_store_and_create_nothing(
    tmp_path: Path, command: list[str]
) -> None:
    done = run_cli("events", *command, cwd=tmp_path, env=cli_env())
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith(f"hookgate: no store at {tmp_path / 'hookgate.db'}; set HOOKGATE_DATABASE_URL")
    assert len(done.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_store_without_hookgate_tables_is_named_without_its_password(tmp_path: Path, database_url: str) -> None:
    """``database_url`` is a fresh store: a SQLite file not created yet, or a PostgreSQL database
    whose tables were dropped."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        Path(url.database or "").touch()  # an empty file: a database without tables
        shown = url.database
    else:
        url = url.set(password="pw-never-shown")  # trust auth ignores it
        shown = url.render_as_string(hide_password=True)
    database_url = url.render_as_string(hide_password=False)
    for command in (["list"], ["show", "1"], ["replay", "1"]):
        done = run_cli("events", *command, cwd=tmp_path, env=cli_env(HOOKGATE_DATABASE_URL=database_url))
        assert (done.returncode, done.stdout) == (1, "")
        assert done.stderr.startswith(f"hookgate: no Hookgate tables in {shown}"), done.stderr
        assert "pw-never-shown" not in done.stderr
    engine = create_store_engine(database_url)
    assert inspect(engine).get_table_names() == []
    engine.dispose()


def test_list_piped_into_head_ends_quietly(tmp_path: Path, engine: Any, database_url: str) -> None:
    now = time.time()
    rows = [
        {
            "provider": "acme",
            "event_id": f"evt-{n:05}",
            "event_type": "thing.updated",
            "body": b"{}",
            "headers": "{}",
            "received_at": now,
            "status": PROCESSED,
            "updated_at": now,
        }
        for n in range(3000)
    ]
    with engine.begin() as conn:
        conn.execute(insert(events), rows)
    env = cli_env(HOOKGATE_DATABASE_URL=database_url)
    hookgate = subprocess.Popen(
        [*CLI, "events", "list", "--limit", "3000"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert hookgate.stdout is not None
    head = subprocess.Popen(["head", "-1"], stdin=hookgate.stdout, stdout=subprocess.PIPE, text=True)
    hookgate.stdout.close()  # only head reads the pipe: once it exits, hookgate's writes fail
    first_line, _ = head.communicate(timeout=60)
    _, stderr = hookgate.communicate(timeout=60)
    assert stderr.decode() == ""
    assert hookgate.returncode == 141  # as a process killed by SIGPIPE, like `cat` or `seq`
    assert first_line.split()[0] == "ID"
