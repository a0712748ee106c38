"""``hookgate events list|show|replay``: what an event waits for, a missing store, and a closed pipe."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.cli import main
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
