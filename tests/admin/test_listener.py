"""Keeping /admin off the public webhook listener: ``hookgate serve --admin-only`` serves the
console alone on its own port, ``hookgate serve --no-admin`` the webhooks without it."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from tests.admin.conftest import AUTH, TOKEN
from tests.conftest import Hookgate
from tests.support.servers import ROOT, terminate, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(hookgate: Hookgate, *options: str) -> Iterator[str]:
    """``hookgate serve OPTIONS`` on a free port, with the admin token set; its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (hookgate.dir / f"serve-{port}.log").open("wb")
    env = {**hookgate.env(), "HOOKGATE_ADMIN_TOKEN": TOKEN}
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), *options],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def healthy() -> bool:
        assert process.poll() is None, (hookgate.dir / f"serve-{port}.log").read_text()
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, 60, interval=0.1, what="hookgate serve to answer")
        yield url
    finally:
        terminate(process)
        log.close()


def test_admin_only_serves_the_console_and_no_webhooks(hookgate: Hookgate) -> None:
    body, headers = hookgate.signed("stripe", "invoice.paid", "evt_admin_only")
    with serve(hookgate, "--admin-only") as url:
        assert httpx.get(f"{url}/admin/api/events", headers=AUTH).json() == {"events": [], "next_cursor": None}
        assert 'type="password"' in httpx.get(f"{url}/admin").text
        assert httpx.post(f"{url}/webhooks/stripe", content=body, headers=headers).status_code == 404
        assert httpx.get(f"{url}/metrics").status_code == 404


def test_no_admin_serves_the_webhooks_without_the_console(hookgate: Hookgate) -> None:
    body, headers = hookgate.signed("stripe", "invoice.paid", "evt_public")
    with serve(hookgate, "--no-admin") as url:
        assert httpx.post(f"{url}/webhooks/stripe", content=body, headers=headers).status_code == 200
        assert httpx.get(f"{url}/admin/api/events", headers=AUTH).status_code == 404
        assert httpx.get(f"{url}/admin").status_code == 404
    with serve(hookgate) as url:  # by default, the token set: both on one listener
        assert httpx.get(f"{url}/admin/api/events", headers=AUTH).json()["events"][0]["event_id"] == "evt_public"


def test_admin_only_without_a_token_does_not_start(hookgate: Hookgate) -> None:
    env = {k: v for k, v in hookgate.env().items() if k != "HOOKGATE_ADMIN_TOKEN"}
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--admin-only", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "HOOKGATE_ADMIN_TOKEN" in done.stderr
