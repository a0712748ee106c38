"""The fault suite's fixture: the real system of ``tests/conftest.py`` with the handlers of
``tests/faults/handlers.py``, a concurrent sender, and the verdict every scenario ends with.

The verdict, for every event the intake answered ``200``: it ends ``processed`` (else it is
*lost*); its session handler's effect exists exactly once per round and no try failed on the
unique key (else it is *duplicated*). It also measures what each scenario reports: the time from
the fault to the last event processed, how many events the recovery sweeps sent again, and how
many plain handler runs were repeats (at-least-once delivery allows them; the scenarios say
where they must not happen).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
import yaml
from sqlalchemy import select
from sqlmodel import SQLModel

from gateway.models import events
from gateway.queue import NAMESPACE, QUEUE_NAME
from gateway.rabbitmq import is_rabbitmq_url
from tests.conftest import Hookgate
from tests.faults.handlers import LEDGER_PREFIXES, Effect
from tests.support import rabbitmq
from tests.support.holds import hold_writes, patient_url
from tests.support.servers import ROOT, WorkerProcess, wait_for

#: How long every scenario may take to bring all acknowledged events to ``processed``.
RECOVERY_DEADLINE = 45.0

#: The sweep's WARNINGs: events whose broker message was lost, or whose lease expired.
SWEEP_SENT = re.compile(r"\bsent (\d+) events again whose ")
SWEEP_FAILED = "hookgate-recovery failed"
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Timeout): .*$", re.MULTILINE)


@dataclass(slots=True)
class Answer:
    """The intake's answer to one POST (``status`` ``None``: no answer, the connection failed)."""

    status: int | None
    seconds: float
    retry_after: str | None = None
    error: str | None = None


@dataclass(slots=True)
class Figures:
    """What one scenario measured."""

    name: str
    events: int
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    recovered: float | None = None
    resent: int = 0
    reruns: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        recovered = "never" if self.recovered is None else f"{self.recovered:.1f} s"
        extra = "".join(f", {k} {v}" for k, v in self.extra.items())
        return (
            f"FAULT {self.name}: {self.events} events, lost {len(self.lost)}, duplicated {len(self.duplicated)}, "
            f"recovered in {recovered}, re-sent {self.resent}, re-run {self.reruns}{extra}"
        )


class Faults:
    """The system under test plus what the fault scenarios need around it."""

    def __init__(self, hookgate: Hookgate) -> None:
        self.hg = hookgate
        self.dir = hookgate.dir
        self.postgres = hookgate.engine.dialect.name == "postgresql"
        data = yaml.safe_load(hookgate.config_path.read_text())
        data["handlers"] = ["tests.faults.handlers"]
        hookgate.config_path.write_text(yaml.safe_dump(data))
        SQLModel.metadata.create_all(hookgate.engine, tables=[Effect.__table__])  # type: ignore[list-item]

    # -- event types -------------------------------------------------------------------

    @property
    def slow(self) -> str:
        """A handler that waits for ``release``; on PostgreSQL after writing through its session."""
        return "slowtx.job" if self.postgres else "slow.job"

    @property
    def hang(self) -> str:
        """A handler blocked in ``recv`` on its first try; on PostgreSQL after its session wrote."""
        return "hangtx.job" if self.postgres else "hang.job"

    def nap(self, milliseconds: int) -> str:
        """A handler that takes ``milliseconds``; on PostgreSQL after writing through its session."""
        return f"naptx.{milliseconds}" if self.postgres else f"nap.{milliseconds}"

    def release(self) -> None:
        (self.dir / "release").touch()

    # -- processes ---------------------------------------------------------------------

    def start_worker(
        self, *, threads: int = 4, processes: int = 1, prefetch: int | None = None, cli: bool = False, **env: str
    ) -> WorkerProcess:
        """A worker with extra environment (``dramatiq_queue_prefetch``, another store URL ...);
        ``cli``: started as ``hookgate worker`` rather than with Dramatiq's own command."""
        environment = {**self.hg.env(), **env}
        if prefetch is not None:
            environment["dramatiq_queue_prefetch"] = str(prefetch)
        worker = WorkerProcess(environment, processes=processes, threads=threads, cli=cli)
        self.hg.workers.append(worker)
        return worker

    def held(self, broker_url: str | None = None) -> int:
        """How many events workers have fetched (prefetched or running) and not acked, with Redis;
        with RabbitMQ, how many messages (a message may carry several events)."""
        url = broker_url or self.hg.broker_url
        if is_rabbitmq_url(url):
            return rabbitmq.unacknowledged(url)
        client = redis.Redis.from_url(url, decode_responses=True)
        try:
            keys = client.keys(f"{NAMESPACE}:__acks__.*.{QUEUE_NAME}")
            tokens = [token for key in keys for token in client.smembers(key)]
            data = client.hmget(f"{NAMESPACE}:{QUEUE_NAME}.msgs", tokens) if tokens else []
            return sum(len(orjson.loads(message)["args"][0]) for message in data if message)
        finally:
            client.close()

    def acks(self, redis_url: str | None = None) -> dict[str, set[str]]:
        """Each consumer's ack set (one per worker process): the message ids it has fetched and
        not acked."""
        client = redis.Redis.from_url(redis_url or self.hg.redis_url, decode_responses=True)
        try:
            keys = client.keys(f"{NAMESPACE}:__acks__.*.{QUEUE_NAME}")
            return {key: client.smembers(key) for key in keys}
        finally:
            client.close()

    # -- requests ----------------------------------------------------------------------

    def request(self, event_type: str, event_id: str, resource: str | None = None) -> tuple[bytes, dict[str, str]]:
        """A signed acme delivery; each event its own resource unless one is given."""
        return self.hg.signed("acme", event_type, event_id, {"id": resource or f"res-{event_id}", "version": 1})

    def post_many(
        self,
        requests: dict[str, tuple[bytes, dict[str, str]]],
        *,
        url: str | None = None,
        concurrency: int = 16,
        timeout: float = 30.0,
    ) -> dict[str, Answer]:
        """POST every request concurrently (``concurrency`` at a time); each event id's answer."""
        return asyncio.run(self._post_many(url or self.hg.url, requests, concurrency, timeout))

    @staticmethod
    async def _post_many(
        url: str, requests: dict[str, tuple[bytes, dict[str, str]]], concurrency: int, timeout: float
    ) -> dict[str, Answer]:
        gate = asyncio.Semaphore(concurrency)
        answers: dict[str, Answer] = {}

        async def one(client: httpx.AsyncClient, event_id: str, body: bytes, headers: dict[str, str]) -> None:
            async with gate:
                started = time.monotonic()
                try:
                    response = await client.post(f"{url}/webhooks/acme", content=body, headers=headers)
                except httpx.HTTPError as exc:
                    answers[event_id] = Answer(None, time.monotonic() - started, error=type(exc).__name__)
                    return
                answers[event_id] = Answer(
                    response.status_code, time.monotonic() - started, response.headers.get("retry-after")
                )

        async with httpx.AsyncClient(timeout=timeout) as client:
            await asyncio.gather(*(one(client, i, b, h) for i, (b, h) in requests.items()))
        return answers

    def post_until_accepted(
        self, requests: dict[str, tuple[bytes, dict[str, str]]], *, url: str | None = None, deadline: float = 30.0
    ) -> dict[str, Answer]:
        """Send again, as a provider does after a 503 or a dropped connection, until each is 200."""
        pending = dict(requests)
        answers: dict[str, Answer] = {}
        end = time.monotonic() + deadline
        while pending:
            for event_id, answer in self.post_many(pending, url=url).items():
                if answer.status == 200:
                    answers[event_id] = answer
                    del pending[event_id]
            if pending and time.monotonic() > end:
                raise AssertionError(f"{len(pending)} events never accepted, e.g. {sorted(pending)[:3]}")
            if pending:
                time.sleep(0.2)  # a sender's back-off between rounds, not a synchronisation
        return answers

    # -- the store and the effects -----------------------------------------------------

    def patient_database_url(self, seconds: float = 30.0) -> str:
        """The store's URL with a SQLite busy timeout of ``seconds`` (see tests.support.holds)."""
        return patient_url(self.hg.database_url, seconds)

    def hold_writes(self) -> AbstractContextManager[None]:
        """While open, every write to the events waits and reads go on (see tests.support.holds)."""
        return hold_writes(self.hg.engine)

    def rows(self, ids: Iterable[str]) -> dict[str, Any]:
        wanted = set(ids)
        with self.hg.engine.connect() as conn:
            found = conn.execute(select(events).where(events.c.provider == "acme")).all()
        return {row.event_id: row for row in found if row.event_id in wanted}

    def effects(self) -> Counter[tuple[str, str, int]]:
        """How many effect rows each (event id, handler, round) has."""
        with self.hg.engine.connect() as conn:
            found = conn.execute(select(Effect.event_id, Effect.handler, Effect.round)).all()  # type: ignore[call-overload]
        return Counter((row[0], row[1], row[2]) for row in found)

    def lines(self, kind: str) -> list[list[str]]:
        path = self.dir / "effects.log"
        if not path.exists():
            return []
        return [line.split() for line in path.read_text().splitlines() if line.startswith(kind + " ")]

    def occupy_then_queue(
        self, slow: dict[str, tuple[bytes, dict[str, str]]], queued: dict[str, tuple[bytes, dict[str, str]]]
    ) -> dict[str, Answer]:
        """Post ``slow`` and wait until each is in a handler, then post ``queued`` behind them: all 200."""
        answers = self.post_many(slow)
        wait_for(lambda: len(self.runs()) == len(slow), 60, what=f"{len(slow)} slow handlers to start")
        answers |= self.post_many(queued)
        assert {a.status for a in answers.values()} == {200}
        return answers

    def runs(self, kind: str = "start") -> Counter[str]:
        """How many times the plain handler reached ``kind`` for each event id."""
        return Counter(line[1] for line in self.lines(kind))

    def sweep_resends(self) -> int:
        """Events the recovery sweeps of every worker started so far sent again."""
        total = 0
        for worker in self.hg.workers:
            if worker.log.exists():
                total += sum(int(n) for n in SWEEP_SENT.findall(worker.log.read_text(errors="replace")))
        return total

    def logs(self) -> str:
        return "\n".join(w.log.read_text(errors="replace") for w in self.hg.workers if w.log.exists())

    def sweep_failures(self) -> tuple[int, list[str]]:
        """How many recovery sweep passes failed in every worker so far, and the distinct errors
        the logs show."""
        text = self.logs()
        return text.count(SWEEP_FAILED), sorted({m[:300] for m in EXCEPTION_LINE.findall(text)})

    def all_processed(self, ids: Iterable[str]) -> bool:
        wanted = list(ids)
        rows = self.rows(wanted)
        return len(rows) == len(wanted) and all(row.status == "processed" for row in rows.values())

    # -- the verdict -------------------------------------------------------------------

    def verdict(
        self,
        name: str,
        acknowledged: Iterable[str],
        since: float,
        *,
        deadline: float = RECOVERY_DEADLINE,
        extra: dict[str, Any] | None = None,
    ) -> Figures:
        """Wait (up to ``deadline``) for every acknowledged event to be processed, then measure.

        ``since`` is the ``time.monotonic()`` of the fault (or of its end), from which the
        recovery time is counted. Prints one line of figures and returns them; asserts nothing,
        so that a scenario can report its figures before it fails.
        """
        ids = sorted(set(acknowledged))
        end = time.monotonic() + deadline
        while not self.all_processed(ids) and time.monotonic() < end:
            time.sleep(0.05)
        recovered = time.monotonic() - since if self.all_processed(ids) else None
        rows = self.rows(ids)
        effects = self.effects()
        lost, duplicated = [], []
        for event_id in ids:
            row = rows.get(event_id)
            if row is None or row.status != "processed":
                lost.append(event_id)
                continue
            if "IntegrityError" in (row.last_error or ""):
                duplicated.append(event_id)
            if row.event_type.startswith(LEDGER_PREFIXES):
                counts = [effects[(event_id, "ledger", r)] for r in range(row.round + 1)]
                if any(count > 1 for count in counts):
                    duplicated.append(event_id)
                elif any(count == 0 for count in counts):
                    lost.append(event_id)  # processed, yet its effect is missing
        starts = self.runs("start")
        figures = Figures(
            name,
            len(ids),
            lost=lost,
            duplicated=sorted(set(duplicated)),
            recovered=recovered,
            resent=self.sweep_resends(),
            reruns=sum(max(0, starts[i] - 1 - (rows[i].round if i in rows else 0)) for i in ids),
            extra=extra or {},
        )
        failed_sweeps = self.sweep_failures()[0]
        if failed_sweeps:
            figures.extra["failed sweep passes"] = failed_sweeps
        print("\n" + figures.line(), flush=True)
        if lost:
            print("  not processed: " + ", ".join(f"{i}={rows[i].status if i in rows else 'missing'}" for i in lost))
        return figures

    def failure_report(self, ids: Iterable[str]) -> str:
        """The state of the given events and the workers' last log lines, for an assertion message."""
        rows = self.rows(ids)
        parts = [
            f"{i}: {r.status} attempts={r.attempts} round={r.round} error={(r.last_error or '')[:300]!r}"
            for i, r in sorted(rows.items())
        ]
        for worker in self.hg.workers:
            if worker.log.exists():
                tail = worker.log.read_text(errors="replace").splitlines()[-30:]
                parts.append(f"--- {worker.log.name}\n" + "\n".join(tail))
        return "\n".join(parts)


class Serve:
    """``hookgate serve`` (or ``run``: serve with a supervised worker) as a process of its own, as
    production runs it; in a session of its own, so that :meth:`kill` ends every child too."""

    def __init__(self, faults: Faults, port: int, *command: str, **env: str) -> None:
        self.faults, self.port, self.command, self.env = faults, port, command or ("serve",), env
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []

    def start(self) -> Serve:
        log = self.faults.dir / f"{self.command[0]}-{len(self.logs)}.log"
        self.logs.append(log)
        command = [sys.executable, "-m", "gateway.cli", *self.command, "--port", str(self.port)]
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                command,
                env={**self.faults.hg.env(), **self.env},
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self.ready, 60, interval=0.05, what=f"hookgate {self.command[0]} to answer")
        return self

    def ready(self) -> bool:
        assert self.process is not None
        assert self.process.poll() is None, self.logs[-1].read_text()
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def assert_nothing_lost_or_duplicated(faults: Faults, figures: Figures) -> None:
    assert len(figures.lost) == 0, f"lost {figures.lost}\n{faults.failure_report(figures.lost)}"
    assert len(figures.duplicated) == 0, f"duplicated {figures.duplicated}\n{faults.failure_report(figures.duplicated)}"


def assert_sweeps_never_failed(faults: Faults) -> None:
    """Outside an outage of the store or the broker, no recovery sweep pass may fail."""
    count, errors = faults.sweep_failures()
    assert count == 0, f"{count} recovery sweep passes failed; errors in the worker logs: {errors}"


def stays(predicate: Any, seconds: float, what: str) -> None:
    """Assert ``predicate`` holds at every poll for ``seconds``: an absence cannot be awaited."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert predicate(), what
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def faults(hookgate: Hookgate) -> Faults:
    return Faults(hookgate)


@pytest.fixture
def serve(faults: Faults) -> Iterator[Serve]:
    server = Serve(faults, free_port())
    yield server
    server.kill()
