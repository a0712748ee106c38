"""The command line as a user runs it: the quick start, send, events, and clean shutdowns."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.cli import main
from gateway.embedded_redis import EmbeddedRedis
from tests.support.servers import ROOT, terminate, wait_for

#: The tests' own copy of the example configuration: a user's edits to providers.yaml never reach them.
EXAMPLE_CONFIG = ROOT / "tests" / "support" / "example_providers.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int, running: str = "") -> list[int]:
    """Child processes of ``pid`` whose command line contains ``running``."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    found = []
    for child in map(int, out.split()):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if running in command:
            found.append(child)
    return found


class QuickStart:
    """``hookgate <command>`` in a fresh directory holding only the tests' copy of the example
    providers.yaml."""

    def __init__(self, directory: Path, command: str, monkeypatch: pytest.MonkeyPatch) -> None:
        shutil.copy(EXAMPLE_CONFIG, directory / "providers.yaml")
        for name in ("HOOKGATE_REDIS_URL", "HOOKGATE_DATABASE_URL", "HOOKGATE_CONFIG", "HOOKGATE_DATA_DIR"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.chdir(directory)
        self.dir = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (directory / "hookgate.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", command, "--port", str(self.port)],
            cwd=directory,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self.healthy, 60, interval=0.1, what=f"hookgate {command} to answer")

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def send(self, provider: str, event_type: str, event_id: str) -> None:
        args = ["send", provider, "--type", event_type, "--id", event_id, "--url", f"{self.url}/webhooks/{provider}"]
        assert main(args) == 0

    def show(self, ref: str, capsys: pytest.CaptureFixture[str]) -> str:
        capsys.readouterr()
        main(["events", "show", ref])
        return capsys.readouterr().out

    def stop(self) -> None:
        terminate(self.process)
        self.log.close()


@pytest.fixture
def quick_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    started: list[QuickStart] = []

    def start(command: str = "run") -> QuickStart:
        started.append(QuickStart(tmp_path, command, monkeypatch))
        return started[-1]

    yield start
    for qs in started:
        qs.stop()


def test_quick_start_runs_the_example_handlers_and_stops_cleanly(quick_start, capsys) -> None:  # type: ignore[no-untyped-def]
    qs = quick_start("run")
    for provider, event_type in (
        ("stripe", "invoice.paid"),
        ("github", "issues.opened"),
        ("clerk", "user.created"),
        ("acme", "thing.updated"),
    ):
        qs.send(provider, event_type, f"qs-{provider}")
    for provider, handler in (
        ("stripe", "activate_subscription"),
        ("github", "triage_issue"),
        ("clerk", "sync_user"),
        ("acme", "acme_event"),
    ):
        shown = wait_for(
            lambda p=provider: "status:    processed" in (out := qs.show(f"qs-{p}", capsys)) and out,
            60,
            interval=0.2,
            what=f"{provider} event processed",
        )
        assert f"examples.handlers.{handler}" in shown
    capsys.readouterr()
    assert main(["events", "list", "--status", "processed"]) == 0
    assert capsys.readouterr().out.count("processed") == 4
    assert (qs.dir / "hookgate.db").exists()
    redis = EmbeddedRedis(qs.dir / ".hookgate")
    assert redis._answers()
    qs.stop()
    assert qs.process.returncode == 0
    assert not redis._answers(), "the embedded Redis outlived hookgate run"


def test_hookgate_run_restarts_a_worker_that_died(quick_start, capsys) -> None:  # type: ignore[no-untyped-def]
    qs = quick_start("run")
    (dramatiq_main,) = wait_for(lambda: children(qs.process.pid, "workers.main"), 30, what="the worker to start")
    worker_processes = wait_for(lambda: children(dramatiq_main), 30, what="worker processes")
    for pid in worker_processes:
        os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: dramatiq_main not in (new := children(qs.process.pid, "workers.main")) and new, 60, what="a new worker"
    )
    qs.send("stripe", "invoice.paid", "after-crash")
    wait_for(
        lambda: "status:    processed" in qs.show("after-crash", capsys),
        60,
        interval=0.2,
        what="the event processed by the new worker",
    )
    # Killed outright, hookgate run takes its worker down with it: nothing is left running.
    (new_worker,) = children(qs.process.pid, "workers.main")
    tree = [new_worker, *children(new_worker)]
    qs.process.kill()
    wait_for(
        lambda: not any(Path(f"/proc/{pid}").exists() for pid in tree),
        30,
        what="the worker processes to exit with hookgate run",
    )


def test_embedded_redis_dies_with_a_killed_intake(quick_start) -> None:  # type: ignore[no-untyped-def]
    qs = quick_start("serve")
    redis = EmbeddedRedis(qs.dir / ".hookgate")
    assert redis._answers()
    qs.process.kill()
    wait_for(lambda: not redis._answers(), 10, what="the embedded Redis to stop")


def test_send_reports_an_unknown_provider(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["send", "nope", "--type", "x", "--config", str(EXAMPLE_CONFIG)]) == 2
    assert "no provider 'nope'" in capsys.readouterr().err


def test_events_replay_requeues_failed_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sqlalchemy import insert, select

    from gateway.database import create_store_engine
    from gateway.models import events
    from gateway.schema import prepare_store

    url = f"sqlite:///{tmp_path}/db.sqlite"
    monkeypatch.setenv("HOOKGATE_DATABASE_URL", url)
    engine = create_store_engine(url)
    prepare_store(engine, upgrade=True)
    with engine.begin() as conn:
        for n, status in enumerate(("failed", "processed", "failed")):
            conn.execute(
                insert(events).values(
                    provider="acme",
                    event_id=f"e{n}",
                    event_type="t",
                    body=b"{}",
                    headers="{}",
                    received_at=1.0,
                    status=status,
                    attempts=8,
                    last_error="boom",
                    updated_at=1.0,
                )
            )
    assert main(["events", "replay", "--status", "failed", "--dry-run"]) == 0
    assert capsys.readouterr().out == "would queue 2 events: handlers that succeeded are not run again\n"
    with engine.connect() as conn:
        assert set(conn.scalars(select(events.c.status))) == {"failed", "processed"}
    assert main(["events", "replay", "--status", "failed"]) == 0
    out = capsys.readouterr().out
    assert "replay job 1: queued 2 of 2 events: handlers that succeeded are not run again" in out
    with engine.connect() as conn:
        rows = conn.execute(
            select(events.c.event_id, events.c.status, events.c.attempts, events.c.attempts_before_round)
        ).all()
    # The attempt count goes on; the replay's own tries are counted from 8.
    assert sorted(rows) == [("e0", "queued", 8, 8), ("e1", "processed", 8, 0), ("e2", "queued", 8, 8)]


@pytest.mark.broker
def test_hookgate_run_on_rabbitmq_starts_no_redis(
    quick_start, rabbitmq_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HOOKGATE_BROKER_URL", rabbitmq_url)
    qs = quick_start("run")
    qs.send("stripe", "invoice.paid", "rmq-stripe")
    wait_for(lambda: "status:    processed" in qs.show("rmq-stripe", capsys), 60, interval=0.2, what="processed")
    assert children(qs.process.pid, "redis-server") == []
    assert not (qs.dir / ".hookgate").exists(), "the embedded Redis' directory was made"
    qs.stop()
    assert qs.process.returncode == 0
