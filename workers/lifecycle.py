"""The store operations of processing one event, each fenced by the event's message token.

A worker may only move an event whose ``message_id`` still equals the token of the message it
is running. The recovery sweep gives a new token when it re-sends an event, so a worker that
was presumed dead (a GC pause, SIGSTOP, a partition) can never commit over the one that took
its place, and stale or duplicated broker messages claim nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Engine, and_, insert, select, update

from gateway.config import WorkerSettings
from gateway.models import FAILED, PROCESSED, PROCESSING, QUEUED, RECEIVED, events, handler_runs
from providers.base import Clock

#: ``last_error`` keeps at most this many characters.
MAX_ERROR = 4000


class EventLifecycle:
    """Claim, renew, record and finish events in the store."""

    def __init__(self, engine: Engine, settings: WorkerSettings, *, clock: Clock = time.time) -> None:
        self.engine = engine
        self.settings = settings
        self.clock = clock

    def _held(self, pk: int, token: str) -> Any:
        return and_(events.c.id == pk, events.c.message_id == token, events.c.status == PROCESSING)

    def claim(self, pk: int, token: str) -> Any | None:
        """Lease the event for this message; ``None`` if the message is stale or the event done."""
        now = self.clock()
        with self.engine.begin() as conn:
            claimed = conn.execute(
                update(events)
                .where(events.c.id == pk, events.c.message_id == token, events.c.status.in_((RECEIVED, QUEUED)))
                .values(
                    status=PROCESSING,
                    attempts=events.c.attempts + 1,
                    lease_expires_at=now + self.settings.lease_seconds,
                    updated_at=now,
                )
            ).rowcount
            if not claimed:
                return None
            return conn.execute(select(events).where(events.c.id == pk)).one()

    def renew(self, leases: Iterable[tuple[int, str]]) -> None:
        """Push back the lease of events this process is still running."""
        expires = self.clock() + self.settings.lease_seconds
        with self.engine.begin() as conn:
            for pk, token in leases:
                conn.execute(update(events).where(self._held(pk, token)).values(lease_expires_at=expires))

    def succeeded_handlers(self, pk: int) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.scalars(select(handler_runs.c.handler).where(handler_runs.c.event_pk == pk)))

    def record_handler(self, pk: int, token: str, handler: str) -> bool:
        """Record that ``handler`` succeeded; ``False`` if the lease was lost meanwhile."""
        now = self.clock()
        with self.engine.begin() as conn:
            held = conn.execute(
                update(events).where(self._held(pk, token)).values(lease_expires_at=now + self.settings.lease_seconds)
            ).rowcount
            if held:
                conn.execute(insert(handler_runs).values(event_pk=pk, handler=handler, finished_at=now))
            return bool(held)

    def finish(self, pk: int, token: str) -> bool:
        now = self.clock()
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    update(events)
                    .where(self._held(pk, token))
                    .values(
                        status=PROCESSED,
                        processed_at=now,
                        updated_at=now,
                        lease_expires_at=None,
                        sweep_after=None,
                        last_error=None,
                    )
                ).rowcount
            )

    def fail(self, pk: int, token: str, attempts: int, error: str) -> str | None:
        """Record a failed try: ``queued`` again after a backoff, or ``failed`` after the last try.

        The retry is not sent to the broker here: clearing ``message_id`` and setting
        ``sweep_after`` makes the recovery sweep send it when it is due, so a retry survives
        any broker loss. Returns the new status, or ``None`` if the lease was lost.
        """
        now = self.clock()
        final = attempts >= self.settings.max_attempts
        values: dict[str, Any] = {"last_error": error[:MAX_ERROR], "updated_at": now, "lease_expires_at": None}
        if final:
            values.update(status=FAILED, sweep_after=None)
        else:
            values.update(status=QUEUED, message_id=None, sweep_after=now + self.settings.backoff(attempts))
        with self.engine.begin() as conn:
            changed = conn.execute(update(events).where(self._held(pk, token)).values(**values)).rowcount
        if not changed:
            return None
        return FAILED if final else QUEUED
