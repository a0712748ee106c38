"""The handler bench/end_to_end.py loads into the workers: it records when each event was done."""

from __future__ import annotations

import os
import time
from pathlib import Path

from workers import Event, on

OUT = Path(os.environ.get("HOOKGATE_BENCH_OUT", "."))


@on("things", include_superseded=True)  # superseded events are finished too
def done(event: Event) -> None:
    now = time.time()
    with (OUT / f"done-{os.getpid()}").open("a") as f:
        f.write(f"{now} {now - event.received_at.timestamp()}\n")
