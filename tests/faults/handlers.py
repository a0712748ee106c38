"""Handlers the fault scenarios load into real worker processes (in place of tests.support.handlers).

Two handlers run for acme events, in this order:

* :func:`ledger` (with a session) writes one :class:`Effect` row, under a UNIQUE key on
  (event id, handler, round), for the types ``fx.*``, ``fail.*``, ``slowtx.*``, ``hangtx.*`` and
  ``naptx.*``.
  The round is the event's (forced replays start a new one), read from Hookgate's own table
  through the same session. A second commit of one effect is impossible: it fails with an
  ``IntegrityError``, which the event's ``last_error`` then shows.
* :func:`work` (plain, every acme event) appends ``start`` to ``effects.log`` under
  ``$HOOKGATE_TEST_EFFECTS``, behaves as the type says, then appends ``done`` (or ``raised``
  when it fails or the time limit interrupts it). Plain handlers are delivered at least once,
  so their lines count *runs*, not effects.

Types steer :func:`work`: ``slow.*``/``slowtx.*`` wait for the file ``release``; ``hang.*``/
``hangtx.*`` block on their first try in ``recv`` on the port in the file ``silent_port`` (a
server that never answers; no time limit can interrupt that); ``nap.MS``/``naptx.MS`` take MS
milliseconds (in Python, so a time limit can interrupt them); ``fail.*`` raise until the file
``fixed`` exists, then (``fail.slow``) wait for ``release``; ``fx.*`` return at once.

On SQLite a session holds the database's one write lock while the event's handlers run, so the
scenarios use the session variants of slow, hung and napping handlers (``slowtx``, ``hangtx``,
``naptx``) on PostgreSQL only.

A line is ``kind event_id attempt pid``; appends of a short line are atomic across processes.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from sqlalchemy import UniqueConstraint, select
from sqlmodel import Field, Session, SQLModel

from gateway.models import events
from workers import Event, on

EFFECTS = Path(os.environ.get("HOOKGATE_TEST_EFFECTS", "."))
LOG = EFFECTS / "effects.log"

#: Types whose events the session handler writes an effect for.
LEDGER_PREFIXES = ("fx.", "fail.", "slowtx.", "hangtx.", "naptx.")


class Effect(SQLModel, table=True):
    """One handler's effect on one event in one round: never twice."""

    __tablename__ = "fault_effects"
    __table_args__ = (UniqueConstraint("event_id", "handler", "round", name="uq_fault_effects_once"),)

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(max_length=255)
    handler: str = Field(max_length=64)
    round: int
    attempt: int
    pid: int


def line(kind: str, event: Event) -> None:
    fd = os.open(LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{kind} {event.id} {event.attempt} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def wait_for_file(name: str) -> None:
    deadline = time.monotonic() + 90
    while not (EFFECTS / name).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} never appeared")
        time.sleep(0.01)


def nap(milliseconds: int) -> None:
    """Take this long in short sleeps: a time limit (an exception raised in the thread) reaches it."""
    end = time.monotonic() + milliseconds / 1000
    while time.monotonic() < end:
        time.sleep(0.01)


def hang_in_recv(event: Event) -> None:
    """Block in a system call that Python's asynchronous exceptions cannot interrupt."""
    port = int((EFFECTS / "silent_port").read_text())
    with socket.create_connection(("127.0.0.1", port)) as conn:
        line("hung", event)
        conn.recv(1)
    line("unblocked", event)


@on("acme", "fx.*")
@on("acme", "fail.*")
@on("acme", "slowtx.*")
@on("acme", "hangtx.*")
@on("acme", "naptx.*")
def ledger(event: Event, session: Session) -> None:
    round_ = session.execute(
        select(events.c.round).where(events.c.provider == event.provider, events.c.event_id == event.id)
    ).scalar_one()
    session.add(Effect(event_id=event.id, handler="ledger", round=round_, attempt=event.attempt, pid=os.getpid()))
    session.flush()  # a duplicate fails here, inside the handler


@on("acme")
def work(event: Event) -> None:
    line("start", event)
    try:
        behave(event)
    except BaseException:  # a failure, or the time limit's HandlerTimeout
        line("raised", event)
        raise
    line("done", event)


def behave(event: Event) -> None:
    kind, _, detail = event.type.partition(".")
    if kind == "fail" and not (EFFECTS / "fixed").exists():
        raise ValueError(f"not fixed yet on try {event.attempt}")
    if kind in ("slow", "slowtx") or event.type == "fail.slow":
        wait_for_file("release")
    if kind in ("hang", "hangtx") and event.attempt == 1:
        hang_in_recv(event)
    if kind in ("nap", "naptx"):
        nap(int(detail))
