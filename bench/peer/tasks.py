"""The peer stack's worker side: one Dramatiq actor on a RedisBroker, as a user would write it.

The handler does next to nothing, like Hookgate's bench handler (bench/e2e_handlers.py): it
appends a line to ``$PEER_BENCH_OUT/done-<pid>`` with the time it ran, the time since the
endpoint received the event, the event's id, its customer and its version, in the same format,
so that bench/side_by_side.py reads and checks both stacks the same way.

    PEER_REDIS_URL=redis://… python -m dramatiq bench.peer.tasks --processes 2 --threads 4
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import dramatiq
from dramatiq.brokers.redis import RedisBroker

OUT = Path(os.environ.get("PEER_BENCH_OUT", "."))

dramatiq.set_broker(RedisBroker(url=os.environ.get("PEER_REDIS_URL", "redis://127.0.0.1:6379/0")))


@dramatiq.actor
def customer_updated(event_id: str, customer: str, version: int, received: float) -> None:
    now = time.time()
    with (OUT / f"done-{os.getpid()}").open("a") as f:
        f.write(f"{now} {now - received} {event_id} {customer} {version}\n")
