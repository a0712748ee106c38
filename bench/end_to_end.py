"""Benchmark: end to end, from POST to handler completion, with reconciliation, in one run.

``hookgate serve`` and ``hookgate worker`` (1, then 4 threads) run as in production against a
fresh SQLite store (or $HOOKGATE_DATABASE_URL) and Redis (embedded, or $HOOKGATE_REDIS_URL). A
fake provider API on 127.0.0.1 answers the reconciliation fetches. Each run posts EVENTS events
(RESOURCES resources x versions, ordering window 0) from CONCURRENCY concurrent clients; a
handler records when it ran. Reported: events/s from the first POST to the last handler, the
p50/p99 of POST-to-handler latency, API fetches per event, and, as the yardstick measured in the
same run with the same client, the rate at which a bare Starlette endpoint accepts those POSTs.

    python bench/end_to_end.py [--events 2000] [--resources 200] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.intake import HERE, free_port, start, wait_ready
from gateway.config import load_config
from gateway.embedded_redis import EmbeddedRedis
from tests.support.fake_api import FakeApi

CONFIG = """
defaults:
  ordering: {{window_ms: 0}}
providers:
  things:
    type: hmac
    secrets: ["bench-secret-0123456789"]
    signature: {{header: X-Signature, algorithm: sha256, encoding: hex}}
    event: {{id: "header:X-Event-Id", type: "body:type", resource: "body:data.id", sequence: "body:data.version"}}
    api: {{base_url: "{api}", token: "bench-token", resource_path: "/v1/things/{{resource}}"}}
handlers: [bench.e2e_handlers]
"""


async def post_all(
    url: str,
    requests: list[tuple[bytes, dict[str, str]]],
    concurrency: int,
    rate: float | None = None,
    sent: list[float] | None = None,
) -> float:
    """POST every request over ``concurrency`` keep-alive connections, as fast as possible or at
    ``rate`` requests/s; returns when the first was sent. ``sent``, if given, receives each
    request's send time (time.time()) at its index: the client's own clock for POST→handler.

    A few lines of HTTP/1.1 on asyncio streams: httpx's async pool managed about 130 requests/s
    with 32 connections on these machines, which would have measured the client, not the server.
    """
    parts = urlsplit(url)
    queue: asyncio.Queue[tuple[int, bytes, dict[str, str]]] = asyncio.Queue()
    for index, (body, headers) in enumerate(requests):
        queue.put_nowait((index, body, headers))
    loop = asyncio.get_running_loop()

    async def sender() -> None:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            while not queue.empty():
                index, body, headers = queue.get_nowait()
                if rate:
                    await asyncio.sleep(max(0.0, begin + index / rate - loop.time()))
                head = f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Length: {len(body)}\r\n"
                head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
                if sent is not None:
                    sent[index] = time.time()
                writer.write(head.encode() + b"\r\n" + body)
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode().partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                answer = await reader.readexactly(length)
                if b" 200 " not in status_line:
                    raise SystemExit(f"POST answered {status_line.decode().strip()}: {answer[:200]!r}")
        finally:
            writer.close()

    started, begin = time.time(), loop.time()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    return started


@dataclass(frozen=True)
class Done:
    """One line of a handler's done log (bench/e2e_handlers.py, bench/peer/tasks.py)."""

    at: float  #: when the handler ran (time.time())
    latency: float  #: seconds since the stack received the event, by its own clock
    event_id: str
    resource: str
    version: int | None


def read_done(out: Path) -> list[Done]:
    """Every complete line of the done logs in ``out`` (a handler may be writing the last one)."""
    done = []
    for f in out.glob("done-*"):
        text = f.read_text()
        for line in text[: text.rfind("\n") + 1].splitlines():
            at, latency, *rest = line.split()
            event_id, resource, version = rest if len(rest) == 3 else ("", "", "None")
            number = None if version == "None" else int(version)
            done.append(Done(float(at), float(latency), event_id, resource, number))
    return done


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summarize(finished_at: list[float], latencies: list[float], started: float) -> dict[str, float]:
    """events/s from ``started`` (the first POST) to the last handler, and the p50/p99 of
    ``latencies`` (seconds) in milliseconds."""
    millis = [latency * 1000 for latency in latencies]
    return {
        "events": len(finished_at),
        "rate": len(finished_at) / (max(finished_at) - started),
        "p50": statistics.median(millis),
        "p99": percentile(millis, 0.99),
    }


@contextmanager
def redis_server(tmp: Path, url: str | None = None) -> Iterator[str]:
    """The Redis of a run: ``url``, else $HOOKGATE_REDIS_URL, else an embedded one under ``tmp``.

    Between runs only this URL's database is flushed (never FLUSHALL: a shared Redis holds
    other people's databases)."""
    url = url or os.environ.get("HOOKGATE_REDIS_URL")
    if url:
        yield url
        return
    embedded = EmbeddedRedis(tmp / "redis")
    try:
        yield embedded.start()
    finally:
        embedded.stop()


def stop(procs: list[subprocess.Popen[bytes]], timeout: float = 60) -> None:
    """SIGTERM each process (in the order given: workers before the intake), then wait for it."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def hookgate_stack(
    work: Path,
    config_text: str,
    *,
    processes: int,
    threads: int,
    redis_url: str,
    database_url: str | None = None,
    env: dict[str, str] | None = None,
    checkout: Path = HERE.parent,
    started: list[subprocess.Popen[bytes]] | None = None,
) -> Iterator[str]:
    """``hookgate serve`` and ``hookgate worker --processes N --threads T`` on ``config_text``,
    the handler's done log in ``work/out``; yields the intake's base URL once it answers and
    stops both (workers first) on the way out. ``work`` must not exist yet.

    ``checkout``: the tree whose code runs (its working directory too: ``python -m`` puts that
    first on ``sys.path``); ``started`` gets the two processes, serve first."""
    (work / "out").mkdir(parents=True)
    config = work / "providers.yaml"
    config.write_text(config_text)
    redis.Redis.from_url(redis_url).flushdb()
    full_env = {
        **os.environ,
        "HOOKGATE_CONFIG": str(config),
        "HOOKGATE_DATABASE_URL": database_url or os.environ.get("HOOKGATE_DATABASE_URL", f"sqlite:///{work}/bench.db"),
        "HOOKGATE_REDIS_URL": redis_url,
        "HOOKGATE_BENCH_OUT": str(work / "out"),
        "PYTHONPATH": str(checkout),
        **(env or {}),
    }
    port = free_port()
    serve_command = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)]
    serve = start(serve_command, full_env, work / "serve.log", cwd=checkout)
    worker_command = [sys.executable, "-m", "gateway.cli", "worker", "--processes", str(processes)]
    worker_command += ["--threads", str(threads)]
    worker = start(worker_command, full_env, work / "worker.log", cwd=checkout)
    if started is not None:
        started += [serve, worker]
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop([worker, serve])


def warm_up(url: str, request: tuple[bytes, dict[str, str]], out: Path, timeout: float = 60) -> None:
    """POST one event and wait until a handler has recorded it: the workers are up, connected
    and past their first event (imports, connection pools, the first reconciliation)."""
    asyncio.run(post_all(url, [request], 1))
    deadline = time.monotonic() + timeout
    while not read_done(out):
        if time.monotonic() > deadline:
            raise SystemExit(f"the workers processed nothing in {timeout:.0f} s; see the logs in {out.parent}")
        time.sleep(0.05)


def wait_handled(out: Path, ids: set[str], timeout: float = 300, settle: float = 0.5) -> list[Done]:
    """The done log once every event of ``ids`` is in it (then ``settle`` seconds more, so that
    a duplicate right behind shows too), or as it is after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not ids <= {d.event_id for d in read_done(out)} and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(settle)
    return read_done(out)


def run_hookgate(
    args: argparse.Namespace, processes: int, threads: int, rate: float | None, api: FakeApi, redis_url: str, tmp: Path
) -> dict[str, float]:
    name = f"{processes}x{threads}-{rate or 'burst'}"
    work = tmp / name
    config_text = textwrap.dedent(CONFIG.format(api=api.url))
    with hookgate_stack(work, config_text, processes=processes, threads=threads, redis_url=redis_url) as base:
        provider = load_config(work / "providers.yaml").providers["things"].provider
        url = f"{base}/webhooks/things"
        versions = args.events // args.resources
        requests = [
            provider.signed_request(
                "thing.updated", {"id": f"r{r}", "version": v}, event_id=f"{name}-r{r}-v{v}", timestamp=0
            )
            for v in range(1, versions + 1)
            for r in range(args.resources)
        ]
        ids = {f"{name}-r{r}-v{v}" for v in range(1, versions + 1) for r in range(args.resources)}
        warm = provider.signed_request("thing.updated", {"id": "warm", "version": 1}, event_id="warm", timestamp=0)
        warm_up(url, warm, work / "out")
        fetches_before = len(api.seen())
        started = asyncio.run(post_all(url, requests, args.concurrency, rate))
        done = wait_handled(work / "out", ids, settle=0)
        measured = [d for d in done if d.event_id in ids]
        if len(measured) < len(requests):
            raise SystemExit(f"only {len(measured)} of {len(requests)} events were handled")
        result = summarize([d.at for d in measured], [d.latency for d in measured], started)
        result["fetches"] = (len(api.seen()) - fetches_before) / len(requests)
        return result


def run_bare(args: argparse.Namespace, tmp: Path) -> float:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--port", str(port), "--log-level", "warning"]
    proc = start(command, dict(os.environ), tmp / "bare.log")
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz")
        body = b'{"type":"thing.updated","data":{"id":"r1","version":1}}'
        requests = [(body, {"Content-Type": "application/json"})] * args.events
        started = asyncio.run(post_all(f"http://127.0.0.1:{port}/webhooks/things", requests, args.concurrency))
        return args.events / (time.time() - started)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--resources", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, default=50.0, help="events/s of the paced (latency) runs")
    args = parser.parse_args()
    api = FakeApi(keep_alive=True).start()
    for index in range(args.resources):
        api.states[f"/v1/things/r{index}"] = {"id": f"r{index}", "version": args.events // args.resources}
    api.states["/v1/things/warm"] = {"id": "warm", "version": 1}
    with tempfile.TemporaryDirectory(prefix="hge2e-") as name:
        tmp = Path(name)
        with redis_server(tmp) as redis_url:
            bare = run_bare(args, tmp)
            runs = [(1, 1, None), (1, 4, None), (2, 4, None), (1, 1, args.rate), (1, 4, args.rate)]
            results = {run: run_hookgate(args, *run, api, redis_url, tmp) for run in runs}
    api.stop()
    print(f"\nbare starlette accepts the same POSTs at {bare:.0f}/s ({args.concurrency} clients)")
    header = f"{'load':>14} {'processes':>9} {'threads':>7} {'events/s':>9} {'ratio':>6} {'p50 ms':>8} {'p99 ms':>8}"
    print(f"\n{header} {'fetches/event':>14}")
    for (processes, threads, rate), r in results.items():
        load = f"{rate:.0f}/s paced" if rate else "burst"
        print(
            f"{load:>14} {processes:>9} {threads:>7} {r['rate']:>9.0f} {r['rate'] / bare:>6.2f} {r['p50']:>8.0f} "
            f"{r['p99']:>8.0f} {r['fetches']:>14.2f}"
        )
    print(f"\n{args.events} events on {args.resources} resources each run, ordering window 0")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
