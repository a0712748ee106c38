"""``HOOKGATE_LOG_FORMAT=json``: every line real ``hookgate serve``, ``worker`` and ``run`` processes
write is one JSON object, with the event's fields where one is being processed, and no secret or
signature anywhere. The same scenario in the default text format is in tests/test_logs.py.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from gateway.config import WorkerSettings
from gateway.logs import json_handler
from gateway.models import PROCESSING, events
from gateway.queue import EventQueue, create_broker, new_token
from tests.conftest import Hookgate
from tests.support.fake_api import FakeApi
from tests.support.log_scenario import OUTCOMES, HookgateCommand, ServeProcess, log_env, run_log_scenario
from tests.support.rows import insert_waiting
from tests.support.servers import ROOT, wait_for
from tests.test_cli import children, free_port
from workers.recovery import RecoverySweep

Entry = dict[str, Any]
EVENT_FIELDS = ("provider", "event_id", "event_type", "attempt")


def parse_lines(name: str, text: str) -> list[Entry]:
    """Every line of a process's output as a JSON object with the fields every line has."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            entry = json.loads(line)
        except ValueError:
            pytest.fail(f"{name} line {number} is not JSON: {line!r}")
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= entry.keys(), line
        assert entry["time"].endswith("Z"), line  # UTC
        datetime.fromisoformat(entry["time"])
        entries.append(entry)
    assert entries, f"{name} wrote nothing"
    return entries


def event_fields(entry: Entry) -> tuple[Any, ...]:
    return tuple(entry.get(name) for name in EVENT_FIELDS)


def is_settled(entry: Entry) -> bool:
    """A worker's line saying an event is done: processed (or superseded), or failed for good."""
    return entry["message"].startswith(("processed provider=", "superseded provider=")) or (
        ", no retry: " in entry["message"]
    )


def with_message(entries: list[Entry], text: str) -> list[Entry]:
    return [entry for entry in entries if text in entry["message"]]


def test_serve_and_worker_write_one_json_object_per_line_with_the_event_fields_and_no_secret(
    hookgate: Hookgate, fake_api: FakeApi
) -> None:
    logged = run_log_scenario(hookgate, fake_api, log_format="json", processes=2)
    assert not logged.leaks()
    serve = parse_lines("serve", logged.logs["serve"])
    worker = parse_lines("worker", logged.logs["worker"])

    # uvicorn's lines, and the intake's, which name the provider where they know it.
    assert {e["logger"] for e in with_message(serve, "Started server process")} == {"uvicorn.error"}
    [rejected] = with_message(serve, "rejected provider=acme status=401")
    assert (rejected["level"], rejected["logger"], rejected["provider"]) == ("INFO", "hookgate.intake", "acme")
    # Dramatiq's own lines: its parent's and each worker process's, forwarded by the parent.
    loggers = {e["logger"] for e in worker}
    assert {"dramatiq.MainProcess", "dramatiq.WorkerProcess(0)", "dramatiq.WorkerProcess(1)"} <= loggers
    assert with_message(worker, "Sending signal 'SIGTERM' to subprocesses")

    # Every processed or failed event has one line saying so, INFO or above, with its fields.
    for (provider, event_id), (status, attempts) in OUTCOMES.items():
        [settled] = [e for e in worker if e.get("event_id") == event_id and is_settled(e)]
        stored = hookgate.event(provider, event_id)
        assert event_fields(settled) == (provider, event_id, stored.event_type, attempts)
        assert settled["level"] == ("INFO" if status == "processed" else "ERROR")
    [processed] = with_message(worker, "processed provider=acme event=ok-1")
    assert (processed["level"], processed["logger"]) == ("INFO", "hookgate.worker")
    assert event_fields(processed) == ("acme", "ok-1", "thing.updated", 1)
    [retry] = with_message(worker, "event stripe/evt_in_1 attempt 1 failed; retry 2")
    assert (retry["level"], *event_fields(retry)) == ("WARNING", "stripe", "evt_in_1", "invoice.paid", 1)

    # A raising handler: one ERROR line per try, its traceback inside the object.
    raised = [e for e in worker if e["message"].startswith("event acme/always attempt") and "error" in e]
    assert [e["attempt"] for e in raised] == [1, 2, 3]
    for entry in raised:
        assert entry["level"] == "ERROR"
        assert "acme_handler raised ValueError" in entry["message"]
        assert entry["error"].startswith("Traceback (most recent call last)")
        assert entry["error"].endswith(f"ValueError: boom on try {entry['attempt']}")

    # What a handler logs or prints while it runs carries the event's fields too.
    chatty = [e for e in worker if e["message"].startswith("the handler of chatty-1")]
    assert {(e["logger"], e["message"]) for e in chatty} == {
        ("tests.support.handlers", "the handler of chatty-1 logs"),
        ("stdout", "the handler of chatty-1 prints"),
    }
    assert {event_fields(e) for e in chatty} == {("acme", "chatty-1", "chatty.said", 1)}
    # Lines outside an event carry none of its fields.
    assert not any(e.get("event_id") for e in with_message(worker, "Worker process is ready for action"))


def test_hookgate_run_writes_json_lines_for_the_intake_and_its_worker(hookgate: Hookgate) -> None:
    run = ServeProcess(hookgate, "run", env=log_env(hookgate, "json"))
    try:
        body, headers = hookgate.signed("stripe", "invoice.paid", "evt_run_1")
        assert run.post("stripe", body, headers) == 200
        hookgate.wait_status("stripe", "evt_run_1", "processed")
    finally:
        assert run.stop() == 0
    entries = parse_lines("run", run.log.read_text())
    loggers = {e["logger"] for e in entries}
    assert {"uvicorn.error", "dramatiq.MainProcess", "dramatiq.WorkerProcess(0)", "hookgate.worker"} <= loggers
    [processed] = with_message(entries, "processed provider=stripe event=evt_run_1")
    assert event_fields(processed) == ("stripe", "evt_run_1", "invoice.paid", 1)


@pytest.mark.parametrize("command", ["serve", "worker", "run"])
def test_an_unknown_log_format_is_refused_at_start(hookgate: Hookgate, command: str) -> None:
    port = free_port()
    args = [command] if command == "worker" else [command, "--port", str(port)]
    env = log_env(hookgate, "XML")
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == "hookgate: HOOKGATE_LOG_FORMAT='XML' is not a log format: use text or json\n"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)


def test_dramatiq_run_directly_refuses_an_unknown_log_format_too(hookgate: Hookgate) -> None:
    """``dramatiq workers.main``, which the README allows, names the variable as well."""
    done = subprocess.run(
        [sys.executable, "-m", "dramatiq", "workers.main", "--processes", "1"],
        env=log_env(hookgate, "yaml"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "HOOKGATE_LOG_FORMAT='yaml' is not a log format: use text or json" in done.stderr


def test_an_event_the_recovery_sweep_gives_up_on_is_logged_with_its_fields(redis_url: str, engine: Any) -> None:
    """The sweep fails an event whose worker kept dying on it: that line is the event's last."""
    now = time.time()
    pk = insert_waiting(engine, "doomed", new_token(), now, attempts=3)
    with engine.begin() as conn:  # as the third worker to die on it left it
        conn.execute(update(events).where(events.c.id == pk).values(status=PROCESSING, lease_expires_at=now - 60))
    out = io.StringIO()
    handler = json_handler(out)
    logger = logging.getLogger("hookgate.recovery")
    logger.addHandler(handler)
    try:
        RecoverySweep(engine, EventQueue(create_broker(redis_url)), WorkerSettings(max_attempts=3)).run_once()
    finally:
        logger.removeHandler(handler)
    [entry] = parse_lines("the sweep", out.getvalue())
    assert entry["message"] == "event acme/doomed failed: the worker stopped while processing it, 3 times"
    assert entry["level"] == "ERROR"
    assert event_fields(entry) == ("acme", "doomed", "thing.updated", 3)


def test_a_worker_reloaded_by_sighup_keeps_its_log_format_and_works(hookgate: Hookgate) -> None:
    """Dramatiq reloads on SIGHUP by executing its command line again: ``hookgate worker``'s."""
    worker = HookgateCommand(hookgate, "worker", env=log_env(hookgate, "json"))
    try:
        (parent,) = wait_for(lambda: children(worker.process.pid, "workers.main"), 30, what="Dramatiq to start")
        wait_for(lambda: "ready for action" in worker.log.read_text(), 30, what="its worker process")
        os.kill(parent, signal.SIGHUP)
        wait_for(lambda: worker.log.read_text().count("is booting up") == 2, 60, what="Dramatiq to boot again")
        hookgate.start_intake()
        assert hookgate.post("stripe", *hookgate.signed("stripe", "invoice.paid", "after-reload")).status_code == 200
        hookgate.wait_status("stripe", "after-reload", "processed")
    finally:
        assert worker.stop() == 0
    assert children(worker.process.pid) == []
    entries = parse_lines("worker", worker.log.read_text())
    assert with_message(entries, "Sending signal 'SIGHUP' to subprocesses")
    assert with_message(entries, "processed provider=stripe event=after-reload")
