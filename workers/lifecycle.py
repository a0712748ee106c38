"""The store operations of processing one event, each fenced by the event's message token.

A worker may only move an event whose ``message_id`` still equals the token of the message it
is running (or, for an event of a resource, the token of the resource pass that claimed it).
The recovery sweep gives a new token when it re-sends an event, so a worker that
was presumed dead (a GC pause, SIGSTOP, a partition) can never commit over the one that took
its place, and stale or duplicated broker messages claim nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, Engine, and_, insert, select, update

from gateway.config import WorkerSettings
from gateway.models import FAILED, PROCESSING, QUEUED, RECEIVED, events, handler_runs
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

    def current(self, pk: int, token: str) -> Any | None:
        """The event if ``token`` is still its message and it is waiting; else ``None``."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(events.c.id, events.c.provider, events.c.resource_id).where(
                    events.c.id == pk, events.c.message_id == token, events.c.status.in_((RECEIVED, QUEUED))
                )
            ).one_or_none()

    def claim(self, pk: int, token: str, *, message: str | None = None) -> Any | None:
        """Lease the waiting event, fenced by ``token`` from now on; ``None`` if it is not waiting.

        ``message`` is the token the event must still carry (a broker message's); a resource
        pass that holds the resource's lease passes ``None`` and takes any waiting event of it.
        """
        now = self.clock()
        waiting = [events.c.id == pk, events.c.status.in_((RECEIVED, QUEUED))]
        if message is not None:
            waiting.append(events.c.message_id == message)
        with self.engine.begin() as conn:
            return conn.execute(
                update(events)
                .where(*waiting)
                .values(
                    status=PROCESSING,
                    message_id=token,
                    attempts=events.c.attempts + 1,
                    lease_expires_at=now + self.settings.lease_seconds,
                    updated_at=now,
                )
                .returning(*events.c)
            ).one_or_none()

    def defer(self, pk: int, token: str, delay: float) -> None:
        """Have the recovery sweep look at this event again in ``delay`` seconds.

        Used when another worker holds the event's resource: that worker usually applies it;
        if it does not, the sweep finds the message gone and sends a new one.
        """
        with self.engine.begin() as conn:
            conn.execute(
                update(events)
                .where(events.c.id == pk, events.c.message_id == token, events.c.status.in_((RECEIVED, QUEUED)))
                .values(sweep_after=self.clock() + delay)
            )

    def hold(self, pk: int, until: float) -> None:
        """Send this waiting event only at ``until`` (no message until then)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(events)
                .where(events.c.id == pk, events.c.status.in_((RECEIVED, QUEUED)))
                .values(message_id=None, sweep_after=until)
            )

    def renew(self, leases: Iterable[tuple[int, str]]) -> None:
        """Push back the lease of events this process is still running."""
        expires = self.clock() + self.settings.lease_seconds
        with self.engine.begin() as conn:
            for pk, token in leases:
                conn.execute(update(events).where(self._held(pk, token)).values(lease_expires_at=expires))

    def succeeded_handlers(self, row: Any) -> set[str]:
        """Handlers already recorded as done for this claimed event.

        Records are written only in the transaction that settles a try, so on the first try
        there are none to read.
        """
        pk = row.id
        if row.attempts <= 1:
            return set()
        with self.engine.connect() as conn:
            return set(conn.scalars(select(handler_runs.c.handler).where(handler_runs.c.event_pk == pk)))

    def record_handlers(self, conn: Connection, pk: int, names: Iterable[str]) -> None:
        now = self.clock()
        rows = [{"event_pk": pk, "handler": name, "finished_at": now} for name in names]
        if rows:
            conn.execute(insert(handler_runs), rows)

    def finish(self, conn: Connection, pk: int, token: str, status: str) -> bool:
        """Mark the event ``processed`` or ``superseded``; ``False`` if the lease was lost."""
        now = self.clock()
        return bool(
            conn.execute(
                update(events)
                .where(self._held(pk, token))
                .values(
                    status=status,
                    processed_at=now,
                    updated_at=now,
                    lease_expires_at=None,
                    sweep_after=None,
                    last_error=None,
                )
            ).rowcount
        )

    def fail(
        self,
        conn: Connection,
        pk: int,
        token: str,
        attempts: int,
        error: str,
        *,
        retry_after: float | None = None,
        permanent: bool = False,
    ) -> str | None:
        """Record a failed try: ``queued`` again after a backoff, or ``failed`` after the last try.

        The backoff is at least ``retry_after`` (an API's ``Retry-After``). The retry is not sent
        to the broker here: clearing ``message_id`` and setting ``sweep_after`` makes the recovery
        sweep send it when it is due, so a retry survives any broker loss. A ``permanent``
        failure is ``failed`` at once. Returns the new status, or ``None`` if the lease was lost.
        """
        now = self.clock()
        final = permanent or attempts >= self.settings.max_attempts
        values: dict[str, Any] = {"last_error": error[:MAX_ERROR], "updated_at": now, "lease_expires_at": None}
        if final:
            values.update(status=FAILED, sweep_after=None)
        else:
            delay = max(self.settings.backoff(attempts), retry_after or 0.0)
            values.update(status=QUEUED, message_id=None, sweep_after=now + delay)
        changed = conn.execute(update(events).where(self._held(pk, token)).values(**values)).rowcount
        if not changed:
            return None
        return FAILED if final else QUEUED
