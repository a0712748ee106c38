"""The intake's batch writer in a child process (gateway.writer_process), with real children:
what it stores, how its death is answered and survived, its failed sync, its signals, and that
it never outlives the intake."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from dramatiq.brokers.stub import StubBroker
from sqlalchemy.engine import make_url

from gateway.errors import StoreUnavailable
from gateway.ingest import Ingestor
from gateway.models import events
from gateway.queue import EventQueue
from gateway.writer_process import WriterProcess
from tests.gateway.test_ingest import row, statuses, wait_for
from tests.support.writers import WRITING_MARK

ROOT = Path(__file__).resolve().parents[2]


def patient(url: str) -> str:
    """SQLite: a busy timeout long enough to wait out :func:`writes_held` (the tests' 0.5 s
    would turn the wait into a failed write)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return url
    return parsed.update_query_dict({"timeout": "30"}).render_as_string(hide_password=False)


@contextmanager
def writes_held(engine: Any) -> Iterator[None]:
    """Every write to the events waits while open: SQLite's write lock, PostgreSQL's table lock."""
    if engine.dialect.name == "sqlite":
        holder = sqlite3.connect(engine.url.database, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    with engine.connect() as conn, conn.begin() as transaction:
        conn.exec_driver_sql(f"LOCK TABLE {events.name} IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            transaction.rollback()


@contextmanager
def ingestor_with(engine: Any, writer: WriterProcess, **options: Any) -> Iterator[Ingestor]:
    ingestor = Ingestor(engine, EventQueue(StubBroker()), writer=writer, **options)
    ingestor.start()
    try:
        yield ingestor
    finally:
        ingestor.stop()


def exits(ingestor: Ingestor) -> float:
    return ingestor.metrics.writer_exits._value.get()


def submit(ingestor: Ingestor, event_id: str) -> str:
    return asyncio.run(ingestor.submit(row(event_id)))


def test_batches_are_stored_once_and_marked_queued_by_the_child(engine: Any, database_url: str) -> None:
    writer = WriterProcess(database_url)
    with ingestor_with(engine, writer) as ingestor:
        child = writer.process
        assert child is not None
        assert child.poll() is None

        async def burst(ids: list[str]) -> list[str]:
            return await asyncio.gather(*(ingestor.submit(row(event_id)) for event_id in ids))

        assert asyncio.run(burst(["a", "b", "a"])).count("accepted") == 2
        assert asyncio.run(burst(["b", "c"])) == ["duplicate", "accepted"]
        wait_for(lambda: statuses(engine) == dict.fromkeys("abc", "queued"), "events marked queued")
        assert writer.process is child  # one child all along
    assert child.returncode == 0  # stopped with the intake, not killed


def test_a_child_killed_in_a_batch_costs_that_batch_and_a_new_one_writes_the_next(
    engine: Any, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch the child was writing is answered 503, whether or not it is stored in the end;
    the death is logged and counted, and the sender's retry is written by a new child."""
    mark = tmp_path / "writing"
    monkeypatch.setenv(WRITING_MARK, str(mark))
    writer = WriterProcess(patient(database_url), "tests.support.writers:announcing")
    with ingestor_with(engine, writer, commit_timeout=60) as ingestor:
        first = writer.process
        assert first is not None
        with writes_held(engine):

            async def killed_in_its_batch() -> None:
                answer = asyncio.ensure_future(ingestor.submit(row("k1")))
                await asyncio.to_thread(wait_for, mark.exists, "the child to begin the batch")
                os.kill(first.pid, signal.SIGKILL)
                with pytest.raises(StoreUnavailable):
                    await answer

            asyncio.run(killed_in_its_batch())
        assert exits(ingestor) == 1
        assert first.returncode == -signal.SIGKILL  # reaped
        # SQLite undoes the dead child's transaction; PostgreSQL's server runs the statement it
        # had received once the lock is free, and commits it: the retry is then a duplicate.
        retried = "duplicate" if engine.dialect.name == "postgresql" else "accepted"
        assert submit(ingestor, "k1") == retried
        assert writer.process is not None
        assert writer.process.pid != first.pid
        assert submit(ingestor, "k1") == "duplicate"
    assert set(statuses(engine)) == {"k1"}


def test_a_child_dead_between_batches_is_replaced_before_the_next(engine: Any, database_url: str) -> None:
    """A death found before a batch is sent costs no request anything."""
    writer = WriterProcess(database_url)
    with ingestor_with(engine, writer) as ingestor:
        first = writer.process
        assert first is not None
        assert submit(ingestor, "d1") == "accepted"
        first.kill()
        first.wait()
        assert submit(ingestor, "d2") == "accepted"
        assert exits(ingestor) == 1
        assert writer.process is not None
        assert writer.process.pid != first.pid


def test_a_refused_row_fails_alone_across_the_process_boundary(
    engine: Any, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child says whether the store refused what was written or was unavailable, so that a
    batch holding a row the store will never take is retried row by row, as on the thread."""
    mark = tmp_path / "writing"
    monkeypatch.setenv(WRITING_MARK, str(mark))
    writer = WriterProcess(patient(database_url), "tests.support.writers:announcing")
    poison = row("poison") | {"sequence": 2**70}  # past 64 bits: no store takes it
    with ingestor_with(engine, writer, commit_timeout=60) as ingestor:

        async def together() -> list[Any]:
            with writes_held(engine):
                first = asyncio.ensure_future(ingestor.submit(row("first")))
                await asyncio.to_thread(wait_for, mark.exists, "the first batch to begin")
                # These two wait while the first batch does, and go in the next batch together.
                both = asyncio.gather(ingestor.submit(row("good")), ingestor.submit(poison), return_exceptions=True)
                await asyncio.to_thread(wait_for, lambda: ingestor.waiting_rows == 2, "both to wait")
            return [await first, *(await both)]

        first, good, refused = asyncio.run(together())
        assert (first, good) == ("accepted", "accepted")
        assert isinstance(refused, StoreUnavailable)
        assert mark.read_text() == "poison"  # the last batch tried: the poisoned row alone
        assert exits(ingestor) == 0
    assert set(statuses(engine)) == {"first", "good"}


def test_a_failed_sync_in_the_child_stops_the_intake_acknowledging(engine: Any, database_url: str) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's WAL file")
    writer = WriterProcess(database_url, "tests.support.writers:failing_sync")
    with ingestor_with(engine, writer) as ingestor:
        with pytest.raises(StoreUnavailable):  # committed, and perhaps not on the disk
            submit(ingestor, "f1")
        assert "Input/output error" in (ingestor.sync_failed or "")
        for event_id in ("f1", "f2"):
            with pytest.raises(StoreUnavailable, match="Input/output error"):
                submit(ingestor, event_id)
        assert exits(ingestor) == 0
    assert set(statuses(engine)) == {"f1"}  # nothing after the failure was even written


def test_the_child_ignores_sigterm_and_sigint_until_the_intake_stops_it(engine: Any, database_url: str) -> None:
    """Ctrl-C and a service manager's SIGTERM reach the whole process group; the child must stay
    until the intake has written what waits, then exit when the intake stops it."""
    writer = WriterProcess(database_url)
    with ingestor_with(engine, writer) as ingestor:
        child = writer.process
        assert child is not None
        assert submit(ingestor, "s1") == "accepted"
        child.send_signal(signal.SIGTERM)
        child.send_signal(signal.SIGINT)
        assert submit(ingestor, "s2") == "accepted"
        assert writer.process is child
        assert child.poll() is None
    assert child.returncode == 0
    assert exits(ingestor) == 0


HOST = """
import sys, time
from gateway.writer_process import WriterProcess
writer = WriterProcess(sys.argv[1])
writer.start()
print(writer.process.pid, flush=True)
time.sleep(600)
"""


def gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie waiting for a reaper counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_the_child_never_outlives_the_intake(database_url: str) -> None:
    """An intake killed outright closes its end of the socket; the child exits on its own."""
    host = subprocess.Popen(
        [sys.executable, "-c", HOST, database_url], cwd=ROOT, stdout=subprocess.PIPE, start_new_session=False
    )
    try:
        assert host.stdout is not None
        child = int(host.stdout.readline())
        assert not gone(child)
        host.kill()
        host.wait()
        deadline = time.monotonic() + 10
        while not gone(child):
            assert time.monotonic() < deadline, "the writer process outlived the intake"
            time.sleep(0.02)
    finally:
        host.kill()


@pytest.mark.parametrize(
    ("url", "chosen", "expected"),
    [
        ("sqlite:///./hookgate.db", "process", True),
        ("postgresql+psycopg://u@h/db", "process", True),
        ("sqlite:///./hookgate.db", "thread", False),
        ("sqlite://", "process", False),  # in memory: no other process can open it
        ("sqlite:///:memory:", "process", False),
    ],
)
def test_serve_writes_in_a_process_unless_told_or_unable(url: str, chosen: str, expected: bool) -> None:
    from gateway.cli import _intake_writer
    from gateway.settings import Settings

    writer = _intake_writer(Settings(database_url=url, intake_writer=chosen))
    assert isinstance(writer, WriterProcess) is expected
