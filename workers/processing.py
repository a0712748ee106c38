"""Processing events: claim, order, reconcile, run the handlers, and commit it all at once.

An event without a resource is claimed by its broker message and handled alone. An event of a
resource is handled by a *resource pass* (see :mod:`workers.ordering`): the worker that holds the
resource's lease applies its pending events in sequence order, with one reconciliation fetch
shared by the pass.

Each event's outcome commits in one transaction: the handlers' session writes, the record of
each handler that succeeded, the event's status and the resource store. At-least-once delivery
to handlers, at most one recorded success per (event, handler): a handler that succeeded is
skipped on every later try. A handler that raises does not stop the others; its session writes
are rolled back to a savepoint, and the event is retried with backoff, then ``failed`` with
every handler's error.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from dramatiq.middleware.time_limit import TimeLimitExceeded
from sqlalchemy import Connection, Engine
from sqlmodel import Session

from gateway.config import ProviderEntry
from gateway.models import FAILED, PROCESSED, PROCESSING, SUPERSEDED
from gateway.queue import new_token
from providers.base import Clock

from .event import Event
from .leases import LeaseKeeper
from .lifecycle import EventLifecycle
from .ordering import ResourceKey, ResourceStore, StoredResource, due_at, due_prefix, is_superseded
from .reconcile import Fetched, ReconcileError, Reconciler
from .registry import Handler, HandlerRegistry

log = logging.getLogger("hookgate.worker")

#: When another worker holds an event's resource, the sweep looks at the event again this much later.
BUSY_RETRY_SECONDS = 1.0


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


def describe_failures(failures: list[tuple[str, BaseException]]) -> str:
    parts = []
    for name, exc in failures:
        last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        where = f" at {last[0].filename}:{last[0].lineno}" if last else ""
        if isinstance(exc, TimeLimitExceeded):
            parts.append(f"{name} exceeded the handler time limit{where}")
            continue
        parts.append(f"{name} raised {type(exc).__name__}: {exc}{where}")
    return "\n".join(parts)


class Processor:
    """The body of the ``hookgate.process_event`` actor."""

    def __init__(
        self,
        lifecycle: EventLifecycle,
        store: ResourceStore,
        registry: HandlerRegistry,
        leases: LeaseKeeper,
        reconciler: Reconciler,
        providers: Mapping[str, ProviderEntry],
        *,
        pass_budget: float = 300.0,
        clock: Clock = time.time,
    ) -> None:
        self.lifecycle = lifecycle
        self.engine: Engine = lifecycle.engine
        self.store = store
        self.registry = registry
        self.leases = leases
        self.reconciler = reconciler
        self.providers = providers
        #: A pass hands the rest of a resource's backlog to a new message after this long, so
        #: that it stays well inside Dramatiq's time limit for one message.
        self.pass_budget = pass_budget
        self.clock = clock

    def process(self, pk: int, token: str) -> None:
        row = self.lifecycle.current(pk, token)
        if row is None:
            log.debug("event %s: message %s is stale or the event is done; dropped", pk, token)
            return
        if row.resource_id is None:
            claimed = self.lifecycle.claim(pk, token, message=token)
            if claimed is not None:
                with self.leases.events.hold(pk, token):
                    self.apply(claimed, token, None, SharedFetch(self.reconciler), StoredResource())
            return
        key = (row.provider, row.resource_id)
        holder = new_token()
        if not self.store.acquire(key, holder):
            self.lifecycle.defer(pk, token, BUSY_RETRY_SECONDS)
            return
        try:
            with self.leases.resources.hold(key, holder):
                self.drain(key, holder)
        finally:
            self.store.release(key, holder)

    def drain(self, key: ResourceKey, holder: str) -> None:
        """Apply the resource's due events in order until one is not due or does not settle."""
        entry = self.providers.get(key[0])
        window = entry.window_seconds if entry else 0.0
        deadline = self.clock() + self.pass_budget
        applied = 0
        while True:
            batch, blocker = due_prefix(self.store.pending(key), self.clock(), window)
            if not batch:
                if blocker is not None and blocker.status != PROCESSING:
                    self.lifecycle.hold(blocker.id, due_at(blocker, window))
                return
            fetch = SharedFetch(self.reconciler)
            stored: StoredResource | None = self.store.stored(key)  # kept current while the lease is held
            for pending in batch:
                if stored is None:  # the one before must wait (a retry) or the lease was lost
                    return
                if applied and self.clock() > deadline:  # hand the rest to a new message, sent now
                    self.lifecycle.hold(pending.id, self.clock())
                    return
                row = self.lifecycle.claim(pending.id, holder)
                if row is None:  # changed under us (a replay, a sweep): keep the order, stop here
                    return
                with self.leases.events.hold(row.id, holder):
                    stored = self.apply(row, holder, key, fetch, stored)
                applied += 1
            if stored is None:
                return

    def apply(
        self, row: Any, token: str, key: ResourceKey | None, fetch: SharedFetch, stored: StoredResource
    ) -> StoredResource | None:
        """Reconcile and run the handlers of one claimed event, given the resource as stored.

        Returns the resource as stored afterwards if the event is settled (processed, superseded
        or failed for good), so that the events behind it may go on; ``None`` if they must wait.
        """
        superseded = key is not None and is_superseded(row, stored)
        headers = orjson.loads(row.headers)
        payload = self.decode(row, headers)
        fetched = Fetched(None)
        if key is not None and not superseded:
            try:
                fetched = fetch.get(row, payload)
            except ReconcileError as exc:
                with self.engine.begin() as conn:
                    status = self.lifecycle.fail(
                        conn,
                        row.id,
                        token,
                        row.attempts,
                        f"reconciliation: {exc}",
                        retry_after=exc.retry_after,
                        permanent=exc.permanent,
                    )
                log.warning(
                    "reconciliation failed provider=%s event=%s attempt=%d now=%s: %s",
                    row.provider,
                    row.event_id,
                    row.attempts,
                    status,
                    exc,
                )
                return stored if status == FAILED else None
        event = to_event(row, payload, headers, stored, fetched, superseded)
        handlers = [
            h for h in self.registry.for_event(row.provider, row.event_type) if h.include_superseded or not superseded
        ]
        return self._commit(event, row, token, key, handlers, stored, fetched)

    def decode(self, row: Any, headers: dict[str, str]) -> Any:
        """The stored body as its provider's handlers expect it (JSON, or a form for some)."""
        entry = self.providers.get(row.provider)
        if entry is None:  # a provider removed from providers.yaml since the event arrived
            return orjson.loads(row.body)
        return entry.provider.decode(row.body, headers)

    def _commit(
        self,
        event: Event,
        row: Any,
        token: str,
        key: ResourceKey | None,
        handlers: list[Handler],
        stored: StoredResource,
        fetched: Fetched,
    ) -> StoredResource | None:
        done = self.lifecycle.succeeded_handlers(row)
        todo = [h for h in handlers if h.name not in done]
        failures: list[tuple[str, BaseException]] = []
        succeeded: list[str] = []
        with self.engine.connect() as conn:
            if conn.dialect.name == "sqlite" and any(h.takes_session for h in todo):
                # A session's reads and writes must not run in a deferred SQLite transaction,
                # whose upgrade to a writer fails at once if another connection wrote meanwhile.
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            for handler in todo:
                try:
                    _call(handler, event, conn)
                except (Exception, TimeLimitExceeded) as exc:
                    # Recorded, not raised. Dramatiq's time limit is a BaseException: caught here
                    # too, so an overrunning handler fails like any other.
                    failures.append((handler.name, exc))
                else:
                    succeeded.append(handler.name)
            self.lifecycle.record_handlers(conn, row.id, succeeded)
            if failures:
                status = self.lifecycle.fail(conn, row.id, token, row.attempts, describe_failures(failures))
                held, settled = status is not None, status == FAILED
            else:
                status = SUPERSEDED if event.superseded else PROCESSED
                held = self.lifecycle.finish(conn, row.id, token, status)
                if held and key is not None and not event.superseded:
                    after = self.store.apply(conn, key, token, row, stored, fetched)
                    held = after is not None
                    stored = after or stored
                settled = held
            if not held:
                conn.rollback()
                log.warning("event %s/%s: lease lost while running handlers", event.provider, event.id)
                return None
            conn.commit()
        log_outcome = log.warning if failures else log.info
        log_outcome(
            "%s provider=%s event=%s type=%s attempt=%d", status, event.provider, event.id, event.type, row.attempts
        )
        return stored if settled else None


def _call(handler: Handler, event: Event, conn: Connection) -> None:
    """Run one handler; a handler with a ``session`` writes inside a savepoint of ``conn``."""
    if not handler.takes_session:
        handler(event)
        return
    with Session(bind=conn, join_transaction_mode="create_savepoint") as session:
        try:
            handler(event, session)
            session.commit()  # releases the savepoint: the writes commit with the event
        except BaseException:
            session.rollback()
            raise
