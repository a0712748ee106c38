"""Benchmark: Hookgate end to end beside a hand-written Starlette + Dramatiq stack, in one run.

The peer (bench/peer/) is what a user writes without Hookgate: a Starlette endpoint that
verifies with ``stripe.Webhook.construct_event`` and calls ``actor.send()`` per request, and a
Dramatiq actor on a RedisBroker whose handler only records that it ran. Hookgate runs as in
production (``hookgate serve`` + ``hookgate worker``) with a ``stripe`` provider, ordering
window 0 and reconciliation against a fake Stripe API on 127.0.0.1, its handler recording the
same line (bench/e2e_handlers.py). Both get the same Redis, the same client (bench/end_to_end.py's
``post_all``), the same secret and the same events: CUSTOMERS x VERSIONS Stripe-signed
``customer.updated`` events, sent version by version over CONCURRENCY connections, as fast as
possible or at RATE/s. Each round runs both stacks for each worker configuration, the one that
goes first alternating from round to round.

Reported per run: events/s from the first POST to the last handler, POST→handler p50/p99 (the
client's send time to the handler's time, one clock for both), and the checks: every event
handled exactly once, and the events of each customer handled in version order (out-of-order
events are counted, not failed: the peer has no ordering at all). Per configuration: the
medians over the rounds and Hookgate's ratio to the peer, paired within each round. Each run
also reports the CPU time its intake and its workers used per event (from /proc, between the
first POST and the last handler), which moves much less than the rates on a shared machine.

``--baseline DIR`` runs a third stack: Hookgate from another checkout (e.g. a ``git worktree``
of an older commit), to compare a change in the same run. ``--stages`` times the stages of
Hookgate's workers (bench/stages.py) and prints them after each of its runs.

    python bench/side_by_side.py [--configs 1x4,2x4] [--rounds 3] [--rate 500]
        [--customers 100] [--versions 10] [--database-url postgresql+psycopg://…/db]
        [--baseline /tmp/base] [--stages]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
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

import orjson
import redis
import sqlalchemy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import stages as stage_timing
from bench.end_to_end import (
    Done,
    hookgate_stack,
    percentile,
    post_all,
    redis_server,
    stop,
    wait_handled,
    warm_up,
)
from bench.intake import HERE, cpu_seconds, free_port, start, wait_ready
from tests.support.fake_api import FakeApi

SECRET = "whsec_bench_side_by_side_0123456789abcdef"

CONFIG = """
defaults:
  ordering: {{window_ms: 0}}
providers:
  stripe:
    type: stripe
    secrets: ["{secret}"]
    api: {{base_url: "{api}", token: "bench-token"}}
handlers: [bench.e2e_handlers]
"""

#: The peer's uvicorn, with the settings ``hookgate serve`` gives its own (gateway/server.py).
PEER_SERVER = ["--no-access-log", "--ws", "none", "--backlog", "2048", "--limit-concurrency", "1001"]
PEER_SERVER += ["--timeout-keep-alive", "5", "--log-level", "warning"]

STACKS = ("hookgate", "peer")
#: Hookgate from the ``--baseline`` checkout.
BASELINE = "baseline"


@dataclass(frozen=True)
class Planned:
    """One event of the workload, before it is signed."""

    event_id: str
    customer: str
    version: int
    body: bytes


def stripe_event(event_id: str, customer: str, version: int, created: int) -> bytes:
    """A Stripe-shaped ``customer.updated`` snapshot event. Hookgate orders a customer's events
    by ``created`` (providers/stripe.py), so it grows with the version."""
    customer_object = {
        "id": customer,
        "object": "customer",
        "email": f"{customer}@example.com",
        "metadata": {"version": str(version)},  # Stripe's metadata values are strings
    }
    event = {
        "id": event_id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": created,
        "livemode": False,
        "type": "customer.updated",
        "data": {"object": customer_object, "previous_attributes": {"email": None}},
    }
    return orjson.dumps(event)


def plan(customers: int, versions: int) -> list[Planned]:
    """Every customer's version 1, then every customer's version 2, and so on: a customer's
    consecutive versions are ``customers`` requests apart, so with many connections they may
    arrive out of order now and then, as real deliveries do."""
    created = int(time.time()) - 86_400
    return [
        Planned(event_id, customer, v, stripe_event(event_id, customer, v, created + v))
        for v in range(1, versions + 1)
        for c in range(customers)
        for event_id, customer in [(f"evt_bench{c:05d}v{v:04d}", f"cus_bench{c:05d}")]
    ]


def signed(body: bytes, at: int) -> tuple[bytes, dict[str, str]]:
    """The request Stripe would send: ``Stripe-Signature: t=<at>,v1=<HMAC-SHA256 of "<at>.<body>">``.
    Signed here by hand, with neither stack's code."""
    mac = hmac.new(SECRET.encode(), b"%d." % at + body, hashlib.sha256).hexdigest()
    return body, {"Content-Type": "application/json; charset=utf-8", "Stripe-Signature": f"t={at},v1={mac}"}


@dataclass
class Outcome:
    """One stack's run: throughput, latency, and what the checks found."""

    rate: float
    p50: float
    p99: float
    handled: int  #: distinct events handled
    duplicates: int  #: handler runs beyond the first of an event
    missing: int
    out_of_order: int  #: events handled after a later version of their customer
    fetches: float | None = None  #: reconciliation requests per event (Hookgate only)
    load: float = 0.0  #: the machine's 1-minute load average as the run began
    intake_cpu: float = 0.0  #: CPU ms per event of the server (and its children)
    workers_cpu: float = 0.0  #: CPU ms per event of the worker processes

    @property
    def check(self) -> str:
        once = "once" if not self.duplicates and not self.missing else f"dup {self.duplicates} miss {self.missing}"
        fetched = "" if self.fetches is None else f", {self.fetches:.2f} fetches/event"
        return f"{once}, {self.out_of_order} out of order{fetched}"

    @property
    def cpu(self) -> str:
        return f"cpu ms/event intake {self.intake_cpu:.2f} workers {self.workers_cpu:.2f}"


def judge(done: list[Done], events: list[Planned], sent: list[float], started: float) -> Outcome:
    """Throughput, POST→handler latency and the checks of one run, from its done log."""
    index = {e.event_id: i for i, e in enumerate(events)}
    first: dict[str, Done] = {}
    runs = 0
    for d in sorted(done, key=lambda d: d.at):
        if d.event_id in index:
            runs += 1
            first.setdefault(d.event_id, d)
    out_of_order = 0
    newest: dict[str, int] = {}
    for d in sorted(first.values(), key=lambda d: d.at):
        version = events[index[d.event_id]].version
        if version < newest.get(d.resource, 0):
            out_of_order += 1
        newest[d.resource] = max(version, newest.get(d.resource, 0))
    latencies = [(d.at - sent[index[d.event_id]]) * 1000 for d in first.values()]
    finished = max((d.at for d in first.values()), default=started)
    return Outcome(
        rate=len(first) / (finished - started) if first else 0.0,
        p50=statistics.median(latencies) if latencies else float("nan"),
        p99=percentile(latencies, 0.99) if latencies else float("nan"),
        handled=len(first),
        duplicates=runs - len(first),
        missing=len(events) - len(first),
        out_of_order=out_of_order,
    )


@contextmanager
def peer_stack(
    work: Path, *, processes: int, threads: int, redis_url: str, started: list[subprocess.Popen[bytes]]
) -> Iterator[str]:
    """The hand-written stack: uvicorn on bench/peer/app.py and ``dramatiq bench.peer.tasks``
    with ``processes`` x ``threads``, its done log in ``work/out``; yields the base URL, and puts
    the server and the workers' process in ``started``."""
    (work / "out").mkdir(parents=True)
    redis.Redis.from_url(redis_url).flushdb()
    env = {
        **os.environ,
        "PEER_WEBHOOK_SECRET": SECRET,
        "PEER_REDIS_URL": redis_url,
        "PEER_BENCH_OUT": str(work / "out"),
        "PYTHONPATH": str(HERE.parent),
    }
    port = free_port()
    server = start(
        [sys.executable, "-m", "uvicorn", "bench.peer.app:app", "--port", str(port), *PEER_SERVER],
        env,
        work / "serve.log",
    )
    workers_command = [sys.executable, "-m", "dramatiq", "bench.peer.tasks", "--processes", str(processes)]
    workers = start([*workers_command, "--threads", str(threads)], env, work / "worker.log")
    started += [server, workers]
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop([workers, server])


def reset_postgres(url: str) -> None:
    """An empty store for each Hookgate run: drop and recreate the ``public`` schema."""
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("DROP SCHEMA public CASCADE"))
            conn.execute(sqlalchemy.text("CREATE SCHEMA public"))
    finally:
        engine.dispose()


def measure(
    base: str,
    out: Path,
    events: list[Planned],
    args: argparse.Namespace,
    processes: list[subprocess.Popen[bytes]],
    api: FakeApi | None = None,
) -> Outcome:
    """Warm a started stack up, send it the events (signed now: both refuse stale signatures),
    wait for them to be handled and judge the run. ``processes``: its server, then its workers."""
    url = f"{base}/webhooks/stripe"
    now = int(time.time())
    warm_up(url, signed(stripe_event("evt_warm", "cus_warm", 1, now), now), out)
    requests = [signed(e.body, now) for e in events]
    sent = [0.0] * len(requests)
    fetches_before = len(api.seen()) if api else 0
    cpu_before = [cpu_seconds(proc.pid) for proc in processes]
    started = asyncio.run(post_all(url, requests, args.concurrency, args.rate, sent))
    done = wait_handled(out, {e.event_id for e in events}, timeout=args.timeout)
    intake_cpu, workers_cpu = (cpu_seconds(p.pid) - before for p, before in zip(processes, cpu_before, strict=True))
    outcome = judge(done, events, sent, started)
    outcome.intake_cpu, outcome.workers_cpu = intake_cpu * 1000 / len(events), workers_cpu * 1000 / len(events)
    if api:
        outcome.fetches = (len(api.seen()) - fetches_before) / len(events)
    return outcome


def run(
    stack: str,
    processes: int,
    threads: int,
    events: list[Planned],
    api: FakeApi,
    redis_url: str,
    work: Path,
    args: argparse.Namespace,
) -> Outcome:
    load = os.getloadavg()[0]
    started: list[subprocess.Popen[bytes]] = []
    if stack == "peer":
        with peer_stack(work, processes=processes, threads=threads, redis_url=redis_url, started=started) as base:
            outcome = measure(base, work / "out", events, args, started)
        outcome.load = load
        return outcome
    database_url = args.database_url
    if database_url and database_url.startswith("postgresql"):
        reset_postgres(database_url)
    config = textwrap.dedent(CONFIG.format(secret=SECRET, api=api.url))
    with hookgate_stack(
        work,
        config,
        processes=processes,
        threads=threads,
        redis_url=redis_url,
        database_url=database_url or f"sqlite:///{work}/bench.db",
        env={"HOOKGATE_BENCH_PROVIDER": "stripe", **stages_env(work, args)},
        checkout=Path(args.baseline) if stack == BASELINE else HERE.parent,
        started=started,
    ) as base:
        outcome = measure(base, work / "out", events, args, started, api)
    outcome.load = load
    if args.stages:
        print(stage_timing.summary(work / "out", len(events)), file=sys.stderr)
    return outcome


def stages_env(work: Path, args: argparse.Namespace) -> dict[str, str]:
    """With ``--stages``, the workers time their stages into the run's done-log directory."""
    return {"HOOKGATE_BENCH_STAGES": str(work / "out")} if args.stages else {}


def stacks_of(args: argparse.Namespace) -> tuple[str, ...]:
    return (*STACKS, BASELINE) if args.baseline else STACKS


def parse_configs(text: str) -> list[tuple[int, int]]:
    configs = []
    for item in text.split(","):
        processes, _, threads = item.strip().partition("x")
        configs.append((int(processes), int(threads)))
    return configs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="1x4,2x4", help="worker processes x threads, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each stack per configuration")
    parser.add_argument("--rate", type=float, default=None, help="paced requests/s (default: a burst)")
    parser.add_argument("--customers", type=int, default=100)
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--database-url", default=None, help="Hookgate's store; PostgreSQL's public schema is dropped before each run"
    )
    parser.add_argument("--redis-url", default=None, help="default: $HOOKGATE_REDIS_URL, else an embedded Redis")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the handlers after the POSTs")
    parser.add_argument(
        "--baseline", default=None, help="another checkout (a git worktree of an older commit) run as a third stack"
    )
    parser.add_argument("--stages", action="store_true", help="time the stages of Hookgate's workers (bench/stages.py)")
    args = parser.parse_args()
    stacks = stacks_of(args)
    configs = parse_configs(args.configs)
    events = plan(args.customers, args.versions)
    api = FakeApi(keep_alive=True).start()
    for customer in {e.customer for e in events} | {"cus_warm"}:
        api.states[f"/v1/customers/{customer}"] = {"id": customer, "object": "customer", "metadata": {}}
    results: dict[tuple[int, int], list[dict[str, Outcome]]] = {config: [] for config in configs}
    with tempfile.TemporaryDirectory(prefix="hgsbs-") as name, redis_server(Path(name), args.redis_url) as redis_url:
        for round_number in range(args.rounds):
            for processes, threads in configs:
                turn = round_number % len(stacks)
                order = stacks[turn:] + stacks[:turn]
                outcomes: dict[str, Outcome] = {}
                for stack in order:
                    work = Path(name) / f"{stack}-{processes}x{threads}-round{round_number + 1}"
                    outcomes[stack] = outcome = run(stack, processes, threads, events, api, redis_url, work, args)
                    print(
                        f"round {round_number + 1} {processes}x{threads} {stack:8} {outcome.rate:7.0f} events/s "
                        f"p50 {outcome.p50:6.0f} ms p99 {outcome.p99:6.0f} ms  "
                        f"load {outcome.load:4.1f}  {outcome.check}; {outcome.cpu}",
                        file=sys.stderr,
                        flush=True,
                    )
                results[(processes, threads)].append(outcomes)
    api.stop()
    report(results, args)
    return 0


def report(results: dict[tuple[int, int], list[dict[str, Outcome]]], args: argparse.Namespace) -> None:
    median = statistics.median
    load = f"paced {args.rate:.0f}/s" if args.rate else "burst"
    store = (args.database_url or "sqlite").split(":")[0].split("+")[0]
    stacks = stacks_of(args)
    header = f"{'config':>6} {'round':>5} {'stack':>8} {'events/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'load':>5}"
    print(f"\n{header}  check; cpu")
    for (processes, threads), rounds in results.items():
        label = f"{processes}x{threads}"
        for number, outcomes in enumerate(rounds, 1):
            for stack in stacks:
                o = outcomes[stack]
                print(
                    f"{label:>6} {number:>5} {stack:>8} {o.rate:>9.0f} {o.p50:>8.0f} {o.p99:>8.0f} "
                    f"{o.load:>5.1f}  {o.check}; {o.cpu}"
                )
    print(
        f"\n{'config':>6} {'stack':>8} {'events/s':>9} {'peer/s':>7} {'ratio':>6} {'p50/p99 ms':>14} "
        f"{'peer p50/p99 ms':>16} {'p99 ratio':>9} {'cpu ms/event intake, workers':>29}"
    )
    for (processes, threads), rounds in results.items():
        peer = [r["peer"] for r in rounds]
        for stack in (s for s in stacks if s != "peer"):
            mine = [r[stack] for r in rounds]
            pairs = list(zip(mine, peer, strict=True))
            ratio = median([h.rate / p.rate if p.rate else float("nan") for h, p in pairs])
            p99_ratio = median([h.p99 / p.p99 for h, p in pairs])
            latency = f"{median([h.p50 for h in mine]):.0f} / {median([h.p99 for h in mine]):.0f}"
            peer_latency = f"{median([p.p50 for p in peer]):.0f} / {median([p.p99 for p in peer]):.0f}"
            cpu = f"{median([h.intake_cpu for h in mine]):.2f}, {median([h.workers_cpu for h in mine]):.2f}"
            print(
                f"{f'{processes}x{threads}':>6} {stack:>8} {median([h.rate for h in mine]):>9.0f} "
                f"{median([p.rate for p in peer]):>7.0f} {ratio:>6.2f} {latency:>14} {peer_latency:>16} "
                f"{p99_ratio:>9.1f} {cpu:>29}"
            )
        peer_cpu = f"{median([p.intake_cpu for p in peer]):.2f}, {median([p.workers_cpu for p in peer]):.2f}"
        print(f"{f'{processes}x{threads}':>6} {'peer':>8} {'':>66} {peer_cpu:>29}")
    events = args.customers * args.versions
    print(
        f"\n{events} events ({args.customers} customers x {args.versions} versions), {load}, "
        f"{args.concurrency} connections, {args.rounds} rounds (medians; ratios paired per round), "
        f"Hookgate on {store}, ordering window 0, reconciled against a loopback API"
        + (f"; baseline: Hookgate from {args.baseline}" if args.baseline else "")
    )


if __name__ == "__main__":
    raise SystemExit(main())
