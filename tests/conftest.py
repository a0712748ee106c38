"""Fixtures: a real broker, a real database, the real intake over HTTP, real worker processes.

The broker is Redis: ``$HOOKGATE_TEST_REDIS_URL`` or an embedded server started once per session;
or RabbitMQ when ``$HOOKGATE_TEST_BROKER_URL`` is an ``amqp://`` URL (see
:mod:`tests.support.rabbitmq`). The store is ``$HOOKGATE_TEST_DATABASE_URL`` (PostgreSQL; its tables
are reset per test) or a fresh SQLite file per test.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import tempfile
import textwrap
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlmodel import SQLModel

from gateway.config import Config, load_config
from gateway.database import create_store_engine
from gateway.embedded_redis import EmbeddedRedis
from gateway.intake import create_app
from gateway.models import events, resources
from gateway.queue import EventQueue, create_broker
from gateway.rabbitmq import is_rabbitmq_url
from gateway.schema import prepare_store, version_table
from gateway.writer_process import WriterProcess
from tests.support import rabbitmq
from tests.support.fake_api import FakeApi
from tests.support.servers import ROOT, ServerThread, TcpProxy, WorkerProcess, wait_for

STRIPE_SECRET = "whsec_test_secret_for_hookgate"
GITHUB_SECRET = "It's a Secret to Everybody"
STANDARD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ACME_SECRET = "acme-secret-one"
ACME_SECRET_NEW = "acme-secret-two"

CONFIG = """
defaults:
  tolerance_seconds: 300
  max_body_bytes: 65536
  ordering: {{window_ms: 0}}
providers:
  stripe: {{type: stripe, secrets: ["{stripe}"]}}
  github: {{type: github, secrets: ["{github}"]}}
  standard: {{type: standard, secrets: ["{standard}"]}}
  slack: {{type: slack, secrets: ["slack-signing-secret-1"]}}
  shopify: {{type: shopify, secrets: ["shpss_test_secret_123"]}}
  acme:
    type: hmac
    secrets: ["{acme}", "{acme_new}"]
    signature: {{header: X-Acme-Signature, algorithm: sha256, encoding: hex, prefix: "sha256="}}
    timestamp: {{header: X-Acme-Timestamp}}
    signed_payload: "{{timestamp}}.{{body}}"
    event: {{id: "header:X-Acme-Event-Id", type: "body:type", resource: "body:data.id", sequence: "body:data.version"}}
handlers: [tests.support.handlers]
workers:
  lease_seconds: 2
  sweep_interval_seconds: 0.1
  requeue_after_seconds: 1.5
  max_attempts: 3
  min_backoff_seconds: 0.1
  max_backoff_seconds: 0.5
""".format(
    stripe=STRIPE_SECRET,
    github=GITHUB_SECRET.replace("'", "''"),
    standard=STANDARD_SECRET,
    acme=ACME_SECRET,
    acme_new=ACME_SECRET_NEW,
)


@pytest.fixture(scope="session")
def redis_base_url() -> Iterator[str]:
    url = os.environ.get("HOOKGATE_TEST_REDIS_URL")
    if url:
        yield url
        return
    server = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="hgr-")))
    yield server.start()
    server.stop()


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> str:
    """An empty Redis, for tests about Redis itself (its key layout, ``FLUSHALL``, the embedded
    server): skipped when the run's broker is RabbitMQ."""
    if rabbitmq.configured_url():
        pytest.skip(rabbitmq.REDIS_ONLY)
    url: str = request.getfixturevalue("redis_base_url")
    client = redis.Redis.from_url(url)
    client.flushall()
    client.close()
    return url


@pytest.fixture
def broker_url(request: pytest.FixtureRequest) -> str:
    """The run's broker, emptied: RabbitMQ's queues deleted, or Redis flushed."""
    if rabbitmq.configured_url():
        url: str = request.getfixturevalue("rabbitmq_url")
        return url
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
def rabbitmq_url() -> str:
    """The RabbitMQ of ``$HOOKGATE_TEST_BROKER_URL`` with Hookgate's queues deleted; the test is
    skipped without one (failed where ``$HOOKGATE_TEST_REQUIRE_RABBITMQ`` is set)."""
    url = rabbitmq.available_url()
    rabbitmq.delete_queues(url)
    return url


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    url = os.environ.get("HOOKGATE_TEST_DATABASE_URL")
    if not url:
        return f"sqlite:///{tmp_path}/hookgate.db?timeout=0.5"
    engine = create_store_engine(url)
    SQLModel.metadata.drop_all(engine)
    version_table.drop(engine, checkfirst=True)
    engine.dispose()
    return url


@pytest.fixture
def engine(database_url: str) -> Iterator[Any]:
    engine = create_store_engine(database_url)
    prepare_store(engine, upgrade=True)
    yield engine
    engine.dispose()


def write_config(directory: Path, text: str = CONFIG) -> Path:
    path = directory / "providers.yaml"
    path.write_text(textwrap.dedent(text))
    return path


class Hookgate:
    """The system under test: intake over HTTP, worker processes, and views of the store."""

    def __init__(self, tmp_path: Path, database_url: str, broker_url: str, engine: Any) -> None:
        self.dir = tmp_path
        self.database_url, self.broker_url, self.engine = database_url, broker_url, engine
        self.config_path = write_config(tmp_path)
        self.config: Config = load_config(self.config_path)
        self.server: ServerThread | None = None
        self.workers: list[WorkerProcess] = []
        self.effects_file = tmp_path / "effects.log"

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    @property
    def redis_url(self) -> str:
        """The broker's URL for a test about Redis itself; such a test is skipped on RabbitMQ."""
        if is_rabbitmq_url(self.broker_url):
            pytest.skip(rabbitmq.REDIS_ONLY)
        return self.broker_url

    def start_intake(
        self,
        database_url: str | None = None,
        broker_url: str | None = None,
        *,
        admin_token: str | None = None,
        writer_process: bool = False,
    ) -> Hookgate:
        """The intake in a thread of this process; with ``admin_token``, the console too; with
        ``writer_process``, its batches written by a child process, as ``hookgate serve`` does."""
        url = database_url or self.database_url
        engine = create_store_engine(url)
        broker = create_broker(broker_url or self.broker_url)
        writer = WriterProcess(url, broker_url or self.broker_url) if writer_process else None
        app = create_app(self.config, engine, EventQueue(broker), admin_token=admin_token, writer=writer)
        self.server = ServerThread(app).start()
        return self

    def env(self, broker_url: str | None = None) -> dict[str, str]:
        """The environment of ``hookgate`` processes: a RabbitMQ URL as ``HOOKGATE_BROKER_URL``,
        a Redis one as ``HOOKGATE_REDIS_URL``."""
        url = broker_url or self.broker_url
        variable = "HOOKGATE_BROKER_URL" if is_rabbitmq_url(url) else "HOOKGATE_REDIS_URL"
        environment = {
            key: value for key, value in os.environ.items() if key not in ("HOOKGATE_BROKER_URL", "HOOKGATE_REDIS_URL")
        }
        return {
            **environment,
            "HOOKGATE_CONFIG": str(self.config_path),
            "HOOKGATE_DATABASE_URL": self.database_url,
            variable: url,
            "HOOKGATE_TEST_EFFECTS": str(self.dir),
            "PYTHONPATH": str(ROOT),
        }

    def configure_workers(self, **settings: float) -> None:
        """Change the ``workers:`` section that worker processes started from now on read."""
        data = yaml.safe_load(self.config_path.read_text())
        data["workers"].update(settings)
        self.config_path.write_text(yaml.safe_dump(data))

    def configure_provider(self, name: str, **settings: Any) -> None:
        """Change (or add) one provider's entry before the intake and workers start."""
        data = yaml.safe_load(self.config_path.read_text())
        data["providers"].setdefault(name, {}).update(settings)
        self.config_path.write_text(yaml.safe_dump(data))
        self.config = load_config(self.config_path)

    def start_worker(self, broker_url: str | None = None, **kwargs: Any) -> WorkerProcess:
        worker = WorkerProcess(self.env(broker_url), **kwargs)
        self.workers.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        if self.server is not None:
            self.server.stop()

    # -- requests ------------------------------------------------------------------------

    def signed(
        self,
        provider: str,
        event_type: str = "issues.opened",
        event_id: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        entry = self.config.providers[provider]
        return entry.provider.signed_request(event_type, data, event_id=event_id or f"evt_{uuid.uuid4().hex}")

    def post(self, provider: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(f"{self.url}/webhooks/{provider}", content=body, headers=headers, timeout=30)

    # -- the store and the effects -------------------------------------------------------

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(events)).scalar_one()

    def event(self, provider: str, event_id: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(
                select(events).where(events.c.provider == provider, events.c.event_id == event_id)
            ).one_or_none()

    def statuses(self) -> dict[str, str]:
        with self.engine.connect() as conn:
            return dict(conn.execute(select(events.c.event_id, events.c.status)).all())

    def wait_status(self, provider: str, event_id: str, status: str, timeout: float = 30) -> Any:
        def reached() -> Any:
            row = self.event(provider, event_id)
            return row if row is not None and row.status == status else None

        return wait_for(reached, timeout, what=f"{provider}/{event_id} to be {status}")

    def resource(self, provider: str, resource_id: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(
                select(resources).where(resources.c.provider == provider, resources.c.resource_id == resource_id)
            ).one_or_none()

    def effects(self, kind: str = "effect") -> list[list[str]]:
        if not self.effects_file.exists():
            return []
        return [line.split() for line in self.effects_file.read_text().splitlines() if line.startswith(kind + " ")]


@pytest.fixture
def hookgate(tmp_path: Path, database_url: str, broker_url: str, engine: Any) -> Iterator[Hookgate]:
    system = Hookgate(tmp_path, database_url, broker_url, engine)
    yield system
    system.close()


@pytest.fixture
def fake_api() -> Iterator[FakeApi]:
    api = FakeApi().start()
    yield api
    api.stop()


@pytest.fixture
def store_outage(database_url: str) -> Iterator[Any]:
    """A context manager that makes the store refuse writes while it is open.

    SQLite: another connection holds the write lock (``BEGIN EXCLUSIVE``) so commits time out.
    PostgreSQL: the intake reaches the server through a TCP proxy that is cut and restored.
    Yields ``(url_for_the_intake, outage)``.
    """
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        path = url.database

        @contextmanager
        def locked() -> Iterator[None]:
            holder = sqlite3.connect(path, isolation_level=None)
            holder.execute("BEGIN EXCLUSIVE")
            try:
                yield
            finally:
                holder.execute("ROLLBACK")
                holder.close()

        yield database_url, locked
        return
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    proxy.start()

    @contextmanager
    def cut() -> Iterator[None]:
        proxy.stop()
        try:
            yield
        finally:
            proxy.start()

    yield url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False), cut
    proxy.stop()


@pytest.fixture
def silent_server(hookgate: Hookgate) -> Iterator[socket.socket]:
    """A TCP server that accepts and never answers; handlers that must hang read its port from the
    file ``silent_port`` and block in ``recv`` on it."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    closed = threading.Event()

    def accept() -> None:
        while not closed.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    (hookgate.dir / "silent_port").write_text(str(server.getsockname()[1]))
    yield server
    closed.set()
    server.close()
    for conn in accepted:
        conn.close()
