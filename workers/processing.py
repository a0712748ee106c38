"""Running one event's handlers: claim, run what has not succeeded yet, finish or retry.

At-least-once delivery to handlers, at most one recorded success per (event, handler): a handler
that succeeded is skipped on every later try. A handler that raises does not stop the others;
the event is retried with backoff, then ``failed`` with every handler's error.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
from dramatiq.middleware.time_limit import TimeLimitExceeded

from gateway.config import WorkerSettings

from .event import Event
from .lifecycle import EventLifecycle
from .periodic import Periodic
from .registry import HandlerRegistry

log = logging.getLogger("hookgate.worker")


class LeaseKeeper(Periodic):
    """Renews the leases of the events this process is running, every third of a lease."""

    name = "hookgate-leases"

    def __init__(self, lifecycle: EventLifecycle, settings: WorkerSettings) -> None:
        super().__init__(settings.lease_seconds / 3)
        self.lifecycle = lifecycle
        self._held: dict[int, str] = {}
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, pk: int, token: str) -> Iterator[None]:
        with self._lock:
            self._held[pk] = token
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(pk, None)

    def tick(self) -> None:
        with self._lock:
            held = list(self._held.items())
        if held:
            self.lifecycle.renew(held)


def to_event(row: Any) -> Event:
    return Event(
        provider=row.provider,
        id=row.event_id,
        type=row.event_type,
        resource_id=row.resource_id,
        sequence=row.sequence,
        received_at=datetime.fromtimestamp(row.received_at, UTC),
        payload=orjson.loads(row.body),
        headers=orjson.loads(row.headers),
        attempt=row.attempts,
    )


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

    def __init__(self, lifecycle: EventLifecycle, registry: HandlerRegistry, leases: LeaseKeeper) -> None:
        self.lifecycle = lifecycle
        self.registry = registry
        self.leases = leases

    def process(self, pk: int, token: str) -> None:
        row = self.lifecycle.claim(pk, token)
        if row is None:
            log.debug("event %s: message %s is stale or the event is done; dropped", pk, token)
            return
        with self.leases.hold(pk, token):
            self._run_handlers(row, token)

    def _run_handlers(self, row: Any, token: str) -> None:
        pk = row.id
        event = to_event(row)
        done = self.lifecycle.succeeded_handlers(pk)
        failures: list[tuple[str, BaseException]] = []
        for handler in self.registry.for_event(event.provider, event.type):
            if handler.name in done:
                continue
            try:
                handler(event)
            except (Exception, TimeLimitExceeded) as exc:
                # A handler's failure is recorded, not raised. Dramatiq's time limit is a
                # BaseException: caught here too, so an overrunning handler fails like any other.
                failures.append((handler.name, exc))
                continue
            if not self.lifecycle.record_handler(pk, token, handler.name):
                log.warning("event %s/%s: lease lost while running handlers", event.provider, event.id)
                return
        if not failures:
            if self.lifecycle.finish(pk, token):
                log.info("processed provider=%s event=%s type=%s", event.provider, event.id, event.type)
            return
        status = self.lifecycle.fail(pk, token, row.attempts, describe_failures(failures))
        log.warning(
            "handlers failed provider=%s event=%s attempt=%d now=%s", event.provider, event.id, row.attempts, status
        )
