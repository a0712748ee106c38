"""What the log tests send through real ``hookgate serve`` and ``hookgate worker`` processes.

:func:`run_log_scenario` configures providers with secrets and every kind of API credential,
then sends valid events, one whose API refuses, one whose API fails once, one whose handler
always fails, one whose handler logs and prints, and a forged signature; it stops both processes
with SIGTERM and hands back their whole output (stdout and stderr) with every secret and
signature that must not appear in it. tests/test_logs.py reads it as text, tests/test_json_logs.py
as JSON.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import Hookgate
from tests.support.fake_api import Answer, FakeApi
from tests.support.servers import ROOT, terminate, wait_for
from tests.test_cli import free_port

QUERY_KEY = "qk-9f31c0ffee-query-credential"
API_TOKEN = "tok-77aa-bearer-credential"
HEADER_KEY = "hdr-51bb-header-credential"
BASIC_PASSWORD = "pw-2c4d-basic-credential"

#: What each event sent ends as: (provider, event id) → status, attempts.
OUTCOMES = {
    ("acme", "ok-1"): ("processed", 1),
    ("acme", "denied-1"): ("failed", 1),
    ("stripe", "evt_in_1"): ("processed", 2),
    ("acme", "always"): ("failed", 3),
    ("acme", "chatty-1"): ("processed", 1),
}


class HookgateCommand:
    """``hookgate ARGS…`` as a process of its own, its whole output in ``<first arg>.log``."""

    def __init__(self, hookgate: Hookgate, *args: str, env: dict[str, str]) -> None:
        self.log = hookgate.dir / f"{args[0]}.log"
        command = [sys.executable, "-m", "gateway.cli", *args]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    def stop(self) -> int:
        """SIGTERM, as a process manager stops it; its exit code."""
        return terminate(self.process)


class ServeProcess(HookgateCommand):
    """``hookgate serve`` (or ``run``) on a free port, once it answers."""

    def __init__(self, hookgate: Hookgate, command: str = "serve", *, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(hookgate, command, "--port", str(self.port), env=env)
        wait_for(self.ready, 60, interval=0.05, what=f"hookgate {command} to answer")

    def ready(self) -> bool:
        assert self.process.poll() is None, self.log.read_text()
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def post(self, provider: str, body: bytes, headers: dict[str, str]) -> int:
        return httpx.post(f"{self.url}/webhooks/{provider}", content=body, headers=headers, timeout=30).status_code


def log_env(hookgate: Hookgate, log_format: str | None) -> dict[str, str]:
    """The processes' environment, with ``HOOKGATE_LOG_FORMAT`` set, or unset for the default."""
    env = {name: value for name, value in hookgate.env().items() if name != "HOOKGATE_LOG_FORMAT"}
    return env | ({"HOOKGATE_LOG_FORMAT": log_format} if log_format else {})


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


def signature_digests(headers: dict[str, str]) -> set[str]:
    """The digests in a request's signature headers (``sha256=<hex>``, ``t=…,v1=<hex>``)."""
    values = [value for name, value in headers.items() if "signature" in name.lower()]
    return {part for value in values for part in re.split(r"[,=\s]", value) if len(part) >= 16}


@dataclass(frozen=True)
class Logged:
    """The whole output of each process by name (``serve``, ``worker``), and what must not be in it."""

    logs: dict[str, str]
    secrets: set[str]
    signatures: set[str]

    def leaks(self) -> list[tuple[str, str]]:
        """(process, line) of every line that holds a secret or a signature."""
        forbidden = self.secrets | self.signatures
        return [
            (name, line)
            for name, text in self.logs.items()
            for line in text.splitlines()
            if any(value in line for value in forbidden)
        ]


def run_log_scenario(hookgate: Hookgate, fake_api: FakeApi, log_format: str | None, *, processes: int = 1) -> Logged:
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
    env = log_env(hookgate, log_format)
    server = ServeProcess(hookgate, env=env)
    worker = HookgateCommand(hookgate, "worker", "--processes", str(processes), "--threads", "2", env=env)
    signatures: set[str] = set()
    try:
        sent: list[tuple[str, str, str, dict[str, Any]]] = [
            ("acme", "thing.updated", "ok-1", {"id": "t-ok", "version": 1}),
            ("acme", "thing.updated", "denied-1", {"id": "t-denied", "version": 1}),
            ("stripe", "invoice.paid", "evt_in_1", {"id": "in_1", "object": "invoice"}),
            ("acme", "fail.always", "always", {}),  # no resource: no reconciliation
            ("acme", "chatty.said", "chatty-1", {}),
        ]
        for provider, event_type, event_id, data in sent:
            body, headers = hookgate.signed(provider, event_type, event_id, data)
            signatures |= signature_digests(headers)
            assert server.post(provider, body, headers) == 200
        body, headers = hookgate.config.providers["acme"].provider.signed_request(
            "thing.updated", event_id="forged", secret="not-the-secret"
        )
        signatures |= signature_digests(headers)
        assert server.post("acme", body, headers) == 401
        for (provider, event_id), (status, attempts) in OUTCOMES.items():
            assert hookgate.wait_status(provider, event_id, status).attempts == attempts
        # The credentials were sent: they were there to be logged.
        assert fake_api.seen(f"/v1/things/t-ok?api_key={QUERY_KEY}")
    finally:
        stopped = {"worker": worker.stop(), "serve": server.stop()}
    assert stopped == {"worker": 0, "serve": 0}
    assert signatures
    logs = {"serve": server.log.read_text(), "worker": worker.log.read_text()}
    return Logged(logs, secrets, signatures)
