"""What the real processes write to their logs: no secrets, handler errors with their origin,
and a recovery sweep that tells held events from lost ones.

Each test reads the whole output (stdout and stderr) of real ``dramatiq workers.main`` processes,
and for the secrets test also of ``hookgate serve`` run as its own process.
"""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from gateway.config import WorkerSettings
from gateway.queue import EventQueue, create_broker, new_token
from tests.conftest import Hookgate
from tests.support.fake_api import Answer, FakeApi
from tests.support.rows import insert_waiting
from tests.support.servers import ROOT, wait_for
from workers.recovery import RecoverySweep

HANDLERS = ROOT / "tests" / "support" / "handlers.py"
QUERY_KEY = "qk-9f31c0ffee-query-credential"
API_TOKEN = "tok-77aa-bearer-credential"
HEADER_KEY = "hdr-51bb-header-credential"
BASIC_PASSWORD = "pw-2c4d-basic-credential"


class ServeProcess:
    """``hookgate serve`` as a process of its own, its whole output in a file."""

    def __init__(self, hookgate: Hookgate) -> None:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = hookgate.dir / "serve.log"
        command = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(self.port)]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(command, env=hookgate.env(), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        wait_for(self.ready, 30, interval=0.05, what="hookgate serve to answer")

    def ready(self) -> bool:
        assert self.process.poll() is None, self.log.read_text()
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.fixture
def serve_process() -> Iterator[list[ServeProcess]]:
    started: list[ServeProcess] = []
    yield started
    for server in started:
        server.stop()


def configured_secrets(config_path: Path) -> set[str]:
    """Every provider secret and API credential in the configuration file."""
    data = yaml.safe_load(config_path.read_text())
    found: set[str] = set()
    for entry in data["providers"].values():
        found.update(entry.get("secrets", []))
        api = entry.get("api") or {}
        found.update(value for value in (api.get("token"), (api.get("basic") or {}).get("password")) if value)
        found.update((api.get("headers") or {}).values())
        if "?" in api.get("resource_path", ""):
            found.update(value for _, _, value in re.findall(r"([?&])(\w+)=([^&]+)", api["resource_path"]))
    return found


def test_worker_and_intake_logs_carry_no_secret_or_api_credential(
    hookgate: Hookgate, fake_api: FakeApi, serve_process: list[ServeProcess]
) -> None:
    hookgate.configure_provider(
        "acme",
        api={
            "base_url": fake_api.url,
            "token": API_TOKEN,
            "headers": {"X-Api-Key": HEADER_KEY},
            "resource_path": "/v1/things/{resource}?api_key=" + QUERY_KEY,
        },
    )
    hookgate.configure_provider(
        "stripe", api={"base_url": fake_api.url, "basic": {"username": "acct", "password": BASIC_PASSWORD}}
    )
    fake_api.states[f"/v1/things/t-ok?api_key={QUERY_KEY}"] = {"id": "t-ok", "version": 1}
    fake_api.script(f"/v1/things/t-denied?api_key={QUERY_KEY}", Answer(401, {"error": "bad key"}))
    fake_api.states["/v1/invoices/in_1"] = {"id": "in_1", "object": "invoice"}
    fake_api.script("/v1/invoices/in_1", Answer(500, {"error": "try later"}))
    secrets = configured_secrets(hookgate.config_path)
    assert {QUERY_KEY, API_TOKEN, HEADER_KEY, BASIC_PASSWORD} <= secrets
    server = ServeProcess(hookgate)
    serve_process.append(server)
    worker = hookgate.start_worker()

    def post(provider: str, event_type: str, event_id: str, data: dict[str, Any]) -> int:
        body, headers = hookgate.signed(provider, event_type, event_id, data)
        return httpx.post(f"{server.url}/webhooks/{provider}", content=body, headers=headers, timeout=30).status_code

    assert post("acme", "thing.updated", "ok-1", {"id": "t-ok", "version": 1}) == 200
    assert post("acme", "thing.updated", "denied-1", {"id": "t-denied", "version": 1}) == 200
    assert post("stripe", "invoice.paid", "evt_in_1", {"id": "in_1", "object": "invoice"}) == 200
    body, headers = hookgate.config.providers["acme"].provider.signed_request(
        "thing.updated", event_id="forged", secret="not-the-secret"
    )
    assert httpx.post(f"{server.url}/webhooks/acme", content=body, headers=headers, timeout=30).status_code == 401
    hookgate.wait_status("acme", "ok-1", "processed")
    assert "answered 401" in hookgate.wait_status("acme", "denied-1", "failed").last_error
    assert hookgate.wait_status("stripe", "evt_in_1", "processed").attempts == 2
    # The query credential was sent, and the other credentials too: they were there to be logged.
    assert fake_api.seen(f"/v1/things/t-ok?api_key={QUERY_KEY}")
    worker.stop()
    server.stop()

    logs = {path.name: path.read_text() for path in (worker.log, server.log)}
    assert "processed provider=acme event=ok-1" in logs[worker.log.name]  # the log was captured
    for name, text in logs.items():
        for line in text.splitlines():
            leaked = [secret for secret in secrets if secret in line]
            assert not leaked, f"{name} logged {leaked}: {line}"


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
