"""Handlers the end-to-end tests load into real worker processes.

Each records what it did as one line in a file under ``$HOOKGATE_TEST_EFFECTS`` (appends of a
short line are atomic, so lines from several processes never interleave). Event types steer them:

* ``fail.always`` raises on every try; ``fail.once`` raises on the first try only;
  ``fail.until_fixed`` raises until the file ``fixed`` exists; ``fail.by_id`` always raises a
  ``ValueError`` whose message names the event (one reason, a different message per event);
* ``slow.*`` writes a ``started`` line, then waits for the file ``release`` before its effect;
* ``ledger.*`` (acme) also writes a row through its session, and ``ledger.fail_once`` raises
  after writing on the first try; on ``ledger.slow_after`` a later handler of the same event
  writes ``started`` and waits for ``release`` after the session's writes;
* ``orphan.*`` (acme) writes through its session a row whose deferred foreign key fails the
  event's commit;
* ``nap.*`` (acme) runs two handlers that each sleep 1.6 s;
* ``hang.recv`` (acme) blocks on its first try in ``recv`` on the port named in the file
  ``silent_port`` (a server that never answers), where no time limit can interrupt it;
* ``chatty.*`` logs a line of its own and prints another, as handlers do;
* ``probe.heap`` writes a ``heap`` line: how many objects the garbage collector has frozen, and
  its youngest generation's threshold.

A line is ``kind provider id type pid resource sequence superseded deleted version``, where
``version`` is the reconciled state's ``version`` (or ``-``).
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import time
from pathlib import Path

from sqlalchemy import Column, ForeignKey, Integer
from sqlmodel import Field, Session, SQLModel

from workers import Event, on

EFFECTS = Path(os.environ.get("HOOKGATE_TEST_EFFECTS", "."))

log = logging.getLogger(__name__)


class LedgerEntry(SQLModel, table=True):
    """A row a handler writes through its session."""

    __tablename__ = "test_ledger"

    id: int | None = Field(default=None, primary_key=True)
    event_id: str
    attempt: int


class DeferredChild(SQLModel, table=True):
    """A row whose foreign key is checked only when the transaction commits."""

    __tablename__ = "test_deferred_child"

    id: int | None = Field(default=None, primary_key=True)
    parent_id: int = Field(
        sa_column=Column(Integer, ForeignKey("test_ledger.id", deferrable=True, initially="DEFERRED"), nullable=False)
    )


def record(kind: str, event: Event) -> None:
    version = event.resource.get("version", "-") if isinstance(event.resource, dict) else "-"
    line = (
        f"{kind} {event.provider} {event.id} {event.type} {os.getpid()} {event.resource_id} {event.sequence} "
        f"{int(event.superseded)} {int(event.resource_deleted)} {version}"
    )
    with (EFFECTS / "effects.log").open("a") as f:
        f.write(line + "\n")


def wait_for_release(event: Event) -> None:
    record("started", event)
    deadline = time.monotonic() + 60
    while not (EFFECTS / "release").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("never released")
        time.sleep(0.01)
    record("released", event)


def hang_in_recv(event: Event) -> None:
    """Block in a system call that Python's async exceptions cannot interrupt."""
    port = int((EFFECTS / "silent_port").read_text())
    with socket.create_connection(("127.0.0.1", port)) as conn:
        record("started", event)
        conn.recv(1)
    record("unblocked", event)


def behave(event: Event) -> None:
    if event.type.startswith("chatty."):
        log.info("the handler of %s logs", event.id)
        print(f"the handler of {event.id} prints")
    if event.type.startswith("slow."):
        wait_for_release(event)
    if event.type == "probe.heap":
        with (EFFECTS / "effects.log").open("a") as f:
            f.write(f"heap {gc.get_freeze_count()} {gc.get_threshold()[0]}\n")
    if event.type.startswith("nap."):
        time.sleep(1.6)
    if event.type == "hang.recv" and event.attempt == 1:
        hang_in_recv(event)
    if event.type == "fail.until_fixed" and not (EFFECTS / "fixed").exists():
        raise ValueError(f"not fixed yet on try {event.attempt}")
    if event.type == "fail.by_id":
        raise ValueError(f"no account for {event.id}")
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


@on("acme", "thing.*", include_superseded=True)
def acme_audit(event: Event) -> None:
    """Sees superseded events too."""
    record("audit", event)


@on("acme", "ledger.*")
def acme_ledger(event: Event, session: Session) -> None:
    session.add(LedgerEntry(event_id=event.id, attempt=event.attempt))
    session.flush()
    if event.type == "ledger.fail_once" and event.attempt == 1:
        raise RuntimeError("failing after writing through the session")


@on("acme", "ledger.*")
def acme_after_ledger(event: Event) -> None:
    """Runs after the session handler: a worker stopped here has written through the session."""
    if event.type == "ledger.slow_after":
        wait_for_release(event)


@on("acme", "orphan.*")
def acme_orphan(event: Event, session: Session) -> None:
    """Writes a row the database refuses only at COMMIT: the event's own commit fails."""
    session.add(DeferredChild(parent_id=999_999))
    session.flush()


@on("acme", "nap.*")
def acme_second_nap(event: Event) -> None:
    """A second handler as slow as the first: together they outlast one handler's time limit."""
    time.sleep(1.6)
    record("nap2", event)


@on("slack")
def slack_handler(event: Event) -> None:
    """Slash commands arrive as forms: the worker must decode them for the handler."""
    record(f"slack{event.payload.get('command', '')}", event)


@on("hubspot")
def hubspot_handler(event: Event) -> None:
    """Each event of a HubSpot batch arrives on its own."""
    behave(event)
