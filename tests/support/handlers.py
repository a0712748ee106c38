"""Handlers the end-to-end tests load into real worker processes.

Each records what it did as one line in a file under ``$HOOKGATE_TEST_EFFECTS`` (appends of a
short line are atomic, so lines from several processes never interleave). Event types steer them:

* ``fail.always`` raises on every try; ``fail.once`` raises on the first try only;
* ``slow.*`` writes a ``started`` line, then waits for the file ``release`` before its effect.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from workers import Event, on

EFFECTS = Path(os.environ.get("HOOKGATE_TEST_EFFECTS", "."))


def record(kind: str, event: Event) -> None:
    with (EFFECTS / "effects.log").open("a") as f:
        f.write(f"{kind} {event.provider} {event.id} {event.type} {os.getpid()}\n")


def behave(event: Event) -> None:
    if event.type.startswith("slow."):
        record("started", event)
        deadline = time.monotonic() + 60
        while not (EFFECTS / "release").exists():
            if time.monotonic() > deadline:
                raise TimeoutError("never released")
            time.sleep(0.01)
    if event.type == "fail.always" or (event.type == "fail.once" and event.attempt == 1):
        raise ValueError(f"boom on try {event.attempt}")
    record("effect", event)


@on("stripe")
def stripe_handler(event: Event) -> None:
    behave(event)


@on("github", "issues.*")
def github_handler(event: Event) -> None:
    behave(event)


@on("standard")
async def standard_handler(event: Event) -> None:
    behave(event)


@on("acme")
def acme_handler(event: Event) -> None:
    behave(event)


@on("acme", "fail.*")
def acme_sibling(event: Event) -> None:
    """Succeeds whenever its sibling fails: it must not run again on the retry."""
    record("sibling", event)
