"""Measurement: a SQLite store under a steady stream with retention on stops growing.

Simulates weeks in minutes: each simulated hour, ``--per-hour`` events arrive through the
intake's own INSERT (2 KiB bodies) and are finished as a worker leaves them (status, a handler
run), then the workers' pruner runs with its clock at that hour. With ``events_days: 1`` and
``dedupe_days: 3``, bodies go after a day and ids after three, so the file should grow for three
days and then stay flat: freed pages are reused. Prints the file size at the end of each day and
the longest write transaction a prune pass held (what the intake's commits wait behind).

    python bench/retention_growth.py [--days 8] [--per-hour 600]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert, update

from gateway.batch_insert import flat_params, values_insert
from gateway.config import Config, Retention
from gateway.database import create_store_engine
from gateway.models import PROCESSED, RECEIVED, events, handler_runs
from gateway.retention import Pruner
from gateway.schema import prepare_store

BODY = b'{"action":"opened","issue":{"id":1}}'.ljust(2048, b" ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=8)
    parser.add_argument("--per-hour", type=int, default=600)
    args = parser.parse_args()
    path = Path(tempfile.mkdtemp(prefix="hg-retention-")) / "hookgate.db"
    engine = create_store_engine(f"sqlite:///{path}")
    prepare_store(engine, upgrade=True)
    config = Config(Path("providers.yaml"), {}, retention=Retention(events_days=1, dedupe_days=3))
    start = time.time()
    clock = start
    # As in the workers: their commits are not what a 2xx promises (synchronous=NORMAL).
    worker_engine = create_store_engine(f"sqlite:///{path}", acknowledges=False)
    pruner = Pruner(worker_engine, config, clock=lambda: clock)
    marker = "?"  # sqlite3 paramstyle
    print(f"{args.per_hour} events/hour, events_days 1, dedupe_days 3; store {path}")
    print("day  events so far  file MB  longest prune write ms")
    counter = 0
    for day in range(1, args.days + 1):
        longest = 0.0
        for _hour in range(24):
            clock += 3600
            rows = []
            for _ in range(args.per_hour):
                counter += 1
                row = {
                    "provider": "github",
                    "event_id": f"evt-{counter}",
                    "event_type": "issues.opened",
                    "resource_id": None,
                    "sequence": None,
                    "body": BODY,
                    "headers": "{}",
                    "received_at": clock,
                    "status": RECEIVED,
                    "attempts": 0,
                    "message_id": f"m{counter}",
                    "sweep_after": clock + 15,
                    "updated_at": clock,
                    "traceparent": None,
                    "tracestate": None,
                }
                rows.append(row)
            for chunk in range(0, len(rows), 100):
                batch = rows[chunk : chunk + 100]
                with engine.begin() as conn:
                    params = tuple(flat_params(batch))
                    pks = [pk for pk, _, _ in conn.exec_driver_sql(values_insert(len(batch), marker), params)]
                    conn.execute(
                        update(events).where(events.c.id.in_(pks)).values(status=PROCESSED, processed_at=clock)
                    )
                    conn.execute(
                        insert(handler_runs), [{"event_pk": pk, "handler": "h", "finished_at": clock} for pk in pks]
                    )
            longest = max(longest, pruner.run().longest_write)
        size = os.path.getsize(path) + (os.path.getsize(f"{path}-wal") if Path(f"{path}-wal").exists() else 0)
        print(f"{day:>3}  {counter:>13,}  {size / 1e6:>7.1f}  {longest * 1000:>23.0f}")
    engine.dispose()
    worker_engine.dispose()


if __name__ == "__main__":
    main()
