"""What the real processes write to their logs: no secrets, handler errors with their origin,
and a recovery sweep that tells held events from lost ones.

Each test reads the whole output (stdout and stderr) of real ``dramatiq workers.main`` processes;
the secrets test that of ``hookgate serve`` and ``hookgate worker`` in the default text format
(tests/support/log_scenario.py; tests/test_json_logs.py runs the same in JSON).
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.config import WorkerSettings
from gateway.queue import EventQueue, create_broker, new_token
from tests.conftest import Hookgate
from tests.support.fake_api import FakeApi
from tests.support.log_scenario import run_log_scenario
from tests.support.rows import insert_waiting
from tests.support.servers import ROOT, wait_for
from workers.recovery import RecoverySweep

HANDLERS = ROOT / "tests" / "support" / "handlers.py"

#: The line formats of the default text logs: Hookgate's, uvicorn's and Dramatiq's.
HOOKGATE_TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")
UVICORN_TEXT_LINE = re.compile(r"(INFO|WARNING|ERROR): +[A-Z]")
DRAMATIQ_TEXT_LINE = re.compile(r"\[[\d :,-]+\] \[PID \d+\] \[[^\]]+\] \[[^\]]+\] \[(INFO|WARNING|ERROR|CRITICAL)\] ")


def test_worker_and_intake_logs_carry_no_secret_or_api_credential_and_stay_text_by_default(
    hookgate: Hookgate, fake_api: FakeApi
) -> None:
    logged = run_log_scenario(hookgate, fake_api, log_format=None)
    assert not logged.leaks()
    serve, worker = logged.logs["serve"].splitlines(), logged.logs["worker"].splitlines()
    # The text formats are those of before HOOKGATE_LOG_FORMAT; a traceback's lines follow its line.
    assert not [line for line in serve + worker if line.startswith("{")]
    assert any(UVICORN_TEXT_LINE.match(line) and "Started server process" in line for line in serve)
    assert any(HOOKGATE_TEXT_LINE.match(line) and "rejected provider=acme status=401" in line for line in serve)
    assert any(DRAMATIQ_TEXT_LINE.match(line) and "[dramatiq.MainProcess]" in line for line in worker)
    [processed] = [line for line in worker if "processed provider=acme event=ok-1 type=thing.updated" in line]
    assert DRAMATIQ_TEXT_LINE.match(processed), processed
    assert any(line.startswith("Traceback (most recent call last)") for line in worker)


def test_a_raising_handler_is_logged_at_error_with_its_type_message_and_origin(hookgate: Hookgate) -> None:
    hookgate.start_intake()
    worker = hookgate.start_worker()
    assert hookgate.post("acme", *hookgate.signed("acme", "fail.always", "always")).status_code == 200
    hookgate.wait_status("acme", "always", "failed")
    worker.stop()
    lines = worker.log.read_text().splitlines()
    raise_line = next(n for n, text in enumerate(HANDLERS.read_text().splitlines(), 1) if "boom on try" in text)
    origin = f"{HANDLERS}:{raise_line}"
    for attempt in (1, 2, 3):
        expected = f"tests.support.handlers.acme_handler raised ValueError: boom on try {attempt} at {origin}"
        assert f"[ERROR] event acme/always attempt {attempt}: {expected}" in "\n".join(lines)
    # The retries say when they run; the final failure is an ERROR that carries the error.
    assert any("[WARNING] event acme/always attempt 1 failed; retry 2 in" in line for line in lines)
    [final] = [line for line in lines if "acme/always failed on attempt 3, no retry" in line]
    assert "[ERROR]" in final
    assert "ValueError: boom on try 3" in final
    # The traceback of each raise follows its line (exc_info).
    assert sum(line.startswith("Traceback (most recent call last)") for line in lines) >= 3


def recovery_lines(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if "[hookgate.recovery]" in line]


def test_events_held_by_the_ordering_window_or_a_retry_are_not_reported_as_sent_again(hookgate: Hookgate) -> None:
    # The retry waits longer than requeue_after_seconds: the sweep looks at the events behind it
    # several times while they wait.
    hookgate.configure_workers(min_backoff_seconds=2.5, max_backoff_seconds=2.5)
    hookgate.configure_provider("acme", ordering={"window_ms": 300})
    hookgate.start_intake()
    worker = hookgate.start_worker(processes=2, threads=2)
    sent = [
        (f"held-{resource}-{version}", "thing.updated", resource, version)
        for resource in "abc"
        for version in (3, 1, 2)
    ]
    sent += [
        ("retried-1", "fail.once", "r", 1),
        ("retried-2", "thing.updated", "r", 2),
        ("retried-3", "thing.updated", "r", 3),
    ]
    for event_id, event_type, resource, version in sent:
        body, headers = hookgate.signed("acme", event_type, event_id, {"id": f"obj-{resource}", "version": version})
        assert hookgate.post("acme", body, headers).status_code == 200
    wait_for(lambda: set(hookgate.statuses().values()) == {"processed"}, 30, what="every event processed")
    assert hookgate.event("acme", "retried-1").attempts == 2
    assert [line[2] for line in hookgate.effects() if line[5] == "obj-r"] == ["retried-1", "retried-2", "retried-3"]
    worker.stop()
    # Held events coming due are routine: DEBUG, which the worker's default INFO level leaves out.
    assert recovery_lines(worker.log) == []


def test_events_whose_broker_message_was_lost_are_reported_as_recovered(hookgate: Hookgate) -> None:
    hookgate.start_intake()
    ids = [f"lost-{n}" for n in range(5)]
    for event_id in ids:  # one resource each: no pass applies another's event
        body, headers = hookgate.signed("acme", "thing.updated", event_id, {"id": f"obj-{event_id}", "version": 1})
        assert hookgate.post("acme", body, headers).status_code == 200
    client = redis.Redis.from_url(hookgate.redis_url)
    wait_for(lambda: client.llen("hookgate:hookgate") == len(ids), 10, what="all events enqueued")
    client.flushall()
    worker = hookgate.start_worker()
    wait_for(lambda: set(hookgate.statuses().values()) == {"processed"}, 30, what="every event processed")
    worker.stop()
    lines = recovery_lines(worker.log)
    assert all("[WARNING] sent" in line and "whose broker message was lost" in line for line in lines), lines
    assert sum(int(re.findall(r"sent (\d+) events again", line)[0]) for line in lines) == len(ids)


def test_the_sweep_logs_held_events_at_debug_and_lost_messages_at_warning(
    redis_url: str, engine: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="hookgate.recovery")

    def logged() -> list[tuple[int, str]]:
        records = [(r.levelno, r.getMessage()) for r in caplog.records]
        caplog.clear()
        return records

    now = time.time()
    for n in range(3):
        insert_waiting(engine, f"held-{n}", None, now)
    sweep = RecoverySweep(engine, EventQueue(create_broker(redis_url)), WorkerSettings())
    assert sweep.run_once() == 3
    assert logged() == [(logging.DEBUG, "3 held events came due")]
    # A retry an hour away, and a later event of its resource whose message a worker used up.
    insert_waiting(engine, "retrying", None, now, resource="r1", due=False)
    insert_waiting(engine, "behind", new_token(), now, resource="r1")
    assert sweep.run_once() == 1
    assert logged() == [(logging.DEBUG, "1 events waiting behind an earlier event of their resource were sent again")]
    # Messages that never reached Redis: one alone, and two of one resource (the first was lost).
    insert_waiting(engine, "lost", new_token(), now)
    insert_waiting(engine, "lost-first", new_token(), now, resource="r2")
    insert_waiting(engine, "lost-second", new_token(), now, resource="r2")
    assert sweep.run_once() == 3
    [(level, message)] = logged()
    assert level == logging.WARNING
    assert message.startswith("sent 3 events again whose broker message was lost")
