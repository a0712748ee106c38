"""The recovery sweep: the store, not the broker, is the record of unfinished work.

Redis can lose messages (a restart without persistence, ``FLUSHALL``), and Dramatiq gives a dead
worker's messages back only after its heartbeat timeout, on a random maintenance pass. Each
worker process therefore runs this sweep every ``sweep_interval_seconds``. It (re)sends:

* events whose retry is due (``message_id`` cleared by a failed try);
* ``received``/``queued`` events older than ``requeue_after_seconds`` whose message the broker
  no longer holds, or holds only in the prefetch of a consumer silent for longer than that (a
  killed worker's); those it still holds otherwise are looked at again later;
* ``processing`` events whose lease expired, by the store's clock: their worker died or stalled.

Events that are held (no message, ``sweep_after`` in the future: a retry's backoff, or a fresh
event of a resource waiting out its ordering window) are sent when they come due; the sweep
wakes up for the earliest of them rather than at its next interval.

Every re-send first swaps the event's token in one compare-and-set UPDATE, so when several
sweeps race only one sends, and the old message, if it ever runs, claims nothing.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import Engine, bindparam, func, or_, select, update

from gateway.config import WorkerSettings
from gateway.models import FAILED, PROCESSING, QUEUED, RECEIVED, events
from gateway.queue import EventQueue, new_token
from providers.base import Clock

from .leases import store_time
from .periodic import Periodic

log = logging.getLogger("hookgate.recovery")

BATCH = 500


class RecoverySweep(Periodic):
    """Finds unfinished events the broker has lost and sends them again."""

    name = "hookgate-recovery"

    def __init__(
        self, engine: Engine, event_queue: EventQueue, settings: WorkerSettings, *, clock: Clock = time.time
    ) -> None:
        super().__init__(settings.sweep_interval_seconds)
        self.engine = engine
        self.event_queue = event_queue
        self.settings = settings
        self.clock = clock
        self._next_due: float | None = None

    def tick(self) -> None:
        self._next_due = None  # a failing pass waits a whole interval
        self.run_once()
        with self.engine.connect() as conn:
            self._next_due = conn.execute(
                select(func.min(events.c.sweep_after)).where(
                    events.c.status.in_((RECEIVED, QUEUED)), events.c.message_id.is_(None)
                )
            ).scalar_one_or_none()

    def next_wait(self) -> float:
        if self._next_due is None:
            return self.interval
        return min(self.interval, max(0.005, self._next_due - self.clock()))

    def run_once(self) -> int:
        """One pass; returns how many events were sent again."""
        now = self.clock()
        with self.engine.connect() as conn:
            waiting = conn.execute(
                select(events.c.id, events.c.status, events.c.message_id)
                .where(events.c.status.in_((RECEIVED, QUEUED)), events.c.sweep_after <= now)
                .order_by(events.c.sweep_after)
                .limit(BATCH)
            ).all()
            expired = conn.execute(
                select(
                    events.c.id,
                    events.c.status,
                    events.c.message_id,
                    (events.c.attempts - events.c.attempts_before_round).label("tries"),
                )
                .where(events.c.status == PROCESSING, events.c.lease_expires_at <= store_time())
                .limit(BATCH)
            ).all()
        missing = self.event_queue.missing([row.message_id for row in waiting if row.message_id])
        held = [row.message_id for row in waiting if row.message_id and row.message_id not in missing]
        lost = missing | self.event_queue.orphaned(held, self.settings.requeue_after_seconds)
        present = [row for row in waiting if row.message_id and row.message_id not in lost]
        resend = [row for row in waiting if row.message_id is None or row.message_id in lost]
        sent: list[tuple[int, str]] = []
        later = now + self.settings.requeue_after_seconds
        with self.engine.begin() as conn:
            if present:
                # Fenced by the token read above: a worker's failed try may have set a retry time
                # (and cleared the token) since, and that schedule must stand.
                conn.execute(
                    update(events)
                    .where(
                        events.c.id == bindparam("pk"),
                        events.c.message_id == bindparam("token"),
                        # Not IN (…): an expanding parameter cannot be used in an executemany.
                        or_(events.c.status == RECEIVED, events.c.status == QUEUED),
                    )
                    .values(sweep_after=later),
                    [{"pk": row.id, "token": row.message_id} for row in present],
                )
            for row in [*resend, *expired]:
                guard = [events.c.id == row.id, events.c.status == row.status]
                guard.append(
                    events.c.message_id.is_(None) if row.message_id is None else events.c.message_id == row.message_id
                )
                values: dict[str, object] = {"lease_expires_at": None, "updated_at": now}
                token = None
                if row.status == PROCESSING:
                    guard.append(events.c.lease_expires_at <= store_time())
                if row.status == PROCESSING and row.tries >= self.settings.max_attempts:  # this replay's own tries
                    values.update(
                        status=FAILED,
                        sweep_after=None,
                        last_error=f"the worker stopped while processing it, {row.tries} times",
                    )
                else:
                    token = new_token()
                    values.update(status=QUEUED, message_id=token, sweep_after=later)
                changed = conn.execute(update(events).where(*guard).values(**values)).rowcount
                if changed and token:
                    sent.append((row.id, token))
        if sent:
            self.event_queue.send(sent)
            log.info("recovery sweep sent %d events again", len(sent))
        return len(sent)
