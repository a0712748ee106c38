"""The handler the end-to-end benchmarks load into the workers: it records when each event was done.

One line per event in ``$HOOKGATE_BENCH_OUT/done-<pid>``: the time it was done, the time since
the intake received it, its id, its resource and its version (the payload's
``data.object.metadata.version`` for the Stripe-shaped events of bench/side_by_side.py, else the
event's sequence). The peer stack of bench/side_by_side.py writes the same lines
(bench/peer/tasks.py), so that both are read and checked by the same code.

``$HOOKGATE_BENCH_PROVIDER`` names the provider it is registered for (default ``things``,
bench/end_to_end.py's; bench/side_by_side.py sets ``stripe``). ``$HOOKGATE_BENCH_STAGES``, when
set, times the worker's stages into that directory (bench/stages.py).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from providers.payload import dig
from workers import Event, on

OUT = Path(os.environ.get("HOOKGATE_BENCH_OUT", "."))
PROVIDER = os.environ.get("HOOKGATE_BENCH_PROVIDER", "things")

if os.environ.get("HOOKGATE_BENCH_STAGES"):
    from bench import stages

    stages.install(os.environ["HOOKGATE_BENCH_STAGES"])


@on(PROVIDER, include_superseded=True)  # superseded events are finished too
def done(event: Event) -> None:
    now = time.time()
    version = dig(event.payload, "data.object.metadata.version")
    if version is None:
        version = event.sequence
    with (OUT / f"done-{os.getpid()}").open("a") as f:
        f.write(f"{now} {now - event.received_at.timestamp()} {event.id} {event.resource_id} {version}\n")
