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
import sys
import tempfile
import textwrap
import time
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
    url: str, requests: list[tuple[bytes, dict[str, str]]], concurrency: int, rate: float | None = None
) -> float:
    """POST every request over ``concurrency`` keep-alive connections, as fast as possible or at
    ``rate`` requests/s; returns when the first was sent.

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


def read_done(out: Path) -> list[tuple[float, float]]:
    lines = [line.split() for f in out.glob("done-*") for line in f.read_text().splitlines()]
    return [(float(at), float(latency)) for at, latency in lines]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run_hookgate(
    args: argparse.Namespace, processes: int, threads: int, rate: float | None, api: FakeApi, redis_url: str, tmp: Path
) -> dict[str, float]:
    name = f"{processes}x{threads}-{rate or 'burst'}"
    work = tmp / name
    (work / "out").mkdir(parents=True)
    config = work / "providers.yaml"
    config.write_text(textwrap.dedent(CONFIG.format(api=api.url)))
    provider = load_config(config).providers["things"].provider
    redis.Redis.from_url(redis_url).flushall()
    env = {
        **os.environ,
        "HOOKGATE_CONFIG": str(config),
        "HOOKGATE_DATABASE_URL": os.environ.get("HOOKGATE_DATABASE_URL", f"sqlite:///{work}/bench.db"),
        "HOOKGATE_REDIS_URL": redis_url,
        "HOOKGATE_BENCH_OUT": str(work / "out"),
        "PYTHONPATH": str(HERE.parent),
    }
    port = free_port()
    serve = start([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)], env, work / "serve.log")
    worker_command = [sys.executable, "-m", "gateway.cli", "worker", "--processes", str(processes)]
    worker_command += ["--threads", str(threads)]
    worker = start(worker_command, env, work / "worker.log")
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz")
        url = f"http://127.0.0.1:{port}/webhooks/things"
        versions = args.events // args.resources
        requests = [
            provider.signed_request(
                "thing.updated", {"id": f"r{r}", "version": v}, event_id=f"{name}-r{r}-v{v}", timestamp=0
            )
            for v in range(1, versions + 1)
            for r in range(args.resources)
        ]
        warm = provider.signed_request("thing.updated", {"id": "warm", "version": 1}, event_id="warm", timestamp=0)
        asyncio.run(post_all(url, [warm], 1))
        deadline = time.monotonic() + 60
        while len(read_done(work / "out")) < 1:  # the workers are up and have processed one event
            if time.monotonic() > deadline:
                raise SystemExit(f"the worker processed nothing; see {work}/worker.log")
            time.sleep(0.05)
        fetches_before = len(api.seen())
        started = asyncio.run(post_all(url, requests, args.concurrency, rate))
        deadline = time.monotonic() + 300
        while len(done := read_done(work / "out")) < len(requests) + 1:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(done) - 1} of {len(requests)} events were handled")
            time.sleep(0.1)
        measured = [(at, latency) for at, latency in done if at >= started]
        finished = max(at for at, _ in measured)
        latencies = [latency * 1000 for _, latency in measured]
        return {
            "events": len(requests),
            "rate": len(requests) / (finished - started),
            "p50": statistics.median(latencies),
            "p99": percentile(latencies, 0.99),
            "fetches": (len(api.seen()) - fetches_before) / len(requests),
        }
    finally:
        for proc in (worker, serve):
            proc.terminate()
            proc.wait(timeout=60)


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
    api = FakeApi().start()
    for r in range(args.resources):
        api.states[f"/v1/things/r{r}"] = {"id": f"r{r}", "version": args.events // args.resources}
    api.states["/v1/things/warm"] = {"id": "warm", "version": 1}
    with tempfile.TemporaryDirectory(prefix="hge2e-") as name:
        tmp = Path(name)
        embedded = None
        redis_url = os.environ.get("HOOKGATE_REDIS_URL")
        if not redis_url:
            embedded = EmbeddedRedis(tmp / "redis")
            redis_url = embedded.start()
        try:
            bare = run_bare(args, tmp)
            runs = [(1, 1, None), (1, 4, None), (2, 4, None), (1, 1, args.rate), (1, 4, args.rate)]
            results = {run: run_hookgate(args, *run, api, redis_url, tmp) for run in runs}
        finally:
            if embedded is not None:
                embedded.stop()
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
