"""Measurement: what the backlog gauges cost the store, on a big table of finished events.

Fills a store with ``--finished`` processed events (received over the last 30 days), then adds
unfinished ones (received over the last hour) in steps, and times the exporter's one query
(:func:`gateway.backlog.read_backlog`) at each step, the median of 5 runs, with the store's plan.
Its cost should follow the backlog, never the finished rows.

    python bench/backlog.py [--url postgresql+psycopg://…] [--finished 1000000]

Without ``--url``, a SQLite file in a temporary directory. The URL's tables are replaced.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import Engine, text
from sqlmodel import SQLModel

from gateway.backlog import BACKLOG_QUERY, read_backlog
from gateway.database import create_store_engine
from gateway.models import events
from gateway.schema import prepare_store, version_table

#: Rows ``FROM numbers`` yields 1..:n, on either backend.
NUMBERS = "WITH RECURSIVE numbers(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM numbers WHERE n < :n) "


def fill(engine: Engine, count: int, start: int, status: str, span: float) -> None:
    """``count`` rows of ``status`` with ids from ``start``, received over the last ``span`` s."""
    sql = NUMBERS + (
        f"INSERT INTO {events.name} (provider, event_id, event_type, body, headers, received_at, status, "  # noqa: S608
        "attempts, round, attempts_before_round, updated_at, sweep_after) "
        "SELECT CASE WHEN n % 3 = 0 THEN 'stripe' ELSE 'github' END, 'evt-' || (n + :start), 'x.y', :body, '{}', "
        ":now - :span * n / :n, :status, 1, 0, 0, :now, :sweep_after "
        "FROM numbers"
    )
    now = time.time()
    with engine.begin() as conn:
        conn.execute(
            text(sql),
            {
                "n": count,
                "start": start,
                "body": b"{}",
                "now": now,
                "span": float(span),
                "status": status,
                "sweep_after": None if status == "processed" else now,
            },
        )
        conn.exec_driver_sql("ANALYZE")


def plan(engine: Engine) -> str:
    """The store's plan for the exporter's query, as it is sent."""
    query = str(BACKLOG_QUERY.compile(engine, compile_kwargs={"literal_binds": True}))
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    with engine.connect() as conn:
        return "\n".join("    " + str(row[-1]) for row in conn.exec_driver_sql(explain + query))


def timed(engine: Engine) -> float:
    times = []
    for _ in range(5):
        started = time.perf_counter()
        read_backlog(engine)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url")
    parser.add_argument("--finished", type=int, default=1_000_000)
    args = parser.parse_args()
    url = args.url or f"sqlite:///{Path(tempfile.mkdtemp(prefix='hg-backlog-')) / 'hookgate.db'}"
    engine = create_store_engine(url)
    SQLModel.metadata.drop_all(engine)
    version_table.drop(engine, checkfirst=True)
    prepare_store(engine, upgrade=True)
    started = time.perf_counter()
    fill(engine, args.finished, 0, "processed", 30 * 86_400)
    print(f"{engine.dialect.name}: {args.finished:,} finished events ({time.perf_counter() - started:.0f} s to fill)")
    print(f"plan:\n{plan(engine)}")
    print("unfinished  query ms")
    total = 0
    for target in (0, 1_000, 10_000, 100_000):
        if target > total:
            fill(engine, target - total, args.finished + total, "queued", 3600)
            total = target
        print(f"{total:>10,}  {timed(engine) * 1000:8.1f}")
    print(f"plan with a backlog:\n{plan(engine)}")
    engine.dispose()


if __name__ == "__main__":
    main()
