"""Processing events: claim, order, reconcile, run the handlers, and commit it all at once.

An event without a resource is claimed by its broker message and handled alone. An event of a
resource is handled by a *resource pass* (see :mod:`workers.ordering`): the worker that holds the
resource's lease applies its pending events in sequence order, with one reconciliation fetch
shared by the pass.

Each event's outcome commits in one transaction: the handlers' session writes, the record of
each handler that succeeded, the event's status and the resource store. At-least-once delivery
to handlers, at most one recorded success per (event, handler, round): a handler that succeeded
is skipped on every later try. A handler that raises does not stop the others; its session
writes are rolled back to a savepoint, and the event is retried with backoff, then ``failed``
with every handler's error. Nothing raised while preparing or recording an event escapes to
Dramatiq: it becomes the event's recorded failure (see :meth:`Processor.settle`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Engine

from gateway import tracing
from gateway.config import ProviderEntry, WorkerSettings
from gateway.logs import event_context
from gateway.metrics import worker_metrics
from gateway.models import FAILED, PROCESSED, PROCESSING, SUPERSEDED
from gateway.pausing import PausedProviders, park
from gateway.queue import new_token
from providers.base import Clock

from .calls import HandlerTimeout, TimeLimiter, WorkerStopping, call_handler, describe_failures
from .event import Event
from .leases import EventLeases, Lease, LeaseKeeper, ResourceKey, ResourceLeases
from .lifecycle import EventLifecycle, FailedTry
from .ordering import due_at, due_prefix, is_superseded
from .reconcile import Fetched, ReconcileError, Reconciler
from .registry import Handler, HandlerRegistry
from .resources import ResourceStore, StoredResource
from .tries import Try

log = logging.getLogger("hookgate.worker")

#: When another worker holds an event's resource, the sweep looks at the event again this much later.
BUSY_RETRY_SECONDS = 1.0


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
    ) -> None:
        self.engine = engine
        #: Providers whose events wait (see :mod:`gateway.pausing`), read at most once a second.
        self.paused = paused or PausedProviders(engine)
        self.lifecycle = EventLifecycle(engine, settings)
        self.event_leases = EventLeases(engine, settings)
        self.resource_leases = ResourceLeases(engine, settings)
        self.resources = ResourceStore(engine)
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

    def process(self, pk: int, token: str) -> None:
        """Run the event of a broker message, or the pass of its resource; never raises."""
        try:
            self._process(pk, token)
        except Exception:
            # The store or the broker failed under us: the lease lapses and the sweep re-sends.
            log.error("event %s: processing stopped; the recovery sweep will send it again", pk, exc_info=True)

    def _process(self, pk: int, token: str) -> None:
        row = self.lifecycle.current(pk, token)
        if row is None:
            log.debug("event %s: message %s is stale or the event is done; dropped", pk, token)
            return
        if row.provider in self.paused and park(self.engine, row.provider, [(pk, token)]):
            log.debug("event %s: provider %s is paused; the event waits for its resume", pk, row.provider)
            return
        if row.resource_id is None:
            claimed = self.event_leases.claim(pk, token, message=token)
            if claimed is not None:
                self.settle(claimed, token, None, SharedFetch(self.reconciler), StoredResource())
            else:  # paused since this worker read the paused set: parked (nothing, if not paused)
                park(self.engine, row.provider, [(pk, token)])
            return
        key = (row.provider, row.resource_id)
        holder = new_token()
        if not self.resource_leases.acquire(key, holder):
            self.lifecycle.defer(pk, token, BUSY_RETRY_SECONDS)
            return
        try:
            with self.keeper.holding_resource(key, holder) as lease:
                self.drain(key, holder, lease)
        finally:
            self.resource_leases.release(key, holder)

    def drain(self, key: ResourceKey, holder: str, resource_lease: Lease) -> None:
        """Settle the resource's due events in order until one is not due or does not settle."""
        entry = self.providers.get(key[0])
        window = entry.window_seconds if entry else 0.0
        deadline = self.clock() + self.pass_budget
        settled = 0
        while True:
            batch, blocker = due_prefix(self.resources.pending(key), self.clock(), window)
            if not batch:
                if blocker is not None and blocker.status != PROCESSING:
                    self.lifecycle.schedule(blocker.id, due_at(blocker, window))
                return
            fetch = SharedFetch(self.reconciler)
            stored: StoredResource | None = self.resources.stored(key)  # kept current while the lease is held
            for pending in batch:
                if stored is None:  # the one before must wait (a retry) or the lease was lost
                    return
                if key[0] in self.paused:  # paused meanwhile: the rest is parked when it comes up
                    return
                if settled and (self.clock() > deadline or self.stopping.is_set()):
                    self.lifecycle.schedule(pending.id, self.clock())  # the rest goes to a new message, now
                    return
                row = self.event_leases.claim(pending.id, holder)
                if row is None:  # changed under us (a replay, a sweep, a pause): keep the order, stop here
                    park(self.engine, key[0], [(pending.id, pending.message_id)])  # nothing unless paused
                    return
                resource_lease.extend(self.keeper.work_seconds)
                stored = self.settle(row, holder, key, fetch, stored, resource_lease)
                settled += 1
            if stored is None:
                return

    def settle(
        self,
        row: Any,
        token: str,
        key: ResourceKey | None,
        fetch: SharedFetch,
        stored: StoredResource,
        resource_lease: Lease | None = None,
    ) -> StoredResource | None:
        """What happens to one claimed event: prepare it, run its handlers, record the outcome.

        Returns the resource as stored afterwards if the event is settled (processed, superseded
        or failed for good), so that the events behind it may go on; ``None`` if they must wait.
        Every line logged meanwhile, the handlers' and the reconciliation's too, carries the
        event's provider, id, type and attempt in the JSON log format (see :mod:`gateway.logs`).
        """
        with (
            event_context(row),
            tracing.processing(row, message_id=token if key is None else None),
            self.keeper.holding_event(row.id, token) as event_lease,
        ):
            tried = Try.of(row)
            try:
                prepared = self.prepare(row, key, fetch, stored)
            except PreparationError as exc:
                exc.describe(tried)
                status = self.record_failure(row, token, str(exc), tried, exc)
                return stored if status == FAILED else None
            leases = [lease for lease in (event_lease, resource_lease) if lease is not None]
            return self.run_and_commit(prepared, row, token, key, stored, leases, tried)

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

    def record_failure(
        self, row: Any, token: str, error: str, tried: Try, preparation: PreparationError | None = None
    ) -> str | None:
        """Record a failed try in a transaction of its own (a failed ``preparation`` says whether
        and when to retry); the new status, or ``None``."""
        retry_after, permanent = (preparation.retry_after, preparation.permanent) if preparation else (None, False)
        with self.engine.begin() as conn:
            outcome = self.lifecycle.fail(
                conn, row, token, error, tried=tried, retry_after=retry_after, permanent=permanent
            )
        if outcome is None:
            log.warning(
                "event %s/%s: lease lost before its failure was recorded: %s", row.provider, row.event_id, error
            )
            return None
        log_failed_try(row, outcome, error, self.clock())
        worker_metrics.failed_try(row.provider, final=outcome.status == FAILED)
        return outcome.status

    def run_and_commit(
        self,
        prepared: Prepared,
        row: Any,
        token: str,
        key: ResourceKey | None,
        stored: StoredResource,
        leases: list[Lease],
        tried: Try,
    ) -> StoredResource | None:
        """Run the handlers that have not succeeded yet and commit the outcome with their writes."""
        tried.reconcile_status = prepared.fetched.status
        done = self.lifecycle.succeeded_handlers(row)
        todo = [h for h in prepared.handlers if h.name not in done]
        unrecorded: Exception | None = None
        with self.engine.connect() as conn:
            self.begin(conn, sessions=any(h.takes_session for h in todo))
            succeeded, failures = self.run_handlers(todo, prepared.event, conn, leases, row)
            tried.failed(failures)
            try:
                status, after, failed = self.record_outcome(
                    conn, prepared, row, token, key, stored, succeeded, failures, tried
                )
            except Exception as exc:
                conn.rollback()
                unrecorded = exc
        if unrecorded is not None:  # recorded as a failure on a connection of its own, this one given back
            log.error("event %s/%s: recording the outcome failed", row.provider, row.event_id, exc_info=unrecorded)
            error = f"recording the outcome failed: {type(unrecorded).__name__}: {unrecorded}"
            tried.failed([("commit", unrecorded)])
            return stored if self.record_failure(row, token, error, tried) == FAILED else None
        if status is None:
            log.warning("event %s/%s: lease lost while running handlers", row.provider, row.event_id)
            return None
        if failed is not None:
            log_failed_try(row, failed, describe_failures(failures), self.clock())
            worker_metrics.failed_try(row.provider, final=failed.status == FAILED)
            return after
        worker_metrics.settled(row.provider, status, self.clock() - row.received_at)
        tracing.settled(status)
        log.info(
            "%s provider=%s event=%s type=%s attempt=%d",
            status,
            row.provider,
            row.event_id,
            row.event_type,
            row.attempts,
        )
        return after

    def run_handlers(
        self, todo: list[Handler], event: Event, conn: Connection, leases: list[Lease], event_row: Any
    ) -> tuple[list[str], list[tuple[str, BaseException]]]:
        """Call each handler under the time limit; the names that succeeded and the failures."""
        succeeded: list[str] = []
        failures: list[tuple[str, BaseException]] = []
        for handler in todo:
            for lease in leases:  # renewed for as long as this call may legitimately take
                lease.extend(self.keeper.work_seconds)
            started = time.perf_counter()
            try:
                with tracing.handler_call(handler.name), self.limiter.limit():
                    call_handler(handler, event, conn)
            except (Exception, HandlerTimeout) as exc:
                worker_metrics.handler_called(handler.name, time.perf_counter() - started, ok=False)
                log_handler_error(event_row, handler.name, exc)
                failures.append((handler.name, exc))
            else:
                worker_metrics.handler_called(handler.name, time.perf_counter() - started, ok=True)
                succeeded.append(handler.name)
        return succeeded, failures

    def begin(self, conn: Connection, *, sessions: bool) -> None:
        """Open the event's transaction before any handler runs, on every backend.

        A handler's session joins it with a savepoint; were none open, the session would begin
        and commit a transaction of its own, before the event's outcome. On SQLite a transaction
        with sessions starts as the writer (``BEGIN IMMEDIATE``): a deferred one fails at once
        when it upgrades after another connection wrote. On PostgreSQL a transaction left idle
        longer than a handler may run (a hung handler) is ended by the server.
        """
        if conn.dialect.name == "sqlite" and sessions:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            return
        conn.begin()
        if conn.dialect.name == "postgresql" and sessions:
            idle_ms = int(self.keeper.work_seconds * 1000)
            conn.exec_driver_sql(f"SET LOCAL idle_in_transaction_session_timeout = {idle_ms}")

    def record_outcome(
        self,
        conn: Connection,
        prepared: Prepared,
        row: Any,
        token: str,
        key: ResourceKey | None,
        stored: StoredResource,
        succeeded: list[str],
        failures: list[tuple[str, BaseException]],
        tried: Try,
    ) -> tuple[str | None, StoredResource | None, FailedTry | None]:
        """Write the status, the resource, the handler runs and the attempt, fenced by the token; commit.

        Returns the new status (``None`` if the lease was lost and nothing was written), the
        resource as stored afterwards if the event settled (``None`` if the ones behind must wait)
        and, if handlers failed, what the failed try left (for the log).
        """
        failed: FailedTry | None = None
        if failures:
            failed = self.lifecycle.fail(conn, row, token, describe_failures(failures), tried=tried)
            status = failed.status if failed else None
            after = stored if status == FAILED else None
        else:
            status = SUPERSEDED if prepared.event.superseded else PROCESSED
            if not self.lifecycle.finish(conn, row.id, token, status):
                status = None
            after = stored
            if status is not None and key is not None and not prepared.event.superseded:
                after = self.resources.write_state(conn, key, token, row, stored, prepared.fetched)
                status = status if after is not None else None
        if status is None:
            conn.rollback()
            return None, None, None
        self.lifecycle.record_handlers(conn, row, succeeded)  # only once the fence has held
        if failed is None:  # a failed try's attempt is written by lifecycle.fail, behind its fence
            self.lifecycle.record_attempt(conn, tried, status)
        conn.commit()
        return status, after, failed
