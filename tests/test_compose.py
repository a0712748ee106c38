"""compose.yaml and deploy/haproxy.cfg, checked without a container engine (none runs here).

The file is read as YAML and held to the production topology it promises: PostgreSQL and Redis
with health checks and volumes, ``hookgate migrate`` as a one-shot that ``serve`` and ``worker``
wait for, two ``serve`` replicas behind one published port whose health is ``/readyz``, two
workers. Every service runs the project's own build or an official image, every ``hookgate``
command it runs is one that ``gateway/cli.py`` accepts, and no secret is written in it.

Debian's ``docker-compose`` (1.29, which validates against the Compose specification's schema and
resolves variables, volumes and dependencies without an engine) and ``haproxy -c`` check the two
files as the real tools read them, and the proxy's configuration runs for real in HAProxy in
front of the real intake, with only its two addresses moved to 127.0.0.1. Where those tools are
not installed these tests are skipped, unless HOOKGATE_TEST_REQUIRE_DEPLOY_TOOLS=1 (as
``.ci/run`` sets, after installing them).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.cli import build_parser
from tests.conftest import Hookgate
from tests.support.servers import ROOT, wait_for

COMPOSE_TEXT = (ROOT / "compose.yaml").read_text()
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
#: The services that run the project's image, and the command each runs.
HOOKGATE = {name: service["command"] for name, service in SERVICES.items() if "build" in service}
#: What compose.yaml refuses to start without, with a value for the tests' .env.
ADMIN_TOKEN = "compose-test-admin-token"
REQUIRED = {"POSTGRES_PASSWORD": "testonly0", "HOOKGATE_PROVIDERS": "./providers.yaml"}
#: Docker Hub's library images the topology may use: Docker Hub is not reachable from here to
#: ask, and a name alone (``postgress:17``) would pass for one.
OFFICIAL_IMAGES = {"postgres", "redis", "rabbitmq", "haproxy", "nginx"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
CONFIG_PATH = "/etc/hookgate/providers.yaml"


def required_tool(name: str) -> str:
    """The path of ``name``; skipped where it is not installed, failed where CI requires it."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("HOOKGATE_TEST_REQUIRE_DEPLOY_TOOLS"):
            pytest.fail(f"{name} is required (apt-get install --no-install-recommends docker-compose haproxy)")
        pytest.skip(f"{name} not installed (Debian: apt-get install --no-install-recommends {name})")
    return path


def subcommands(parser: argparse.ArgumentParser) -> set[str]:
    """The ``hookgate`` subcommands that the parser knows."""
    return {
        name for action in parser._actions if isinstance(action, argparse._SubParsersAction) for name in action.choices
    }


def depends_on(name: str) -> dict[str, str]:
    """The services ``name`` waits for, each with its condition."""
    return {other: spec["condition"] for other, spec in SERVICES[name].get("depends_on", {}).items()}


def volume_mounts(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Each short-syntax volume as (source, target, mode)."""
    mounts = []
    for entry in service.get("volumes", []):
        source, target, *mode = entry.rsplit(":", 2) if entry.count(":") >= 2 else entry.split(":", 1)
        mounts.append((source, target, mode[0] if mode else "rw"))
    return mounts


def serve_port() -> str:
    command = SERVICES["serve"]["command"]
    return command[command.index("--port") + 1]


def test_the_file_has_the_compose_structure() -> None:
    assert {key for key in COMPOSE if not key.startswith("x-")} <= {"services", "volumes", "networks", "name"}
    declared = set(COMPOSE.get("volumes") or {})
    for name, service in SERVICES.items():
        assert "image" in service, name
        for other, condition in depends_on(name).items():
            assert other in SERVICES, f"{name} depends on {other}, which is not a service"
            assert condition in CONDITIONS, f"{name}: {condition}"
        for source, _, _ in volume_mounts(service):
            if not source.startswith((".", "/", "$")):
                assert source in declared, f"{name} mounts the undeclared volume {source}"
        check = service.get("healthcheck", {})
        assert check.get("disable") is True or check.get("test", ["CMD"])[0] in ("CMD", "CMD-SHELL"), name


def test_it_runs_the_production_topology() -> None:
    assert HOOKGATE["migrate"] == ["hookgate", "migrate"]
    assert SERVICES["migrate"]["restart"] == "no"
    assert depends_on("migrate") == {"db": "service_healthy"}
    for name, command in (("serve", "serve"), ("worker", "worker")):
        assert HOOKGATE[name][1] == command
        assert SERVICES[name]["deploy"]["replicas"] == 2
        waits = depends_on(name)
        assert waits["migrate"] == "service_completed_successfully", name
        assert waits["db"] == waits["redis"] == "service_healthy", name
    assert any("/readyz" in part for part in SERVICES["serve"]["healthcheck"]["test"])
    assert "pg_isready" in SERVICES["db"]["healthcheck"]["test"]
    assert ("pgdata", "/var/lib/postgresql/data", "rw") in volume_mounts(SERVICES["db"])
    # Above the bounds the README states (Docker waits 10 s): a worker exits within 55 s of SIGTERM, serve 30 s.
    assert int(SERVICES["worker"]["stop_grace_period"].removesuffix("s")) > 55
    assert int(SERVICES["serve"]["stop_grace_period"].removesuffix("s")) > 30
    for name in HOOKGATE:
        assert [(t, m) for _, t, m in volume_mounts(SERVICES[name]) if t == CONFIG_PATH] == [(CONFIG_PATH, "ro")]
        assert "@db:5432/hookgate" in SERVICES[name]["environment"]["HOOKGATE_DATABASE_URL"]
        assert SERVICES[name]["environment"]["HOOKGATE_REDIS_URL"].startswith("redis://redis:6379/")


def test_one_published_port_leads_to_every_serve_replica_that_is_ready() -> None:
    published = {name: service["ports"] for name, service in SERVICES.items() if "ports" in service}
    assert sorted(published) == ["admin", "proxy"]
    [port] = published["proxy"]
    sources = [source for source, target, _ in volume_mounts(SERVICES["proxy"]) if target.endswith("haproxy.cfg")]
    config = (ROOT / sources[0]).read_text()
    assert re.search(rf"^\s*bind :{port.rsplit(':', 1)[1]}$", config, re.MULTILINE)
    assert re.search(r"^\s*option httpchk GET /readyz$", config, re.MULTILINE)
    slots, host, port = re.search(r"server-template serve (\d+) (\w+):(\d+) check", config).groups()
    assert (host, port) == ("serve", serve_port())
    assert int(slots) >= SERVICES["serve"]["deploy"]["replicas"]


def test_the_console_is_a_service_of_its_own_on_the_loopback_and_the_public_replicas_never_serve_it() -> None:
    assert HOOKGATE["serve"][-1] == "--no-admin"
    assert HOOKGATE["admin"][:3] == ["hookgate", "serve", "--admin-only"]
    assert SERVICES["admin"]["ports"] == ["127.0.0.1:8001:8001"]
    assert SERVICES["admin"]["profiles"] == ["admin"]  # started on demand, once its token is set
    assert any(":8001/healthz" in part for part in SERVICES["admin"]["healthcheck"]["test"])


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_image_is_the_projects_build_or_an_official_one(name: str) -> None:
    service = SERVICES[name]
    if "build" in service:
        assert service["build"] == "."
        assert (ROOT / "Dockerfile").exists()
        assert service["image"].split(":")[0] == "hookgate"
        return
    repository, _, tag = service["image"].partition(":")
    assert repository in OFFICIAL_IMAGES, f"{name}: {service['image']} is not an official image"
    assert tag not in ("", "latest"), f"{name}: pin a release of {repository}"


@pytest.mark.parametrize("name", sorted(HOOKGATE))
def test_every_hookgate_command_is_one_the_cli_accepts(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Read from ``gateway.cli.build_parser()``, so that a command added or removed there counts."""
    program, command, *_ = HOOKGATE[name]
    assert program == "hookgate"
    parser = build_parser()
    known = subcommands(parser)
    assert command in known, (
        f"compose service {name!r} runs `hookgate {command}`, which gateway/cli.py does not have "
        f"(it has: {', '.join(sorted(known))})"
    )
    try:
        parser.parse_args(HOOKGATE[name][1:])
    except SystemExit:
        pytest.fail(f"compose service {name!r}: the CLI refuses {HOOKGATE[name]}: {capsys.readouterr().err.strip()}")


def test_no_secret_is_written_in_the_file_and_env_example_lists_what_it_needs() -> None:
    assert not re.search(r"://[^:/@\s]+:(?!\$\{)[^@\s]*@", COMPOSE_TEXT), "a password written in a URL"
    for name, service in SERVICES.items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|KEY", key):
                assert str(value).startswith("${"), f"{name}: {key} is written in the file"
    assert set(re.findall(r"\$\{(\w+):\?", COMPOSE_TEXT)) == set(REQUIRED)
    example = (ROOT / ".env.example").read_text()
    assert set(re.findall(r"^(\w+)=$", example, re.MULTILINE)) == set(REQUIRED)
    assert not re.findall(r"^\w+=\S", example, re.MULTILINE), ".env.example carries no value"
    for ignore in (".gitignore", ".dockerignore"):
        assert ".env" in (ROOT / ignore).read_text().splitlines(), ignore


def run_compose_config(project: Path, env_file: str) -> subprocess.CompletedProcess[str]:
    """``docker-compose config`` on a copy of the deployment files with ``env_file`` as .env, and
    no Hookgate or PostgreSQL variable from this shell (they would win over the file)."""
    shutil.copy(ROOT / "compose.yaml", project)
    shutil.copy(ROOT / "Dockerfile", project)
    shutil.copytree(ROOT / "deploy", project / "deploy", dirs_exist_ok=True)
    (project / ".env").write_text(env_file)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HOOKGATE_", "POSTGRES_"))}
    return subprocess.run(
        [required_tool("docker-compose"), "config"], cwd=project, env=env, capture_output=True, text=True, timeout=60
    )


def test_docker_compose_accepts_the_file_once_env_is_filled_in_and_refuses_it_before(tmp_path: Path) -> None:
    example = (ROOT / ".env.example").read_text()
    refused = run_compose_config(tmp_path, example)
    assert refused.returncode != 0
    assert "set POSTGRES_PASSWORD in .env" in refused.stderr

    filled = re.sub(r"^(\w+)=$", lambda m: f"{m[1]}={REQUIRED[m[1]]}", example, flags=re.MULTILINE)
    done = run_compose_config(tmp_path, filled)
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)["services"]
    assert set(resolved) == set(SERVICES)
    serve = resolved["serve"]
    assert serve["environment"]["HOOKGATE_DATABASE_URL"].startswith("postgresql+psycopg://hookgate:testonly0@db:")
    assert f"{tmp_path}/providers.yaml:{CONFIG_PATH}:ro" in serve["volumes"]


PROXY_CONFIG = ROOT / "deploy" / "haproxy.cfg"
META_TOKEN = "meta-verify-token-in-a-query"


def test_haproxy_accepts_the_proxy_configuration() -> None:
    done = subprocess.run(
        [required_tool("haproxy"), "-c", "-f", str(PROXY_CONFIG)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr


class Proxy:
    """HAProxy on deploy/haproxy.cfg, listening on a loopback port instead of ``:8000`` and sending
    to ``backend`` instead of the name ``serve`` that Docker's DNS answers; its log in a file."""

    def __init__(self, directory: Path, backend: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        config = PROXY_CONFIG.read_text().replace(f"serve:{serve_port()}", backend)
        config, binds = re.subn(r"(?m)^(\s*bind) :\d+$", rf"\1 127.0.0.1:{port}", config)
        assert binds == 1
        (directory / "haproxy.cfg").write_text(config)
        self.log = directory / "haproxy.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [required_tool("haproxy"), "-db", "-f", str(directory / "haproxy.cfg")],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for(self.answers, 15, what="haproxy to listen")
        except AssertionError:
            self.stop()
            raise AssertionError(f"haproxy did not start: {self.log.read_text()}") from None

    def answers(self) -> bool:
        try:
            httpx.get(f"{self.url}/healthz", timeout=2)
        except httpx.TransportError:
            return False
        return True

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=15)


@pytest.fixture
def proxied(hookgate: Hookgate) -> Iterator[tuple[Hookgate, Proxy]]:
    """The intake behind the repository's HAProxy configuration."""
    hookgate.configure_provider("meta", type="meta", secrets=["meta-app-secret-1"], verify_token=META_TOKEN)
    hookgate.start_intake(admin_token=ADMIN_TOKEN)
    proxy = Proxy(hookgate.dir, hookgate.url.removeprefix("http://"))
    yield hookgate, proxy
    proxy.stop()


def test_the_proxy_refuses_the_console_that_a_replica_serves(proxied: tuple[Hookgate, Proxy]) -> None:
    hookgate, proxy = proxied
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert httpx.get(f"{hookgate.url}/admin/api/stats", headers=bearer, timeout=30).status_code == 200
    # uvicorn decodes the path before routing: the proxy must match it decoded too.
    for path in ("/admin", "/admin/api/stats", "/admin/login", "/%61dmin/api/stats", "/ADMIN", "/%41dmin"):
        assert httpx.get(httpx.URL(f"{proxy.url}{path}"), headers=bearer, timeout=30).status_code == 404, path


def test_through_the_proxy_events_are_stored_and_its_log_holds_no_query(proxied: tuple[Hookgate, Proxy]) -> None:
    hookgate, proxy = proxied
    body, headers = hookgate.signed("stripe", "invoice.paid", "evt_through_the_proxy")
    answer = httpx.post(f"{proxy.url}/webhooks/stripe", content=body, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    assert hookgate.event("stripe", "evt_through_the_proxy") is not None
    query = {"hub.mode": "subscribe", "hub.challenge": "1158201444", "hub.verify_token": META_TOKEN}
    subscribed = httpx.get(f"{proxy.url}/webhooks/meta", params=query, timeout=30)
    assert (subscribed.status_code, subscribed.text) == (200, "1158201444")

    logged = wait_for(lambda: "GET /webhooks/meta" in proxy.log.read_text() and proxy.log.read_text(), 15)
    assert "POST /webhooks/stripe" in logged
    assert META_TOKEN not in logged
    assert "hub." not in logged


def test_the_proxy_stops_sending_to_a_replica_whose_readyz_fails(hookgate: Hookgate) -> None:
    """An intake whose broker does not answer is not ready: HAProxy's check takes it out and
    answers 503 itself (Hookgate would have stored the event and answered 200)."""
    hookgate.start_intake(broker_url="redis://127.0.0.1:1/0")
    assert httpx.get(f"{hookgate.url}/readyz", timeout=10).status_code == 503
    proxy = Proxy(hookgate.dir, hookgate.url.removeprefix("http://"))
    try:

        def refused_by_the_proxy() -> bool:
            body, headers = hookgate.signed("stripe", "invoice.paid")
            answer = httpx.post(f"{proxy.url}/webhooks/stripe", content=body, headers=headers, timeout=30)
            return answer.status_code == 503 and "No server is available" in answer.text

        wait_for(refused_by_the_proxy, 40, interval=0.5, what="HAProxy to take the replica out")
    finally:
        proxy.stop()
