"""Processing events: claim, order, reconcile, run the handlers, and commit a round at once.

An event without a resource is claimed by its broker message and handled alone. An event of a
resource is handled by a *resource pass* (see :mod:`workers.ordering`): the worker that holds the
resource's lease applies its pending events in sequence order, with one reconciliation fetch
shared by the pass, a *round* at a time.

A round claims up to :data:`ROUND_EVENTS` due events in one statement, tries them in order on one
connection and commits all their outcomes in one transaction: the handlers' session writes (each
event's in savepoints), the record of each handler that succeeded, the events' statuses, their
attempts and the resource store. That is what an event costs: a share of about six statements
per round instead of eight of its own (the profile is in the README's Benchmark section).
At-least-once delivery to handlers, at most one recorded success per (event, handler, round): a
handler that succeeded is skipped on every later try. A handler that raises does not stop the
others; its session writes are rolled back to a savepoint, and the event is retried with backoff,
then ``failed`` with every handler's error. Nothing raised while preparing or recording an event
escapes to Dramatiq: it becomes the event's recorded failure (see :meth:`Processor.run_round`),
unless recording the round fails for a passing reason and can simply be done again
(:meth:`Processor.record_again`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, InternalError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from gateway import tracing
from gateway.config import ProviderEntry, WorkerSettings
from gateway.logs import current_context, event_context, log_context
from gateway.metrics import worker_metrics
from gateway.models import FAILED, PROCESSED, PROCESSING, QUEUED, SUPERSEDED
from gateway.pausing import PausedProviders, park
from gateway.queue import EventQueue, new_token
from providers.base import Clock

from .calls import HandlerTimeout, TimeLimiter, WorkerStopping, call_handler, describe_failures, driver_message
from .event import Event
from .leases import EventLeases, Lease, LeaseKeeper, ResourceKey, ResourceLeases
from .lifecycle import EventLifecycle, FailedTry, mark_queued
from .ordering import due_at, due_prefix, is_superseded
from .reconcile import Fetched, ReconcileError, Reconciler
from .registry import Handler, HandlerRegistry
from .resources import ResourceStore, StoredResource, applied, stored_of
from .spreading import Lanes, Spreader, lanes_of
from .tries import Try

log = logging.getLogger("hookgate.worker")

#: When another worker holds an event's resource, the sweep looks at the event again this much later.
BUSY_RETRY_SECONDS = 1.0

#: The most events of a resource one round claims and commits at once (see :meth:`Processor.run_round`).
ROUND_EVENTS = 64

#: The pauses before writing a round's outcome again when its transaction failed and no session
#: handler had begun it (see :meth:`Processor.record_again`): 1.3 s in all, and the busy timeouts.
RECORD_AGAIN_AFTER = (0.05, 0.25, 1.0)


def log_handler_error(row: Any, name: str, exc: BaseException) -> None:
    """One ERROR line per handler that raised: the event, the type, the message and the file:line
    it was raised at, so that the line alone says what to fix; the traceback follows it. A call
    cut short by the worker's stop is no error of the handler's: one WARNING line."""
    if isinstance(exc, WorkerStopping):
        log.warning(
            "event %s/%s attempt %d: %s", row.provider, row.event_id, row.attempts, describe_failures([(name, exc)])
        )
        return
    log.error(
        "event %s/%s attempt %d: %s",
        row.provider,
        row.event_id,
        row.attempts,
        describe_failures([(name, exc)]),
        exc_info=(type(exc), exc, exc.__traceback__),
    )


def log_failed_try(row: Any, outcome: FailedTry, error: str, now: float) -> None:
    """A try that failed: WARNING with when the retry runs, ERROR once the event is ``failed``;
    either way an error on the event's ``process`` span when tracing."""
    error = error.replace("\n", "; ")
    tracing.settled(outcome.status, failed=True)
    if outcome.status == FAILED:
        log.error("event %s/%s failed on attempt %d, no retry: %s", row.provider, row.event_id, row.attempts, error)
        return
    delay = max(0.0, (outcome.retry_at or now) - now)
    log.warning(
        "event %s/%s attempt %d failed; retry %d in %.1f s: %s",
        row.provider,
        row.event_id,
        row.attempts,
        row.attempts + 1,
        delay,
        error,
    )


def to_event(
    row: Any, payload: Any, headers: dict[str, str], stored: StoredResource, fetched: Fetched, superseded: bool
) -> Event:
    current = stored if superseded or not fetched.reconciled else fetched
    return Event(
        provider=row.provider,
        id=row.event_id,
        type=row.event_type,
        resource_id=row.resource_id,
        sequence=row.sequence,
        received_at=datetime.fromtimestamp(row.received_at, UTC),
        payload=payload,
        headers=headers,
        resource=current.state,
        previous=stored.state,
        resource_type=fetched.resource_type,
        resource_deleted=current.deleted,
        superseded=superseded,
        attempt=row.attempts,
    )


class SharedFetch:
    """One reconciliation per resource pass: the first event that needs the state fetches it."""

    def __init__(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler
        self._fetched: Fetched | None = None

    def get(self, row: Any, payload: Any) -> Fetched:
        if self._fetched is None:
            self._fetched = self.reconciler.fetch(row.provider, row.event_type, row.resource_id, payload)
        return self._fetched


def passing(exc: Exception) -> bool:
    """Whether a failure to write a round's outcome may not happen again: the database's
    operational errors (a deadlock, a dropped connection, SQLite's lock past the busy timeout,
    PostgreSQL ending an idle transaction) and a pool with no connection free; not a constraint
    violation, nor a bug."""
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc, OperationalError | InternalError)
    return isinstance(exc, PoolTimeout)


class ConnectionLost(Exception):
    """The round's connection was closed under its handlers, and its transaction with it."""

    def __init__(self) -> None:
        super().__init__(
            "the round's database connection was closed while its handlers ran (a time limit or the "
            "worker's stop cut a session's query short, or the database dropped it)"
        )


class PreparationError(Exception):
    """Raised when a stored event cannot be made ready for its handlers (decode or reconcile);
    ``stage`` names which, and the exception that made it is its ``__cause__``."""

    def __init__(self, message: str, *, stage: str, retry_after: float | None = None, permanent: bool = True) -> None:
        super().__init__(message)
        self.stage = stage
        self.retry_after = retry_after
        self.permanent = permanent

    def describe(self, tried: Try) -> None:
        """Record what failed in ``tried``: the error, and a failed reconciliation's answer."""
        cause = self.__cause__ or self
        tried.failed([(self.stage, cause)])
        if self.stage == "reconcile":
            tried.reconcile_status = getattr(cause, "status", None)
            tried.reconcile_error = (
                str(cause) if isinstance(cause, ReconcileError) else f"{type(cause).__name__}: {cause}"
            )


@dataclass(slots=True)
class Prepared:
    """An event ready for its handlers."""

    event: Event
    handlers: list[Handler]
    fetched: Fetched


@dataclass(slots=True)
class Tried:
    """What one try of a round left, written when the round commits (see :meth:`Processor.record_round`)."""

    row: Any
    attempt: Try
    #: ``processed`` or ``superseded``; ``None`` when the try failed (``error`` says why).
    status: str | None = None
    succeeded: list[str] = field(default_factory=list)
    error: str = ""
    retry_after: float | None = None
    permanent: bool = False
    #: The resource once the event is applied, and what reconciliation fetched for it.
    after: StoredResource | None = None
    fetched: Fetched | None = None
    #: What recording a failed try left (set when the round is recorded).
    failed: FailedTry | None = None
    #: The log context of the try (the event's fields, its trace id), for the lines logged after the commit.
    log_fields: Mapping[str, object] = field(default_factory=dict)


@dataclass(slots=True)
class ResourcePass:
    """One worker's pass over a resource's due events, under the resource's lease."""

    key: ResourceKey
    holder: str
    lease: Lease
    window: float
    #: When the pass hands the rest of the backlog to a new message (see ``Processor.pass_budget``).
    deadline: float = math.inf
    #: A round has been tried: the budget applies from now on.
    settled: bool = False
    #: The last round claimed fewer events than were due (one changed under the pass): stop after it.
    last_round: bool = False
    #: The lease was given back, in the transaction that ended the pass.
    released: bool = False
    #: The resource as stored: read with its lease, then kept current as the pass writes it.
    stored: StoredResource = field(default_factory=StoredResource)


@dataclass(slots=True)
class Plan:
    """A pass's next round: its claimed events (none when the pass is over) and the resource as stored."""

    rows: list[Any]
    stored: StoredResource = field(default_factory=StoredResource)
    #: Due events the claim passed over (a pause, a replay): parked after the commit, if paused.
    park: list[tuple[int, str | None]] = field(default_factory=list)
    #: The transaction gives the resource's lease back (the pass ends with it).
    releases: bool = False


class Processor:
    """The body of the ``hookgate.process_event`` actor."""

    def __init__(
        self,
        engine: Engine,
        settings: WorkerSettings,
        registry: HandlerRegistry,
        reconciler: Reconciler,
        providers: Mapping[str, ProviderEntry],
        keeper: LeaseKeeper,
        *,
        limiter: TimeLimiter | None = None,
        pass_budget: float | None = None,
        clock: Clock = time.time,
        paused: PausedProviders | None = None,
        threads: int = 1,
        spread_to: EventQueue | None = None,
    ) -> None:
        self.engine = engine
        #: Providers whose events wait (see :mod:`gateway.pausing`), read at most once a second.
        self.paused = paused or PausedProviders(engine)
        self.lifecycle = EventLifecycle(engine, settings)
        self.event_leases = EventLeases(engine, settings)
        self.resource_leases = ResourceLeases(engine, settings)
        self.resources = ResourceStore(engine)
        #: Where the lanes of a message go for other threads (see :meth:`spread`); none: nowhere.
        self.spread_to = spread_to
        self.spreader = Spreader(threads, self.spread if spread_to is not None else None)
        self.registry = registry
        self.reconciler = reconciler
        self.providers = providers
        self.keeper = keeper
        self.limiter = limiter or TimeLimiter(settings.handler_time_limit_seconds)
        #: A pass hands the rest of a resource's backlog to a new message after this long, so
        #: that one busy resource does not keep a worker thread to itself.
        self.pass_budget = settings.handler_time_limit_seconds / 2 if pass_budget is None else pass_budget
        self.clock = clock
        #: Set when the worker stops: a resource pass then starts no further event.
        self.stopping = threading.Event()

    def stop(self, deadline: float) -> None:
        """The worker is stopping: finish the events being handled, start no other event of a
        resource pass, and interrupt handler calls still running at ``deadline`` (monotonic)."""
        self.stopping.set()
        self.limiter.stop_by(deadline)

    def process(self, pks: int | list[int], token: str) -> None:
        """Run the events of a broker message, each alone or in its resource's pass; never raises."""
        pks = [pks] if isinstance(pks, int) else list(pks)  # one pk: a message of an earlier release
        with self.spreader.running():
            try:
                self._process(pks, token)
            except Exception:
                # The store or the broker failed under us: the lease lapses and the sweep re-sends.
                log.error("events %s: processing stopped; the recovery sweep will send them again", pks, exc_info=True)

    def _process(self, pks: list[int], token: str) -> None:
        rows = self.lifecycle.current(pks, token)
        if not rows:
            log.debug("events %s: message %s is stale or the events are done; dropped", pks, token)
            return
        lanes = Lanes(lanes_of(self.leave_paused(rows, token)), token)
        first = lanes.next()
        if first is None:
            return
        if self.spreader.worth_spreading(lanes.waiting()):
            self.spread(lanes.take_rest(), token)
        with self.spreader.watching(lanes):
            lane: list[Any] | None = first
            while lane is not None:
                started = time.monotonic()
                self.run_lane(lane, token)
                self.spreader.lane_ran(time.monotonic() - started)
                lane = lanes.next()
                if lane is not None and self.stopping.is_set():  # the rest to other workers, by the sweep
                    rest = [lane, *lanes.take_rest()]
                    self.lifecycle.hand_over([row.id for lane in rest for row in lane], token)
                    return

    def leave_paused(self, rows: list[Any], token: str) -> list[Any]:
        """Park the events of paused providers (see :mod:`gateway.pausing`); the others."""
        parked: set[str] = set()
        for provider in {row.provider for row in rows if row.provider in self.paused}:
            if park(self.engine, provider, [(row.id, token) for row in rows if row.provider == provider]):
                log.debug("provider %s is paused; its events wait for its resume", provider)
                parked.add(provider)
        return [row for row in rows if row.provider not in parked]

    def spread(self, lanes: list[list[Any]], token: str) -> None:
        """Hand these lanes of a message to new messages, one each, for idle threads of any worker
        to take (see :mod:`workers.spreading`)."""
        if not lanes or self.spread_to is None:
            return
        moved = self.lifecycle.retoken([[row.id for row in lane] for lane in lanes], token)
        try:
            self.spread_to.send(moved)
        except Exception as exc:  # their new tokens have no message: the sweep sends them
            log.warning("%d events could not be handed to new messages: %s", len(moved), type(exc).__name__)
            return
        try:
            mark_queued(self.engine, moved)
        except Exception as exc:  # left received: at worst the sweep sends them again, the old messages stale
            log.warning("%d events handed to new messages could not be marked queued: %s", len(moved), exc)

    def run_lane(self, lane: list[Any], token: str) -> None:
        """One event without a resource, or the pass of a resource some of the message's events belong to."""
        row = lane[0]
        if row.resource_id is None:
            claimed = self.event_leases.claim(row.id, token, message=token)
            if claimed is not None:
                self.run_round([claimed], token, None, SharedFetch(self.reconciler), StoredResource())
            else:  # paused since this worker read the paused set: parked (nothing, if not paused)
                park(self.engine, row.provider, [(row.id, token)])
            return
        key = (row.provider, row.resource_id)
        entry = self.providers.get(key[0])
        holder = new_token()
        with self.keeper.holding_resource(key, holder) as lease:
            window = entry.window_seconds if entry else 0.0
            pass_ = ResourcePass(key, holder, lease, window, deadline=self.clock() + self.pass_budget)
            try:
                with self.engine.begin() as conn:
                    taken = self.resource_leases.take(conn, key, holder)
                    if taken is None:
                        pass_.released = True  # never held
                        self.lifecycle.defer(conn, [row.id for row in lane], token, BUSY_RETRY_SECONDS)
                        return
                    pass_.stored = stored_of(taken)
                    plan = self.plan_round(conn, pass_)
                pass_.released = plan.releases
                self.drain(pass_, plan)
            finally:
                if not pass_.released:  # the pass broke off: give the lease back on its own
                    self.resource_leases.release(key, holder)

    def drain(self, pass_: ResourcePass, plan: Plan) -> None:
        """Run the pass's rounds, each planned in the transaction that committed the one before."""
        while True:
            if plan.park:  # changed under us (a replay, a sweep, a pause): parked, if paused
                park(self.engine, pass_.key[0], plan.park)
            if not plan.rows:
                return
            plan = self.run_round(plan.rows, pass_.holder, pass_.key, SharedFetch(self.reconciler), plan.stored, pass_)

    def plan_round(self, conn: Connection, pass_: ResourcePass) -> Plan:
        """Claim the resource's next round of due events, in order, in the caller's transaction;
        or, when there is none, end the pass there: schedule the event that stops it (a window,
        a retry) and give the resource's lease back."""
        key, now = pass_.key, self.clock()
        if pass_.settled and self.resource_leases.give_up_if_done(conn, key, pass_.holder):
            return Plan([], releases=True)  # nothing left to do: the usual end of a pass
        batch, blocker = due_prefix(self.resources.pending(conn, key), now, pass_.window)
        if not batch:
            if blocker is not None and blocker.status != PROCESSING:
                self.lifecycle.schedule(conn, blocker.id, due_at(blocker, pass_.window))
            return self.end_pass(conn, pass_)
        if key[0] in self.paused:  # paused meanwhile: the rest is parked when it comes up
            return self.end_pass(conn, pass_)
        if pass_.settled and (now > pass_.deadline or self.stopping.is_set()):
            self.lifecycle.schedule(conn, batch[0].id, now)  # the rest goes to a new message, now
            return self.end_pass(conn, pass_)
        batch = batch[: self.round_size(key[0], batch)]
        claimed = self.event_leases.claim_many(conn, [pending.id for pending in batch], pass_.holder)
        missing = [pending for pending in batch if pending.id not in claimed]
        prefix = batch[: batch.index(missing[0])] if missing else batch
        if missing:  # keep the order: nothing behind the first event that was not claimed
            self.event_leases.give_back(
                conn, [p.id for p in batch[len(prefix) :] if p.id in claimed], pass_.holder, now
            )
            pass_.last_round = True
        parked = [(pending.id, pending.message_id) for pending in missing]
        if not prefix:
            return self.end_pass(conn, pass_, parked)
        pass_.lease.extend(self.keeper.work_seconds)
        return Plan([claimed[pending.id] for pending in prefix], pass_.stored, parked)

    def end_pass(
        self, conn: Connection, pass_: ResourcePass, parked: list[tuple[int, str | None]] | None = None
    ) -> Plan:
        self.resource_leases.give_up(conn, pass_.key, pass_.holder)
        return Plan([], park=parked or [], releases=True)

    def round_size(self, provider: str, batch: list[Any]) -> int:
        """How many events a round takes: :data:`ROUND_EVENTS`, or one on SQLite when a handler
        takes a session: its transaction then holds SQLite's only write lock while the handlers
        run, which must not be for a whole round."""
        sqlite = self.engine.dialect.name == "sqlite"
        if sqlite and any(self.needs_session(provider, t) for t in {pending.event_type for pending in batch}):
            return 1
        return ROUND_EVENTS

    def needs_session(self, provider: str, event_type: str, done: Collection[str] = ()) -> bool:
        """Whether a handler of such an event, other than those ``done``, takes a session."""
        return any(h.takes_session and h.name not in done for h in self.registry.for_event(provider, event_type))

    def give_back_now(self, pks: list[int], holder: str) -> None:
        if pks:
            with self.engine.begin() as conn:
                self.event_leases.give_back(conn, pks, holder, self.clock())

    def run_round(
        self,
        rows: list[Any],
        token: str,
        key: ResourceKey | None,
        fetch: SharedFetch,
        stored: StoredResource,
        pass_: ResourcePass | None = None,
    ) -> Plan:
        """Try the claimed events ``rows`` in order and commit every outcome in one transaction.

        Each event is prepared and its handlers run on the round's connection, each handler's
        session in a savepoint of its own. The round stops early, giving its remaining events
        back (see :meth:`EventLeases.give_back`), when an event fails and will be retried (the
        ones behind it wait for it), when the worker stops, when the provider is paused, or when
        the pass's budget is spent. The same transaction plans the pass's next round, or ends
        the pass (see :meth:`plan_round`): the next round, empty when there is none.
        """
        deadline = pass_.deadline if pass_ else math.inf
        tries: list[Tried] = []
        done = self.lifecycle.succeeded_handlers(rows)

        def record(conn: Connection) -> Plan | Exception | None:
            rest = rows[len(tries) :]
            return self.record(conn, pass_, lambda: self.record_round(conn, tries, rest, token, key, pass_, go_on))

        with self.keeper.holding_events([row.id for row in rows], token) as event_leases:
            leases = [*event_leases, *([pass_.lease] if pass_ else [])]
            with self.engine.connect() as conn:
                current = stored
                for row in rows:
                    if tries and (self.stopping.is_set() or self.clock() > deadline or row.provider in self.paused):
                        break
                    tried = self.try_event(conn, row, token, key, fetch, current, leases, done[row.id])
                    tries.append(tried)
                    if tried.status is None and not self.lifecycle.is_last_try(row, tried.permanent):
                        break  # retried later: the events behind it wait for it
                    if conn.invalidated:  # the round's transaction is gone: the rest go back untried
                        break
                    current = tried.after or current
                go_on = len(tries) == len(rows) and all(
                    t.status is not None or self.lifecycle.is_last_try(t.row, t.permanent) for t in tries
                )
                sessions_began = conn.in_transaction()  # only a session handler begins it before the record
                recorded = ConnectionLost() if conn.invalidated else record(conn)
            if isinstance(recorded, Exception) and passing(recorded) and not sessions_began:
                recorded = self.record_again(record, recorded, len(tries))
        if isinstance(recorded, Exception):  # each try recorded as a failure on a connection of its own
            self.record_unrecorded(tries, rows[len(tries) :], token, recorded)
            return Plan([])
        if recorded is None:
            log.warning("%d events: lease lost while running handlers; nothing recorded", len(rows))
            return Plan([])
        if pass_ is not None:
            pass_.released = recorded.releases
        self.report(tries)
        return recorded

    def try_event(
        self,
        conn: Connection,
        row: Any,
        token: str,
        key: ResourceKey | None,
        fetch: SharedFetch,
        stored: StoredResource,
        leases: list[Lease],
        done: set[str],
    ) -> Tried:
        """Prepare one claimed event and run its handlers that have not succeeded yet; what it left.

        Every line logged meanwhile, the handlers' and the reconciliation's too, carries the
        event's provider, id, type and attempt in the JSON log format (see :mod:`gateway.logs`).
        """
        with event_context(row), tracing.processing(row, message_id=token if key is None else None):
            tried = Tried(row, Try.of(row), log_fields=current_context())
            try:
                prepared = self.prepare(row, key, fetch, stored)
            except PreparationError as exc:
                exc.describe(tried.attempt)
                tried.error, tried.retry_after, tried.permanent = str(exc), exc.retry_after, exc.permanent
                tracing.settled(FAILED if self.lifecycle.is_last_try(row, exc.permanent) else QUEUED, failed=True)
                return tried
            tried.attempt.reconcile_status = prepared.fetched.status
            todo = [h for h in prepared.handlers if h.name not in done]
            tried.succeeded, failures = self.run_handlers(todo, prepared.event, conn, leases, row)
            if failures:
                tried.attempt.failed(failures)
                tried.error = describe_failures(failures)
                tracing.settled(FAILED if self.lifecycle.is_last_try(row) else QUEUED, failed=True)
                return tried
            superseded = prepared.event.superseded
            tried.status = SUPERSEDED if superseded else PROCESSED
            tried.fetched = prepared.fetched
            tried.after = stored if superseded or key is None else applied(stored, row, prepared.fetched)
            tracing.settled(tried.status)
            return tried

    def record_round(
        self,
        conn: Connection,
        tries: list[Tried],
        rest: list[Any],
        token: str,
        key: ResourceKey | None,
        pass_: ResourcePass | None,
        go_on: bool,
    ) -> Plan | None:
        """Write the round's outcomes, fenced by the token, and commit: the statuses, the resource,
        the handler runs and the attempts; the events not tried go back; the pass's next round
        is claimed (if it ``go_on``) or the pass ends. Returns the next round, or ``None`` if a
        lease was lost (and everything rolled back)."""
        for status in (PROCESSED, SUPERSEDED):
            if not self.lifecycle.finish(conn, [t.row.id for t in tries if t.status == status], token, status):
                conn.rollback()
                return None
        retry_at: float | None = None
        for tried in tries:
            if tried.status is None:
                failed = self.lifecycle.fail(
                    conn,
                    tried.row,
                    token,
                    tried.error,
                    tried=tried.attempt,
                    retry_after=tried.retry_after,
                    permanent=tried.permanent,
                )
                if failed is None:
                    conn.rollback()
                    return None
                tried.failed = failed
                retry_at = failed.retry_at
        applied_last = [t for t in tries if t.status == PROCESSED]
        if key is not None and applied_last:
            last = applied_last[-1]
            assert last.after is not None
            assert last.fetched is not None
            if not self.resources.write_state(conn, key, token, last.row, last.after, last.fetched):
                conn.rollback()
                return None
            if pass_ is not None:
                pass_.stored = last.after
        self.lifecycle.record_handlers(conn, [(t.row, t.succeeded) for t in tries])  # only once the fence has held
        self.lifecycle.record_attempts(conn, [(t.attempt, t.status) for t in tries if t.status is not None])
        self.event_leases.give_back(conn, [row.id for row in rest], token, retry_at or self.clock())
        plan = Plan([])
        if pass_ is not None:
            pass_.settled = True
            plan = self.plan_round(conn, pass_) if go_on and not pass_.last_round else self.end_pass(conn, pass_)
        conn.commit()
        return plan

    def record(
        self, conn: Connection, pass_: ResourcePass | None, record_round: Callable[[], Plan | None]
    ) -> Plan | Exception | None:
        """:meth:`record_round` in the round's transaction (begun now, if no session handler
        began it); what it raised, once rolled back, is returned instead."""
        last_round = pass_.last_round if pass_ else False
        try:
            if not conn.in_transaction():
                conn.begin()
            return record_round()
        except Exception as exc:
            if pass_ is not None:  # as before this try: its plan went with the rollback
                pass_.last_round = last_round
            try:
                conn.rollback()
            except Exception:  # a dead connection not recognised as one: not handed out again
                conn.invalidate()
            return exc

    def record_again(
        self, record: Callable[[Connection], Plan | Exception | None], failure: Exception, count: int
    ) -> Plan | Exception | None:
        """Write the outcome of a round that wrote nothing through a session again, on a fresh
        connection, after its transaction failed.

        Its handlers' work is done, outside the store: only the record of it is missing. A
        :func:`passing` failure (a deadlock, a dropped connection, SQLite's lock held past the busy
        timeout) must not turn it into failed tries, whose retries would run those handlers a
        second time. The fence keeps this safe: had the failed commit gone through after all, the
        events are no longer this token's to record, and nothing is written. Returns the next
        round, or what the last try raised if every try failed (or one failed for good).
        """
        # Stopping, the process may exit soon after the stop timeout: one more try, soon.
        for pause in RECORD_AGAIN_AFTER[:1] if self.stopping.is_set() else RECORD_AGAIN_AFTER:
            log.warning(
                "%d events: recording the outcome failed (%s); trying again in %.2g s",
                count,
                driver_message(failure),
                pause,
            )
            time.sleep(pause)
            try:
                with self.engine.connect() as conn:
                    outcome = record(conn)
            except Exception as exc:  # no connection to be had (yet)
                outcome = exc
            if not isinstance(outcome, Exception) or not passing(outcome):
                return outcome
            failure = outcome
        return failure

    def record_unrecorded(self, tries: list[Tried], rest: list[Any], token: str, exc: Exception) -> None:
        """Recording the round failed (and was rolled back): each try is recorded as a failure
        of its own, and the events not tried go back. The handlers without a session that
        succeeded are recorded with it: their work is done and is not done again on the retry;
        the session handlers' writes were rolled back, and they run again. Each in a transaction
        of its own: one that fails leaves its event to the sweep, not the others."""
        reason = f"recording the outcome failed: {driver_message(exc)}"
        # A database's error says enough in a line (its text lists the parameters); others are bugs.
        known = isinstance(exc, DBAPIError | ConnectionLost)
        log.error("%d events: %s", len(tries), reason, exc_info=None if known else exc)
        for tried in tries:
            tried.attempt.also_failed("commit", exc)  # after the try's own failures, which stand
            row = tried.row
            rolled_back = {h.name for h in self.registry.for_event(row.provider, row.event_type) if h.takes_session}
            kept = [name for name in tried.succeeded if name not in rolled_back]
            error = f"{tried.error}\n{reason}" if tried.error else reason
            try:
                self.record_failure(row, token, error, tried, kept)
            except Exception as again:  # its lease lapses, and the sweep sends it again
                log.error(
                    "event %s/%s: its failure could not be recorded either: %s",
                    row.provider,
                    row.event_id,
                    driver_message(again),
                )
        try:
            self.give_back_now([row.id for row in rest], token)
        except Exception as again:
            log.error("%d events not tried could not be given back: %s", len(rest), driver_message(again))

    def report(self, tries: list[Tried]) -> None:
        """Log and count the round's committed outcomes."""
        now = self.clock()
        for tried in tries:
            row = tried.row
            if tried.failed is not None:
                with log_context(**tried.log_fields):
                    log_failed_try(row, tried.failed, tried.error, now)
                worker_metrics.failed_try(row.provider, final=tried.failed.status == FAILED)
                continue
            status = tried.status
            assert status is not None  # a failed try has its ``failed`` once recorded
            worker_metrics.settled(row.provider, status, now - row.received_at)
            with log_context(**tried.log_fields):
                log.info(
                    "%s provider=%s event=%s type=%s attempt=%d",
                    status,
                    row.provider,
                    row.event_id,
                    row.event_type,
                    row.attempts,
                )

    def prepare(self, row: Any, key: ResourceKey | None, fetch: SharedFetch, stored: StoredResource) -> Prepared:
        """Decode the stored body, reconcile the resource, pick the handlers.

        Raises:
            PreparationError: anything went wrong; ``permanent`` unless retrying may help.
        """
        superseded = key is not None and is_superseded(row, stored)
        try:
            headers = orjson.loads(row.headers)
            payload = self.decode(row, headers)
        except Exception as exc:
            raise PreparationError(
                f"the stored body cannot be decoded: {type(exc).__name__}: {exc}", stage="decode"
            ) from exc
        fetched = Fetched(None)
        if key is not None and not superseded:
            try:
                fetched = fetch.get(row, payload)
            except ReconcileError as exc:
                raise PreparationError(
                    f"reconciliation: {exc}", stage="reconcile", retry_after=exc.retry_after, permanent=exc.permanent
                ) from exc
            except Exception as exc:
                raise PreparationError(f"reconciliation: {type(exc).__name__}: {exc}", stage="reconcile") from exc
        event = to_event(row, payload, headers, stored, fetched, superseded)
        handlers = [
            h for h in self.registry.for_event(row.provider, row.event_type) if h.include_superseded or not superseded
        ]
        return Prepared(event, handlers, fetched)

    def decode(self, row: Any, headers: dict[str, str]) -> Any:
        """The stored body as its provider's handlers expect it (JSON, or a form for some)."""
        entry = self.providers.get(row.provider)
        if entry is None:  # a provider removed from providers.yaml since the event arrived
            return orjson.loads(row.body)
        return entry.provider.decode(row.body, headers)

    def record_failure(self, row: Any, token: str, error: str, tried: Tried, succeeded: list[str]) -> str | None:
        """Record a failed try in a transaction of its own, with the handlers that ``succeeded``
        in it (its retry waits at least its ``retry_after``, none if ``permanent``); the new
        status, or ``None``."""
        with self.engine.begin() as conn:
            outcome = self.lifecycle.fail(
                conn,
                row,
                token,
                error,
                tried=tried.attempt,
                retry_after=tried.retry_after,
                permanent=tried.permanent,
            )
            if outcome is not None:
                self.lifecycle.record_handlers(conn, [(row, succeeded)])
        if outcome is None:
            log.warning(
                "event %s/%s: lease lost before its failure was recorded: %s", row.provider, row.event_id, error
            )
            return None
        log_failed_try(row, outcome, error, self.clock())
        worker_metrics.failed_try(row.provider, final=outcome.status == FAILED)
        return outcome.status

    def run_handlers(
        self, todo: list[Handler], event: Event, conn: Connection, leases: list[Lease], event_row: Any
    ) -> tuple[list[str], list[tuple[str, BaseException]]]:
        """Call each handler under the time limit; the names that succeeded and the failures."""
        succeeded: list[str] = []
        failures: list[tuple[str, BaseException]] = []
        for handler in todo:
            if conn.invalidated:  # a call before cut a session's query short: the round is lost
                break
            for lease in leases:  # renewed for as long as this call may legitimately take
                lease.extend(self.keeper.work_seconds)
            started = time.perf_counter()
            try:
                with tracing.handler_call(handler.name):
                    # Not under the time limit: an interrupt inside SQLite's lock wait could leave
                    # the process's turn at the lock taken for good (the busy timeout bounds it).
                    self.ready(conn, handler)
                    with self.limiter.limit():
                        call_handler(handler, event, conn)
            except (Exception, HandlerTimeout) as exc:
                worker_metrics.handler_called(handler.name, time.perf_counter() - started, ok=False)
                log_handler_error(event_row, handler.name, exc)
                failures.append((handler.name, exc))
            else:
                worker_metrics.handler_called(handler.name, time.perf_counter() - started, ok=True)
                succeeded.append(handler.name)
        return succeeded, failures

    def ready(self, conn: Connection, handler: Handler) -> None:
        """Open the round's transaction before its first session handler (see :meth:`begin`); once
        it is open, on PostgreSQL, give the server's idle limit back to this call."""
        if handler.takes_session and not conn.in_transaction():
            self.begin(conn)
        elif conn.dialect.name == "postgresql" and conn.in_transaction():
            self.keep_open(conn)

    def begin(self, conn: Connection) -> None:
        """Open the round's transaction for its first session handler; the rest of the round joins
        it, and its outcome is recorded in it.

        A handler's session joins it with a savepoint; were none open, the session would begin
        and commit a transaction of its own, before the event's outcome. It is opened only now,
        not as the round starts: on SQLite it holds the database's one write lock (``BEGIN
        IMMEDIATE``: a deferred transaction fails at once when it upgrades after another
        connection wrote), which the intake and every other worker wait for, and the
        reconciliation fetch and the handlers before this one need no lock. On PostgreSQL a
        transaction left idle longer than a handler may run (a hung handler) is ended by the
        server (see :meth:`keep_open`).
        """
        if conn.dialect.name == "sqlite":
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            except Exception:  # the lock was not had: no transaction, for SQLAlchemy either
                conn.rollback()
                raise
            return
        conn.begin()
        if conn.dialect.name == "postgresql":
            self.keep_open(conn, force=True)

    def keep_open(self, conn: Connection, *, force: bool = False) -> None:
        """Let the server end the round's PostgreSQL transaction once it is left idle for longer
        than a handler may run (its time limit and the lease's grace), counted from the start of
        the current handler call: set once for the round, the limit would apply to the whole
        stretch between two statements, several handlers' worth. Set again only when a second
        has passed since it last was (a statement's round trip a call is a cost for quick
        handlers): a call then starts at most a second into its idle time, well within the grace.
        """
        now = time.monotonic()
        if not force and now - conn.info.get("idle_limit_set_at", -math.inf) < 1.0:
            return
        idle_ms = int(self.keeper.work_seconds * 1000)
        conn.exec_driver_sql(f"SET LOCAL idle_in_transaction_session_timeout = {idle_ms}")
        conn.info["idle_limit_set_at"] = now
