"""The intake and its dependencies under faults: ``hookgate serve`` stopped mid-stream, Redis
restarted empty, the store stopped. A sender retries whatever was not answered 200, as providers
do; every event answered 200 must end processed, each session effect once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.embedded_redis import EmbeddedRedis
from tests.faults.conftest import (
    Answer,
    Faults,
    Serve,
    assert_nothing_lost_or_duplicated,
    assert_sweeps_never_failed,
)
from tests.support import rabbitmq
from tests.support.servers import wait_for

pytestmark = pytest.mark.broker


def stream_with_fault(
    url: str, requests: dict[str, tuple[bytes, dict[str, str]]], fault: Callable[[], None], after: int
) -> tuple[dict[str, Answer], float]:
    """Post ``requests`` from 8 senders; call ``fault`` once ``after`` answers came back."""
    answers: dict[str, Answer] = {}
    faulted_at: list[float] = []

    async def run() -> None:
        pending = list(requests.items())

        async def sender(client: httpx.AsyncClient) -> None:
            while pending:
                event_id, (body, headers) = pending.pop(0)
                started = time.monotonic()
                try:
                    response = await client.post(f"{url}/webhooks/acme", content=body, headers=headers)
                    answers[event_id] = Answer(response.status_code, time.monotonic() - started)
                except httpx.HTTPError as exc:
                    answers[event_id] = Answer(None, time.monotonic() - started, error=type(exc).__name__)
                if len(answers) >= after and not faulted_at:
                    fault()
                    faulted_at.append(time.monotonic())

        async with httpx.AsyncClient(timeout=30) as client:
            await asyncio.gather(*(sender(client) for _ in range(8)))

    asyncio.run(run())
    return answers, faulted_at[0]


def test_sigterm_of_serve_under_load(faults: Faults, serve: Serve) -> None:
    """SIGTERM to ``hookgate serve`` mid-stream: every 200 was committed; the rest, sent again
    to a restarted ``serve``, are stored once (``duplicate`` if they had been committed)."""
    faults.start_worker(threads=4)
    serve.start()
    requests = {f"serve-{i}": faults.request("fx.serve", f"serve-{i}") for i in range(150)}
    assert serve.process is not None
    process = serve.process
    answers, stopped_at = stream_with_fault(serve.url, requests, lambda: process.send_signal(signal.SIGTERM), after=40)
    code = serve.process.wait(timeout=30)
    exited = time.monotonic() - stopped_at
    log = serve.logs[-1].read_text()
    ok = [i for i, a in answers.items() if a.status == 200]
    other = {i: a for i, a in answers.items() if a.status != 200}
    assert not [a for a in answers.values() if a.status is not None and 200 < a.status < 300]
    stored = faults.rows(requests)
    assert [i for i in ok if i not in stored] == [], "answered 200 and not stored"
    serve.start()  # restarted on the same port; the sender tries again
    again = faults.post_until_accepted({i: requests[i] for i in other}, url=serve.url)
    duplicates = sum(1 for i in other if i in stored)
    figures = faults.verdict(
        "sigterm-serve",
        requests,
        stopped_at,
        extra={
            "answered 200 before the stop": len(ok),
            "not answered": len(other),
            "of which already stored (sent again: duplicate)": duplicates,
            "serve exited after": f"{exited:.1f} s",
        },
    )
    assert_nothing_lost_or_duplicated(faults, figures)
    assert code == 0, log
    assert "Traceback" not in log, log
    assert len(again) == len(other)
    assert max(faults.runs().values()) == 1
    assert_sweeps_never_failed(faults)


def store_writer(serve: Serve) -> int:
    """The pid of the store writer process of ``serve`` (gateway.writer_process)."""
    assert serve.process is not None
    for task in Path(f"/proc/{serve.process.pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(FileNotFoundError):
                if b"gateway.writer_process" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return int(child)
    raise AssertionError("serve runs no store writer process")


def test_the_store_writer_process_killed_under_load(faults: Faults, serve: Serve) -> None:
    """SIGKILL to the process writing the intake's batches, mid-stream: ``serve`` goes on with a
    new one; every 200 was committed, the batch being written is answered 503 (stored or not),
    and the rest, sent again, are stored once. The exit is logged and counted."""
    faults.start_worker(threads=4)
    serve.start()
    first = store_writer(serve)
    requests = {f"writer-{i}": faults.request("fx.writer", f"writer-{i}") for i in range(150)}
    answers, killed_at = stream_with_fault(serve.url, requests, lambda: os.kill(first, signal.SIGKILL), after=40)
    ok = [i for i, a in answers.items() if a.status == 200]
    other = {i: a for i, a in answers.items() if a.status != 200}
    assert {a.status for a in other.values()} <= {503}, other
    stored = faults.rows(requests)
    assert [i for i in ok if i not in stored] == [], "answered 200 and not stored"
    again = faults.post_until_accepted({i: requests[i] for i in other}, url=serve.url)
    figures = faults.verdict(
        "writer-killed",
        requests,
        killed_at,
        extra={
            "answered 200 at once": len(ok),
            "answered 503": len(other),
            "of which stored": len(set(other) & set(stored)),
        },
    )
    assert_nothing_lost_or_duplicated(faults, figures)
    assert len(again) == len(other)
    assert serve.ready()  # the same serve process all along
    assert store_writer(serve) != first
    metrics = httpx.get(f"{serve.url}/metrics").text
    assert "hookgate_intake_writer_exits_total 1.0" in metrics
    log = serve.logs[-1].read_text()
    assert "store writer process exited" in log
    assert "Traceback" not in log, log
    assert max(faults.runs().values()) == 1
    assert_sweeps_never_failed(faults)


@pytest.fixture
def private_redis() -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own (a Unix socket), so that it can be stopped and started empty."""
    if rabbitmq.configured_url():
        pytest.skip(rabbitmq.REDIS_ONLY)
    server = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="hgf-")))
    server.start()
    yield server
    server.stop()


def test_redis_restarted_empty_under_load(faults: Faults, private_redis: EmbeddedRedis) -> None:
    """Redis stops with events queued and prefetched and comes back empty at the same address:
    meanwhile the intake answers 200 only for what it stored, else 503; nothing acknowledged is lost."""
    url = private_redis.url
    faults.hg.start_intake(broker_url=url)
    faults.start_worker(threads=4, prefetch=8, HOOKGATE_REDIS_URL=url)
    slow = [f"redis-slow-{i}" for i in range(4)]
    queued = [f"redis-fx-a{i}" for i in range(30)]
    during = [f"redis-fx-b{i}" for i in range(30)]
    requests = {i: faults.request(faults.slow, i) for i in slow}
    requests |= {i: faults.request("fx.redis", i) for i in queued + during}
    faults.occupy_then_queue({i: requests[i] for i in slow}, {i: requests[i] for i in queued})
    wait_for(lambda: faults.held(url) >= 8, 15, what="the worker to prefetch")
    in_redis = faults.held(url)
    private_redis.stop()
    (private_redis.data_dir / "appendonly.aof").unlink(missing_ok=True)  # it comes back empty
    stopped_at = time.monotonic()
    down = faults.post_many({i: requests[i] for i in during})
    assert {a.status for a in down.values()} <= {200, 503}, down
    accepted_down = [i for i, a in down.items() if a.status == 200]
    stored = faults.rows(during)
    assert [i for i in accepted_down if i not in stored] == [], "answered 200 and not stored"
    assert all(a.retry_after for a in down.values() if a.status == 503)
    private_redis.start()
    restarted_at = time.monotonic()
    faults.release()
    again = faults.post_until_accepted({i: requests[i] for i in during if i not in accepted_down})
    figures = faults.verdict(
        "redis-restarted-empty",
        requests,
        restarted_at,
        extra={
            "prefetched or running when stopped": in_redis,
            "answered 200 while down": len(accepted_down),
            "answered 503 while down": len(down) - len(accepted_down),
            "down for": f"{restarted_at - stopped_at:.1f} s",
        },
    )
    assert_nothing_lost_or_duplicated(faults, figures)
    assert len(again) + len(accepted_down) == len(during)
    assert all(faults.runs()[i] == 1 for i in queued + during), "an event that was not running ran twice"


def test_rabbitmq_restarted_under_load(faults: Faults, rabbitmq_url: str) -> None:
    """RabbitMQ stops (``rabbitmqctl stop_app``) with messages queued, prefetched and running, and
    starts again: durable queues and persistent messages come back, and what was delivered and not
    acknowledged is delivered again. Meanwhile the intake answers 200 only for what it stored, else
    503, and /readyz says the broker is down. Every event ends processed, none twice."""
    faults.hg.start_intake()
    faults.start_worker(threads=4, prefetch=8)
    slow = [f"rmq-slow-{i}" for i in range(4)]
    queued = [f"rmq-fx-a{i}" for i in range(30)]
    during = [f"rmq-fx-b{i}" for i in range(30)]
    requests = {i: faults.request(faults.slow, i) for i in slow}
    requests |= {i: faults.request("fx.rabbit", i) for i in queued + during}
    faults.occupy_then_queue({i: requests[i] for i in slow}, {i: requests[i] for i in queued})
    wait_for(lambda: faults.held() >= 8, 15, what="the worker to prefetch")
    ready, unacked = rabbitmq.queue_counts(rabbitmq_url)
    with rabbitmq.stopped(rabbitmq_url):
        stopped_at = time.monotonic()
        down = faults.post_many({i: requests[i] for i in during})
        readyz = httpx.get(f"{faults.hg.url}/readyz", timeout=30)
    restarted_at = time.monotonic()
    assert {a.status for a in down.values()} <= {200, 503}, down
    accepted_down = [i for i, a in down.items() if a.status == 200]
    stored = faults.rows(during)
    assert [i for i in accepted_down if i not in stored] == [], "answered 200 and not stored"
    assert all(a.retry_after for a in down.values() if a.status == 503)
    assert (readyz.status_code, "broker" in readyz.json()["problems"]) == (503, True)
    faults.release()
    again = faults.post_until_accepted({i: requests[i] for i in during if i not in accepted_down})
    figures = faults.verdict(
        "rabbitmq-restarted",
        requests,
        restarted_at,
        extra={
            "ready / unacked when stopped": f"{ready} / {unacked}",
            "answered 200 while down": len(accepted_down),
            "answered 503 while down": len(down) - len(accepted_down),
            "down for": f"{restarted_at - stopped_at:.1f} s",
        },
    )
    assert_nothing_lost_or_duplicated(faults, figures)
    assert len(again) + len(accepted_down) == len(during)
    assert max(faults.runs().values()) == 1, "an event ran twice"


def test_store_stopped_at_the_intake(faults: Faults, store_outage: Any) -> None:
    """The store goes away under load (SQLite: its write lock held; PostgreSQL: connections cut
    and refused) for the intake and the workers, with four handlers running and 30 events
    queued: every answer meanwhile is 503 with Retry-After, within 3 s, never 2xx; after it
    returns, every event acknowledged before is processed, each effect once."""
    url, outage = store_outage
    faults.hg.start_intake(database_url=url)
    faults.start_worker(threads=4, HOOKGATE_DATABASE_URL=url)
    slow = [f"store-slow-{i}" for i in range(4)]
    before = [f"store-fx-a{i}" for i in range(30)]
    during = [f"store-fx-b{i}" for i in range(30)]
    requests = {i: faults.request(faults.slow, i) for i in slow}
    requests |= {i: faults.request("fx.store", i) for i in before + during}
    faults.occupy_then_queue({i: requests[i] for i in slow}, {i: requests[i] for i in before})
    lease = faults.hg.config.workers.lease_seconds
    with outage():
        cut_at = time.monotonic()
        down = faults.post_many({i: requests[i] for i in during})
        down |= faults.post_many({"store-probe": faults.request("fx.store", "store-probe")})
        faults.release()  # the running handlers return while the store is away
        wait_for(lambda: len(faults.lines("done")) == 4, 30, what="the slow handlers to return")
        time.sleep(max(0.0, cut_at + lease + 1 - time.monotonic()))  # the outage lasts past a lease
        held = time.monotonic() - cut_at
    restored_at = time.monotonic()
    statuses = sorted({a.status or 0 for a in down.values()})
    slowest = max(a.seconds for a in down.values())
    stored_anyway = sorted(i for i in faults.rows(during))
    again = faults.post_until_accepted({i: requests[i] for i in during})
    figures = faults.verdict(
        "store-stopped",
        [*slow, *before, *during],
        restored_at,
        extra={
            "answers while stopped": "/".join(map(str, statuses)),
            "slowest answer": f"{slowest:.2f} s",
            "outage": f"{held:.1f} s",
        },
    )
    assert_nothing_lost_or_duplicated(faults, figures)
    assert statuses == [503], down
    assert all(a.retry_after for a in down.values())
    assert slowest <= 3.0, f"a 503 took {slowest:.2f} s"
    assert stored_anyway == [], "a request answered 503 was stored"
    assert len(again) == len(during)
    assert all(faults.runs()[i] == 1 for i in before + during)
