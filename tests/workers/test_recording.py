"""Recording a round's outcome when the store fails under it, and what a round's transaction holds.

A handler without a session has done its work once it returns: its effect is outside the store.
When the transaction recording the round then fails for a passing reason (SQLite's write lock
held past the busy timeout, a PostgreSQL connection cut, a deadlock), the outcome is written
again rather than turned into failed tries whose retries would run those handlers a second time.
When the transaction also held session writes, those are gone with it: the event is retried,
but the handlers without a session that succeeded are recorded and not run again.

In-process :class:`~workers.processing.Processor` over the real intake and store (SQLite, or
PostgreSQL with ``HOOKGATE_TEST_DATABASE_URL``), as in test_rounds; the faults are real: another
connection holding SQLite's write lock, ``pg_terminate_backend``, a query cut by the time limit.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text
from sqlmodel import Session, SQLModel

from gateway.models import attempts, events, handler_runs
from tests.conftest import Hookgate
from tests.support.handlers import LedgerEntry
from tests.support.servers import wait_for
from tests.workers.test_ordering import post_thing
from tests.workers.test_rounds import rows
from workers import Event
from workers.calls import TimeLimiter
from workers.leases import LeaseKeeper
from workers.processing import Processor
from workers.reconcile import Reconciler
from workers.registry import HandlerRegistry


def processor_of(hookgate: Hookgate, handlers: HandlerRegistry, **kwargs: Any) -> Processor:
    keeper = LeaseKeeper(hookgate.engine, hookgate.config.workers)
    return Processor(hookgate.engine, hookgate.config.workers, handlers, Reconciler({}), {}, keeper, **kwargs)


def run_first(hookgate: Hookgate, processor: Processor, event_id: str) -> None:
    first = hookgate.event("acme", event_id)
    processor.process(first.id, first.message_id)


def recorded_handlers(hookgate: Hookgate) -> list[tuple[str, str]]:
    with hookgate.engine.connect() as conn:
        found = conn.execute(
            select(events.c.event_id, handler_runs.c.handler).join(events, events.c.id == handler_runs.c.event_pk)
        ).all()
    return sorted((event_id, handler.rsplit(".", 1)[-1]) for event_id, handler in found)


def attempt_outcomes(hookgate: Hookgate) -> list[tuple[str, str]]:
    with hookgate.engine.connect() as conn:
        found = conn.execute(
            select(events.c.event_id, attempts.c.outcome).join(events, events.c.id == attempts.c.event_pk)
        ).all()
    return sorted((event_id, outcome) for event_id, outcome in found)


class OnLogLine(logging.Handler):
    """Runs ``action`` once, at the first line of ``hookgate.worker`` that contains ``words``
    (in the worker's thread, before it goes on)."""

    def __init__(self, words: str, action: Callable[[], None]) -> None:
        super().__init__(logging.WARNING)
        self.words, self.action, self.done = words, action, False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.done and self.words in record.getMessage():
            self.done = True
            self.action()


@contextmanager
def on_worker_log(words: str, action: Callable[[], None]) -> Iterator[OnLogLine]:
    logger = logging.getLogger("hookgate.worker")
    hook = OnLogLine(words, action)
    logger.addHandler(hook)
    try:
        yield hook
    finally:
        logger.removeHandler(hook)


@contextmanager
def recording_cut_once(hookgate: Hookgate) -> Iterator[Callable[[], None]]:
    """A function a handler calls to make the round's recording fail once, for a passing reason.

    SQLite: another connection takes the write lock and keeps it past the round's busy timeout
    (0.5 s in the tests' URL), until the worker logs that the recording failed. PostgreSQL: the
    resource's row is locked from another connection and the worker's connection, once it
    waits for it, is terminated (as by a failover or an administrator)."""
    if hookgate.engine.dialect.name == "sqlite":
        path = hookgate.engine.url.database
        locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

        def arm_sqlite() -> None:
            locker.execute("BEGIN IMMEDIATE")

        with on_worker_log("recording", lambda: locker.execute("ROLLBACK")):
            yield arm_sqlite
        locker.close()
        return
    holder = create_engine(hookgate.engine.url)
    conn = holder.connect()
    cutter: list[threading.Thread] = []

    def cut() -> None:
        def waiting() -> Any:  # each look in a transaction of its own: the view is a snapshot
            with holder.connect() as looking:
                return looking.execute(
                    text(
                        "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query LIKE 'UPDATE hookgate_resources%applied_sequence%'"
                    )
                ).scalar()

        pid = wait_for(waiting, 30, interval=0.02, what="the round to wait for the resource's row")
        with holder.connect() as cutting:
            cutting.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        conn.rollback()

    def arm_postgres() -> None:
        conn.execute(text("SELECT 1 FROM hookgate_resources WHERE resource_id = 'cut' FOR UPDATE"))
        cutter.append(threading.Thread(target=cut, daemon=True))
        cutter[0].start()

    try:
        yield arm_postgres
    finally:
        for thread in cutter:
            thread.join(30)
        conn.close()
        holder.dispose()


def test_a_round_whose_recording_fails_once_is_recorded_again_without_running_its_handlers_again(
    hookgate: Hookgate,
) -> None:
    """Two events of a resource, handled by a handler without a session; their recording fails
    once: both are processed, each handler ran once, one attempt each. (They were recorded as
    failed tries, and their retries ran the handler again.)"""
    hookgate.start_intake()
    for version, event_id in enumerate(("cut-1", "cut-2"), start=1):
        post_thing(hookgate, event_id, "cut", version)
    ran: list[str] = []
    handlers = HandlerRegistry()
    with recording_cut_once(hookgate) as cut:

        @handlers.on("acme")
        def noted(event: Event) -> None:
            ran.append(event.id)
            if event.id == "cut-2":
                cut()

        run_first(hookgate, processor_of(hookgate, handlers), "cut-1")
    assert ran == ["cut-1", "cut-2"]
    after = rows(hookgate, ["cut-1", "cut-2"])
    assert [(after[e].status, after[e].attempts) for e in ("cut-1", "cut-2")] == [("processed", 1), ("processed", 1)]
    assert attempt_outcomes(hookgate) == [("cut-1", "processed"), ("cut-2", "processed")]
    assert recorded_handlers(hookgate) == [("cut-1", "noted"), ("cut-2", "noted")]
    assert hookgate.resource("acme", "cut").applied_sequence == 2


def create_ledger(hookgate: Hookgate) -> None:
    SQLModel.metadata.create_all(hookgate.engine, tables=[LedgerEntry.__table__])  # type: ignore[list-item]


def ledger(hookgate: Hookgate) -> list[str]:
    with hookgate.engine.connect() as conn:
        return sorted(conn.execute(select(LedgerEntry.event_id)).scalars())  # type: ignore[call-overload]


def test_a_round_cut_inside_a_session_keeps_the_handlers_without_a_session_that_succeeded(
    hookgate: Hookgate,
) -> None:
    """PostgreSQL runs a resource's events with session handlers in one round. The time limit
    cuts the second event's session handler inside its query: SQLAlchemy invalidates the round's
    connection, and every session write of the round is gone. Both events are retried, and the
    handler without a session that succeeded is recorded: it does not run again. (The whole
    round was recorded as failed tries, that handler included.)"""
    if hookgate.engine.dialect.name != "postgresql":
        pytest.skip("SQLite runs an event with a session handler in a round of its own")
    create_ledger(hookgate)
    hookgate.start_intake()
    for version, event_id in enumerate(("slowq-1", "slowq-2"), start=1):
        post_thing(hookgate, event_id, "slowq", version)
    handlers = HandlerRegistry()

    @handlers.on("acme")
    def wrote(event: Event, session: Session) -> None:
        session.add(LedgerEntry(event_id=event.id, attempt=event.attempt))
        session.flush()
        if event.id == "slowq-2":
            session.execute(text("SELECT pg_sleep(3)"))

    @handlers.on("acme")
    def noted(event: Event) -> None:
        pass

    processor = processor_of(hookgate, handlers, limiter=TimeLimiter(0.5))
    started = time.monotonic()
    run_first(hookgate, processor, "slowq-1")
    assert time.monotonic() - started < 30
    after = rows(hookgate, ["slowq-1", "slowq-2"])
    assert [(after[e].status, after[e].attempts) for e in ("slowq-1", "slowq-2")] == [("queued", 1), ("queued", 1)]
    assert ledger(hookgate) == []
    assert recorded_handlers(hookgate) == [("slowq-1", "noted")]  # slowq-2's did not run: it will
    assert "database connection was closed while its handlers ran" in after["slowq-1"].last_error


def test_a_round_with_a_session_holds_no_lock_while_a_handler_without_one_runs_before_it(
    hookgate: Hookgate,
) -> None:
    """SQLite's one write lock is taken just before the first session handler, not while the
    reconciliation fetch and the handlers before it run: the intake goes on accepting events
    while such a handler waits (on a slow API, say). (The round took the lock as it began, and
    the intake's commit timed out: 503.)"""
    if hookgate.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL has no database-wide write lock")
    create_ledger(hookgate)
    hookgate.start_intake()
    post_thing(hookgate, "held-1", "held", 1)
    waiting, release = threading.Event(), threading.Event()
    handlers = HandlerRegistry()

    @handlers.on("acme")
    def notify(event: Event) -> None:
        waiting.set()
        release.wait(30)

    @handlers.on("acme")
    def wrote(event: Event, session: Session) -> None:
        session.add(LedgerEntry(event_id=event.id, attempt=event.attempt))

    processor = processor_of(hookgate, handlers)
    worker = threading.Thread(target=run_first, args=(hookgate, processor, "held-1"), daemon=True)
    worker.start()
    try:
        assert waiting.wait(30)
        body, headers = hookgate.signed("acme", "thing.updated", "held-other", {"id": "other", "version": 1})
        answer = hookgate.post("acme", body, headers)
    finally:
        release.set()
        worker.join(30)
    assert answer.status_code == 200, answer.text
    assert hookgate.event("acme", "held-1").status == "processed"
    assert ledger(hookgate) == ["held-1"]


def test_a_postgresql_round_is_not_ended_as_idle_while_its_handlers_run_one_after_another(
    hookgate: Hookgate,
) -> None:
    """A round's transaction, once a session handler wrote, is ended by PostgreSQL when idle for
    longer than one handler may run. Three handlers without a session follow the session handler,
    each well within that time, together past it: the round is recorded, once. (The server ended
    the transaction, and the event was retried.)"""
    if hookgate.engine.dialect.name != "postgresql":
        pytest.skip("idle_in_transaction_session_timeout is PostgreSQL's")
    create_ledger(hookgate)
    hookgate.start_intake()
    post_thing(hookgate, "idle-1", "idle", 1)
    handlers = HandlerRegistry()
    ran: list[str] = []

    @handlers.on("acme")
    def wrote(event: Event, session: Session) -> None:
        session.add(LedgerEntry(event_id=event.id, attempt=event.attempt))
        session.flush()

    @handlers.on("acme")
    def first(event: Event) -> None:
        ran.append("first")
        time.sleep(0.8)

    @handlers.on("acme")
    def second(event: Event) -> None:
        ran.append("second")
        time.sleep(0.8)

    @handlers.on("acme")
    def third(event: Event) -> None:
        ran.append("third")
        time.sleep(0.8)

    processor = processor_of(hookgate, handlers)
    processor.keeper.work_seconds = 2.0  # one handler's time limit and the grace, made short
    run_first(hookgate, processor, "idle-1")
    assert hookgate.event("acme", "idle-1").status == "processed"
    assert ledger(hookgate) == ["idle-1"]
    assert ran == ["first", "second", "third"]


def test_a_session_handler_that_cannot_have_sqlites_lock_fails_alone(hookgate: Hookgate) -> None:
    """The lock a session handler needs is held elsewhere past the busy timeout: that handler
    fails (retried with the event), and the handler before it, which succeeded, is recorded."""
    if hookgate.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL has no database-wide write lock")
    create_ledger(hookgate)
    hookgate.start_intake()
    post_thing(hookgate, "nolock-1", "nolock", 1)
    locker = sqlite3.connect(hookgate.engine.url.database, isolation_level=None, check_same_thread=False)
    handlers = HandlerRegistry()

    @handlers.on("acme")
    def notify(event: Event) -> None:
        locker.execute("BEGIN IMMEDIATE")

    @handlers.on("acme")
    def wrote(event: Event, session: Session) -> None:
        session.add(LedgerEntry(event_id=event.id, attempt=event.attempt))

    with on_worker_log("database is locked", lambda: locker.execute("ROLLBACK")):
        run_first(hookgate, processor_of(hookgate, handlers), "nolock-1")
    locker.close()
    row = hookgate.event("acme", "nolock-1")
    assert (row.status, row.attempts) == ("queued", 1)
    assert "wrote raised OperationalError: database is locked" in row.last_error, row.last_error
    assert recorded_handlers(hookgate) == [("nolock-1", "notify")]
    assert ledger(hookgate) == []


def test_a_database_error_is_recorded_without_the_statements_parameters(hookgate: Hookgate) -> None:
    """A session handler's write the database refuses: ``last_error`` and the attempt give the
    driver's first line, not SQLAlchemy's text with the row's values (a customer's data)."""
    create_ledger(hookgate)
    with Session(hookgate.engine) as session:
        session.add(LedgerEntry(id=1, event_id="first", attempt=1))
        session.commit()
    hookgate.start_intake()
    post_thing(hookgate, "dup-1", "dup", 1)
    handlers = HandlerRegistry()

    @handlers.on("acme")
    def wrote(event: Event, session: Session) -> None:
        session.add(LedgerEntry(id=1, event_id="4242-4242-secret", attempt=event.attempt))
        session.flush()

    run_first(hookgate, processor_of(hookgate, handlers), "dup-1")
    row = hookgate.event("acme", "dup-1")
    assert row.status == "queued"
    assert "wrote raised IntegrityError: " in row.last_error, row.last_error
    with hookgate.engine.connect() as conn:
        errors = conn.execute(select(attempts.c.errors)).scalar_one()
    for recorded in (row.last_error, errors):
        assert "4242-4242-secret" not in recorded
        assert "[SQL" not in recorded
