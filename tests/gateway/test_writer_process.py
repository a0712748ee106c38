"""The intake's batch writer in a child process (gateway.writer_process), with real children:
what it stores, how its death is answered and survived, its failed sync, its signals, and that
it never outlives the intake."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from sqlalchemy import select

from gateway import child_commit
from gateway.child_commit import ChildIngestor
from gateway.errors import StoreUnavailable
from gateway.ingest import Ingestor
from gateway.models import events
from gateway.queue import NAMESPACE, QUEUE_NAME, EventQueue, create_broker
from gateway.writer_process import DEFAULT_FACTORY, WriterProcess
from tests.gateway.test_ingest import row, statuses, wait_for
from tests.support.holds import hold_writes, patient_url
from tests.support.writers import KEEPER_PID, REFUSE_WHILE, STALL_WHILE, WRITING_MARK

ROOT = Path(__file__).resolve().parents[2]
ANNOUNCING = "tests.support.writers:announcing"
STALLING = "tests.support.writers:stalling"
LINGERING = "tests.support.writers:lingering"


async def opened(
    engine: Any, url: str, broker_url: str, factory: str = DEFAULT_FACTORY, **options: Any
) -> ChildIngestor:
    """A ChildIngestor started on the running loop (the caller closes it)."""
    process = WriterProcess(url, broker_url, factory)
    ingestor = ChildIngestor(engine, EventQueue(create_broker(broker_url)), process=process, **options)
    await ingestor.open()
    return ingestor


@contextlib.asynccontextmanager
async def child_ingestor(engine: Any, url: str, broker_url: str, factory: str = DEFAULT_FACTORY, **options: Any) -> Any:
    """A started ChildIngestor on the running loop, closed on the way out."""
    ingestor = await opened(engine, url, broker_url, factory, **options)
    try:
        yield ingestor
    finally:
        await ingestor.close()


def exits(ingestor: Ingestor) -> float:
    return ingestor.metrics.writer_exits._value.get()


async def poll(check: Any, what: str) -> None:
    await asyncio.to_thread(wait_for, check, what)


def test_batches_are_stored_once_and_enqueued_and_marked_queued_by_the_child(
    engine: Any, database_url: str, redis_url: str
) -> None:
    async def scenario() -> subprocess.Popen[bytes]:
        async with child_ingestor(engine, database_url, redis_url, idle_after=0.2) as ingestor:
            assert "hookgate-relay" not in {thread.name for thread in threading.enumerate()}
            child = ingestor.process.process
            assert child is not None
            assert child.poll() is None

            async def burst(ids: list[str]) -> list[str]:
                return await asyncio.gather(*(ingestor.submit(row(event_id)) for event_id in ids))

            assert (await burst(["a", "b", "a"])).count("accepted") == 2
            assert await burst(["b", "c"]) == ["duplicate", "accepted"]
            # The relay's ids are marked by the next batch or, with none, by the idle pass, which
            # also gives the connection back.
            await poll(lambda: statuses(engine) == dict.fromkeys("abc", "queued"), "events marked queued")
            await poll(lambda: not ingestor._holding, "the connection given back")
            assert ingestor.process.process is child  # one child all along
        return child

    child = asyncio.run(scenario())
    assert child.returncode == 0  # stopped with the intake, not killed
    assert sorted(pk for message in broker_messages(redis_url) for pk in message) == sorted(ids_of(engine).values())


def test_closing_writes_and_enqueues_every_delivery_still_waiting(
    engine: Any, database_url: str, redis_url: str
) -> None:
    async def scenario() -> list[str]:
        async with child_ingestor(engine, database_url, redis_url) as ingestor:
            answers = [asyncio.ensure_future(ingestor.submit(row(f"w{i}"))) for i in range(50)]
            await asyncio.sleep(0)  # each task hands its row over; none is written yet
            assert ingestor._pending
        return [answer.result() for answer in answers]

    assert asyncio.run(scenario()) == ["accepted"] * 50
    # The last batch's events were enqueued once it was answered, before the child read the idle
    # pass that closing sends and let it go.
    assert statuses(engine) == {f"w{i}": "queued" for i in range(50)}
    assert sorted(pk for message in broker_messages(redis_url) for pk in message) == sorted(ids_of(engine).values())


def test_a_child_killed_in_a_batch_costs_that_batch_and_a_new_one_writes_the_next(
    engine: Any, database_url: str, broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch the child was writing is answered 503, whether or not it is stored in the end;
    the death is logged and counted, and the sender's retry is written by a new child."""
    mark = tmp_path / "writing"
    monkeypatch.setenv(WRITING_MARK, str(mark))

    async def scenario() -> None:
        async with child_ingestor(
            engine, patient_url(database_url), broker_url, ANNOUNCING, commit_timeout=60
        ) as ingestor:
            first = ingestor.process.process
            assert first is not None
            with hold_writes(engine):
                answer = asyncio.ensure_future(ingestor.submit(row("k1")))
                await poll(mark.exists, "the child to begin the batch")
                os.kill(first.pid, signal.SIGKILL)
                with pytest.raises(StoreUnavailable):
                    await answer
            assert exits(ingestor) == 1
            await poll(lambda: first.returncode == -signal.SIGKILL, "the child reaped")
            # SQLite undoes the dead child's transaction. PostgreSQL's server runs the statement
            # once the lock is free and commits it, if it had received it before the kill (the
            # mark is written just before it is sent): the retry is then a duplicate.
            retried = {"accepted", "duplicate"} if engine.dialect.name == "postgresql" else {"accepted"}
            assert await ingestor.submit(row("k1")) in retried
            assert ingestor.process.pid != first.pid
            assert await ingestor.submit(row("k1")) == "duplicate"

    asyncio.run(scenario())
    assert set(statuses(engine)) == {"k1"}


def test_a_commit_that_never_ends_is_answered_503_in_time(engine: Any, database_url: str, broker_url: str) -> None:
    """No timer per request: the idle pass answers every wait past ``commit_timeout``, the one in
    the batch being written and those queued behind it."""

    async def scenario() -> list[Any]:
        async with child_ingestor(
            engine, patient_url(database_url), broker_url, commit_timeout=1, idle_after=0.2
        ) as ingestor:
            with hold_writes(engine):
                first = asyncio.ensure_future(ingestor.submit(row("slow-1")))
                await poll(lambda: ingestor._flight is not None and ingestor._flight.kind == "write", "a batch")
                second = asyncio.ensure_future(ingestor.submit(row("slow-2")))
                answers = await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), 5)
        return answers

    answers = asyncio.run(scenario())
    assert [type(answer) for answer in answers] == [StoreUnavailable, StoreUnavailable], answers
    assert all("in time" in str(answer) for answer in answers)
    assert set(statuses(engine)) == {"slow-1", "slow-2"}  # written once the store was back


def test_a_child_dead_between_batches_is_replaced_at_once(engine: Any, database_url: str, broker_url: str) -> None:
    """A death found between batches costs no request anything."""

    async def scenario() -> None:
        async with child_ingestor(engine, database_url, broker_url) as ingestor:
            first = ingestor.process.process
            assert first is not None
            assert await ingestor.submit(row("d1")) == "accepted"
            first.kill()
            await poll(lambda: exits(ingestor) == 1, "the exit noticed")
            assert await ingestor.submit(row("d2")) == "accepted"
            assert ingestor.process.pid != first.pid

    asyncio.run(scenario())


def test_a_child_that_stops_answering_is_killed_and_replaced(engine: Any, database_url: str, broker_url: str) -> None:
    """A child that holds a batch past ``flight_timeout`` (stopped here; in life a database gone
    mid-statement, whose TCP connection can take many minutes to fail) is killed: its batch is
    answered 503 as with any death, and a new child writes the next, instead of every request
    waiting behind it until ``serve`` is restarted."""

    async def scenario() -> None:
        async with child_ingestor(engine, database_url, broker_url, commit_timeout=60) as ingestor:
            ingestor.flight_timeout = 1.0
            first = ingestor.process.process
            assert first is not None
            os.kill(first.pid, signal.SIGSTOP)
            try:
                with pytest.raises(StoreUnavailable):
                    await asyncio.wait_for(ingestor.submit(row("s1")), 15)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(first.pid, signal.SIGCONT)
            await poll(lambda: first.returncode == -signal.SIGKILL, "the stopped child killed and reaped")
            assert exits(ingestor) == 1
            assert await asyncio.wait_for(ingestor.submit(row("s1")), 15) == "accepted"
            assert ingestor.process.pid != first.pid

    asyncio.run(scenario())
    assert set(statuses(engine)) == {"s1"}


def test_a_child_killed_for_lateness_is_given_up_even_while_its_socket_stays_open(
    engine: Any, database_url: str, broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process in a system call that cannot be interrupted (a dead disk) dies only when the
    call returns, so its socket does not close when it is killed: the intake gives it up at once
    all the same, answers its batch 503, and a new child writes the next."""
    keeper_pid = tmp_path / "keeper"
    monkeypatch.setenv(KEEPER_PID, str(keeper_pid))

    async def scenario() -> None:
        async with child_ingestor(engine, database_url, broker_url, LINGERING, commit_timeout=60) as ingestor:
            ingestor.flight_timeout = 1.0
            first = ingestor.process.pid
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(ingestor.submit(row("g1")), 15)
            assert keeper_pid.exists()
            assert await asyncio.wait_for(ingestor.submit(row("g1")), 15) == "accepted"
            assert ingestor.process.pid != first

    try:
        asyncio.run(scenario())
    finally:
        if keeper_pid.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(keeper_pid.read_text()), signal.SIGKILL)
    assert set(statuses(engine)) == {"g1"}


def test_a_new_child_that_hangs_opening_is_killed_and_replaced(
    engine: Any, database_url: str, broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stall = tmp_path / "stall"
    monkeypatch.setenv(STALL_WHILE, str(stall))

    async def scenario() -> None:
        async with child_ingestor(engine, database_url, broker_url, STALLING) as ingestor:
            ingestor.start_timeout = 1.0
            first = ingestor.process.process
            assert first is not None
            stall.touch()
            first.kill()
            await poll(lambda: ingestor.process.process not in (None, first), "a new child")
            hung = ingestor.process.process
            assert hung is not None
            await poll(lambda: hung.returncode == -signal.SIGKILL, "the hung child killed")
            stall.unlink()
            assert await asyncio.wait_for(ingestor.submit(row("h1")), 20) == "accepted"

    asyncio.run(scenario())


def test_closing_while_no_child_can_open(
    engine: Any, database_url: str, broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``close`` while the new child fails to open: with nothing waiting it returns at once,
    not after ``STOP_SECONDS``; what is still waiting when it gives up is answered 503, not left
    hanging; and no child is started after it returns."""
    stall, refuse = tmp_path / "stall", tmp_path / "refuse"
    monkeypatch.setenv(STALL_WHILE, str(stall))
    monkeypatch.setenv(REFUSE_WHILE, str(refuse))
    monkeypatch.setattr(child_commit, "STOP_SECONDS", 6.0)

    async def close_after_a_failed_opening(waiting: bool) -> list[Any]:
        refuse.unlink(missing_ok=True)
        ingestor = await opened(engine, database_url, broker_url, STALLING)
        first = ingestor.process.process
        assert first is not None
        stall.touch()
        refuse.touch()
        first.kill()
        await poll(lambda: ingestor.process.process not in (None, first), "a new child")
        answers = [asyncio.ensure_future(ingestor.submit(row("c1")))] if waiting else []
        closing = asyncio.ensure_future(ingestor.close())
        await asyncio.sleep(0)
        stall.unlink()  # the child goes on, and fails to open
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(closing, 10)
        took = asyncio.get_running_loop().time() - started
        results = await asyncio.wait_for(asyncio.gather(*answers, return_exceptions=True), 5)
        # A failed opening is tried again after RESTART_DELAY: none may come once closed.
        await asyncio.sleep(child_commit.RESTART_DELAY + 0.5)
        assert ingestor.process.process is None, "a child started after close()"
        return [took, *results]

    took, *_ = asyncio.run(close_after_a_failed_opening(waiting=False))
    assert took < 3, f"close() waited {took:.1f} s with nothing to write"
    took, answer = asyncio.run(close_after_a_failed_opening(waiting=True))
    assert isinstance(answer, StoreUnavailable), answer
    assert set(statuses(engine)) == set()


def test_a_delivery_handed_over_after_close_is_answered_503(engine: Any, database_url: str, broker_url: str) -> None:
    """Late requests (a connection still being served as the lifespan ends) get their 503 at once:
    no child will come to write them, and no timer watches them."""

    async def scenario() -> None:
        ingestor = await opened(engine, database_url, broker_url)
        await ingestor.close()
        with pytest.raises(StoreUnavailable, match="stopping"):
            await asyncio.wait_for(ingestor.submit(row("late")), 5)
        assert ingestor.waiting_rows == 0

    asyncio.run(scenario())


def test_a_refused_row_fails_alone_across_the_process_boundary(
    engine: Any, database_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child says whether the store refused what was written or was unavailable, so that a
    batch holding a row the store will never take is retried key by key, as on the thread; the
    keys written go to the broker together, in the one message their shared token names (sent
    once for each key, the later message replaced the earlier in Redis)."""
    mark = tmp_path / "writing"
    monkeypatch.setenv(WRITING_MARK, str(mark))
    poison = row("poison") | {"sequence": 2**70}  # past 64 bits: no store takes it

    async def scenario() -> tuple[list[Any], list[list[int]]]:
        async with child_ingestor(
            engine, patient_url(database_url), redis_url, ANNOUNCING, commit_timeout=60
        ) as ingestor:
            with hold_writes(engine):
                first = asyncio.ensure_future(ingestor.submit(row("first")))
                await poll(mark.exists, "the first batch to begin")
                # These wait while the first batch does, and go in the next batch together.
                rest = [ingestor.submit(row("good-1")), ingestor.submit(poison), ingestor.submit(row("good-2"))]
                together = asyncio.gather(*rest, return_exceptions=True)
                await poll(lambda: ingestor.waiting_rows == 3, "the three to wait")
            answers = [await first, *(await together)]
            assert exits(ingestor) == 0
        return answers, broker_messages(redis_url)

    (first, good_1, refused, good_2), messages = asyncio.run(scenario())
    assert (first, good_1, good_2) == ("accepted", "accepted", "accepted")
    assert isinstance(refused, StoreUnavailable)
    assert mark.read_text() == "good-2"  # the last batch tried: one row alone
    ids = ids_of(engine)
    assert set(ids) == {"first", "good-1", "good-2"}
    assert sorted(map(sorted, messages)) == sorted([[ids["first"]], sorted([ids["good-1"], ids["good-2"]])])


def broker_messages(redis_url: str) -> list[list[int]]:
    """The event ids of each message waiting in Redis, in the queue's order."""
    client = redis.Redis.from_url(redis_url)
    try:
        tokens = client.lrange(f"{NAMESPACE}:{QUEUE_NAME}", 0, -1)
        bodies = client.hmget(f"{NAMESPACE}:{QUEUE_NAME}.msgs", tokens) if tokens else []
    finally:
        client.close()
    return [dramatiq.Message.decode(body).args[0] for body in bodies]


def ids_of(engine: Any) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(select(events.c.event_id, events.c.id)).all())  # type: ignore[arg-type]


def test_a_batch_that_cannot_be_sent_fails_alone(engine: Any, database_url: str, broker_url: str) -> None:
    """A value ``marshal`` refuses (none of the intake's rows has one) fails its batch as an
    unavailable store would, and the next batch goes as usual."""

    class Text(str):
        pass

    async def scenario() -> tuple[BaseException | str, str]:
        async with child_ingestor(engine, database_url, broker_url) as ingestor:
            odd = await asyncio.gather(ingestor.submit(row("odd") | {"headers": Text("{}")}), return_exceptions=True)
            return odd[0], await ingestor.submit(row("next"))

    odd, following = asyncio.run(scenario())
    assert isinstance(odd, StoreUnavailable)
    assert following == "accepted"


def test_a_failed_sync_in_the_child_stops_the_intake_acknowledging(
    engine: Any, database_url: str, broker_url: str
) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's WAL file")

    async def scenario() -> None:
        async with child_ingestor(engine, database_url, broker_url, "tests.support.writers:failing_sync") as ingestor:
            with pytest.raises(StoreUnavailable):  # committed, and perhaps not on the disk
                await ingestor.submit(row("f1"))
            assert "Input/output error" in (ingestor.sync_failed or "")
            for event_id in ("f1", "f2"):
                with pytest.raises(StoreUnavailable, match="Input/output error"):
                    await ingestor.submit(row(event_id))
            assert exits(ingestor) == 0

    asyncio.run(scenario())
    assert set(statuses(engine)) == {"f1"}  # nothing after the failure was even written


def test_the_child_ignores_sigterm_and_sigint_until_the_intake_stops_it(
    engine: Any, database_url: str, broker_url: str
) -> None:
    """Ctrl-C and a service manager's SIGTERM reach the whole process group; the child must stay
    until the intake has written what waits, then exit when the intake stops it."""

    async def scenario() -> subprocess.Popen[bytes]:
        async with child_ingestor(engine, database_url, broker_url) as ingestor:
            child = ingestor.process.process
            assert child is not None
            assert await ingestor.submit(row("s1")) == "accepted"
            child.send_signal(signal.SIGTERM)
            child.send_signal(signal.SIGINT)
            assert await ingestor.submit(row("s2")) == "accepted"
            assert ingestor.process.process is child
            assert exits(ingestor) == 0
        return child

    assert asyncio.run(scenario()).returncode == 0


HOST = """
import sys, time
from gateway import child_commit
from gateway.child_commit import ChildIngestor
from gateway.writer_process import DEFAULT_FACTORY, WriterProcess
writer = WriterProcess(sys.argv[1], sys.argv[2])
end = writer.spawn()
print(writer.pid, flush=True)
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
        [sys.executable, "-c", HOST, database_url, "redis://127.0.0.1:1"], cwd=ROOT, stdout=subprocess.PIPE
    )
    try:
        assert host.stdout is not None
        child = int(host.stdout.readline())
        assert not gone(child)
        host.kill()
        host.wait()
        wait_for(lambda: gone(child), "the writer process to exit with the intake")
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

    writer = _intake_writer(Settings(database_url=url, intake_writer=chosen), "redis://127.0.0.1:1")
    assert isinstance(writer, WriterProcess) is expected
