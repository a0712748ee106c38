"""Measurement: the event log's queries, the admin API and the list page at 1,000,000 events.

Builds (once; ``--store`` keeps it between runs) a SQLite store of ``--events`` events as years
of traffic leave it: mostly processed, some failed, retrying and superseded, several providers,
types and resources, each with a small body and a last error on the failed ones. Then times
each filter of the event log (the first page, 50 events, newest first) and a page deep into the
list through its cursor: the store's query alone, then the admin API and the HTML page over
real HTTP from ``hookgate serve --admin-only`` (the stats, the failure groups and an event's
page too). Prints the median and the slowest of ``--repeat`` runs.

    python -m bench.admin_list [--events 1000000] [--store /tmp/hg-admin-1m.db] [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import Engine, insert, select

from gateway.database import create_store_engine
from gateway.eventlog import EventFilter, list_events
from gateway.models import FAILED, PROCESSED, QUEUED, SUPERSEDED, events
from gateway.schema import prepare_store

PROVIDERS = ("stripe", "github", "shopify", "slack", "acme")
TYPES = ("invoice.paid", "invoice.created", "customer.updated", "charge.refunded", "push", "orders/create")
ERRORS = (
    "app.handlers.activate: KeyError: 'plan'",
    "app.handlers.notify: TimeoutError: smtp did not answer",
    "reconciliation: the provider's API answered 500",
)
BATCH = 20_000
TOKEN = "bench-admin-token-0123456789"


def status_for(n: int) -> str:
    """Mostly processed; one in a hundred failed, one in two hundred retrying or superseded."""
    if n % 100 == 7:
        return FAILED
    if n % 200 == 11:
        return QUEUED
    if n % 200 == 13:
        return SUPERSEDED
    return PROCESSED


def build(engine: Engine, count: int) -> None:
    """Insert ``count`` events in transactions of :data:`BATCH`, received over the last year."""
    rng = random.Random(12)
    start = time.time() - 365 * 86400
    step = 365 * 86400 / count
    headers = orjson.dumps({"content-type": "application/json"}).decode()
    for first in range(0, count, BATCH):
        rows: list[dict[str, Any]] = []
        for n in range(first, min(first + BATCH, count)):
            status = status_for(n)
            failed = status in (FAILED, QUEUED)
            error = ERRORS[n % len(ERRORS)] if failed else None
            received = start + n * step
            rows.append(
                {
                    "provider": PROVIDERS[n % len(PROVIDERS)],
                    "event_id": f"evt_{n:08d}",
                    "event_type": TYPES[rng.randrange(len(TYPES))],
                    "resource_id": f"res_{rng.randrange(count // 20)}",
                    "sequence": n,
                    "body": b'{"id":"evt_%08d","data":{"object":{"amount":1200}}}' % n,
                    "headers": headers,
                    "received_at": received,
                    "status": status,
                    "attempts": 3 if status == FAILED else 1,
                    "last_error": error,
                    "error_group": error.split(":")[0] + ":" + error.split(": ")[1] if error else None,
                    "updated_at": received,
                    "processed_at": None if failed else received,
                }
            )
        with engine.begin() as conn:
            conn.execute(insert(events), rows)


def timed(run: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """Median and slowest time of ``run`` in milliseconds, after one warm-up call."""
    run()
    samples = []
    for _ in range(repeat):
        began = time.perf_counter()
        run()
        samples.append((time.perf_counter() - began) * 1000)
    return statistics.median(samples), max(samples)


def cases(engine: Engine) -> dict[str, dict[str, str]]:
    """The filters to time, with values that exist in the store."""
    with engine.connect() as conn:
        newest = conn.execute(select(events.c.event_id, events.c.resource_id).order_by(events.c.id.desc())).first()
        old = conn.execute(select(events.c.event_id).where(events.c.id == 1000)).scalar_one()
    assert newest is not None
    day = 86400.0
    return {
        "no filter": {},
        "provider": {"provider": "github"},
        "status failed": {"status": FAILED},
        "type prefix": {"type": "invoice.*"},
        "provider+status+type": {"provider": "stripe", "status": FAILED, "type": "invoice.*"},
        "q = an old event id": {"q": old},
        "q = a resource id": {"q": newest.resource_id},
        "resource id": {"resource_id": newest.resource_id},
        "provider + resource id": {"provider": "stripe", "resource_id": newest.resource_id},
        "failed + q = a resource id": {"status": FAILED, "q": newest.resource_id},
        "error text": {"error": "smtp"},
        "received in one day, 200 days ago": {
            "since": str(time.time() - 200 * day),
            "until": str(time.time() - 199 * day),
        },
    }


def deep_cursor(engine: Engine, pages: int) -> str | None:
    """The cursor of the page ``pages`` pages into the unfiltered list."""
    cursor = None
    for _ in range(pages):
        cursor = list_events(engine, EventFilter(), cursor=cursor, limit=200).next_cursor
    return cursor


def serve_admin(store: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``hookgate serve --admin-only`` on the store, on a free port; the process and its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "HOOKGATE_CONFIG": str(Path(__file__).with_name("providers.yaml")),
        "HOOKGATE_DATABASE_URL": f"sqlite:///{store}",
        "HOOKGATE_ADMIN_TOKEN": TOKEN,
    }
    command = [sys.executable, "-m", "gateway.cli", "serve", "--admin-only", "--port", str(port)]
    process = subprocess.Popen(command, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/healthz").raise_for_status()
            return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("hookgate serve --admin-only did not answer within 30 s")


def time_http(engine: Engine, store: Path, repeat: int) -> None:
    """The API and the pages over HTTP, for the same filters, and the stats and one event."""
    process, url = serve_admin(store)
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as client:
            pages = httpx.Client(base_url=url, timeout=30)  # a browser: the session cookie of the login form
            assert pages.post("/admin/login", data={"token": TOKEN}).status_code < 400
            with engine.connect() as conn:
                failed = conn.execute(
                    select(events.c.provider, events.c.event_id).where(events.c.status == FAILED)
                ).first()
            assert failed is not None
            requests: dict[str, tuple[httpx.Client, str, dict[str, str]]] = {
                "api: stats": (client, "/admin/api/stats", {}),
                "api: failure groups": (client, "/admin/api/failure-groups", {}),
                f"api: event {failed.event_id}": (client, f"/admin/api/events/{failed.provider}/{failed.event_id}", {}),
                "page: event": (pages, f"/admin/events/{failed.provider}/{failed.event_id}", {}),
                "page: failure groups": (pages, "/admin/failure-groups", {}),
            }
            for name, params in cases(engine).items():
                requests[f"api: {name}"] = (client, "/admin/api/events", params)
                requests[f"page: {name}"] = (pages, "/admin", params)
            for name, (session, path, params) in requests.items():

                def get(session: httpx.Client = session, path: str = path, params: dict[str, str] = params) -> None:
                    session.get(path, params=params).raise_for_status()

                median, slowest = timed(get, repeat)
                print(f"{name:40} {median:10.1f} {slowest:11.1f}")
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--store", type=Path, default=Path("/tmp/hg-admin-1m.db"))
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    engine = create_store_engine(f"sqlite:///{args.store}")
    prepare_store(engine, upgrade=True)
    with engine.connect() as conn:
        stored = conn.execute(select(events.c.id).order_by(events.c.id.desc()).limit(1)).scalar() or 0
    if stored < args.events:
        began = time.perf_counter()
        build(engine, args.events - stored)
        print(f"built {args.events} events in {time.perf_counter() - began:.0f} s: {args.store}")
    print(f"{'query':40} {'median ms':>10} {'slowest ms':>11}")
    for name, params in cases(engine).items():
        where = EventFilter.from_params(params)
        median, slowest = timed(lambda where=where: list_events(engine, where), args.repeat)
        print(f"{'store: ' + name:40} {median:10.1f} {slowest:11.1f}")
    cursor = deep_cursor(engine, 50)
    median, slowest = timed(lambda: list_events(engine, EventFilter(), cursor=cursor), args.repeat)
    print(f"{'store: page 51 through the cursor':40} {median:10.1f} {slowest:11.1f}")
    time_http(engine, args.store, args.repeat)


if __name__ == "__main__":
    main()
