"""The recovery sweep: the store, not the broker, is the record of unfinished work.

Redis can lose messages (a restart without persistence, ``FLUSHALL``), and Dramatiq gives a dead
worker's messages back only after its heartbeat timeout, on a random maintenance pass. Each
worker process therefore runs this sweep every ``sweep_interval_seconds``. It (re)sends:

* held events that came due (``message_id`` cleared by a failed try for its retry, or by the
  intake for a fresh event of a resource, until its ordering window has passed);
* ``received``/``queued`` events older than ``requeue_after_seconds`` whose message is lost (see
  below); the others are looked at again ``requeue_after_seconds`` later;
* ``processing`` events whose lease expired, by the store's clock: their worker died or stalled.

A message is lost, with Redis, when Redis no longer holds it, or holds it only in the prefetch of
a consumer silent for longer than ``requeue_after_seconds`` (a killed worker's).

RabbitMQ cannot be asked whether it holds a message; what it does guarantee decides instead.
``queued`` means RabbitMQ confirmed the message: it is on disk in a durable queue and survives a
restart, and a killed worker's unacknowledged messages go back to the queue when its connection
closes. ``received`` means the hand-off was never confirmed (RabbitMQ was down, or the intake died
first), so such an event is sent again once due. A ``queued`` event still waiting after
``requeue_after_seconds`` is sent again only when the queue has no message ready for a consumer:
while a backlog waits there, its messages are where they should be and sending them again would
only lengthen it, every ``requeue_after_seconds``. Once the queue is empty, a waiting event's
message sits in a worker's prefetch (a stalled or busy worker's) or was removed (a purged or
deleted queue); its new message goes to a worker with room, and the old one claims nothing.

Events that are held (no message, ``sweep_after`` in the future) are sent when they come due;
the sweep wakes up for the earliest of them rather than at its next interval.

Every re-send first swaps the event's token in one compare-and-set UPDATE (leaving it
``received``), so when several sweeps race only one sends, and the old message, if it ever runs,
claims nothing; once the broker took the message, the event is ``queued``.

The log tells routine from recovery. Normal operation is DEBUG: held events coming due, and
events whose message a worker used up while the event waited behind an earlier, unfinished event
of its resource (a retry, a window): the pass that applies that one applies them too, and the
sweep only looks again. A lost message (with no earlier event to wait for, or behind one whose
message was lost too) and an expired lease are recoveries, each a WARNING that says which.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func, insert, select, update

from gateway.config import WorkerSettings
from gateway.eventlog import waiting_behind
from gateway.logs import event_context
from gateway.metrics import worker_metrics
from gateway.models import FAILED, PROCESSING, QUEUED, RECEIVED, SWEEP, attempts, events
from gateway.pausing import PausedProviders, park
from gateway.periodic import Periodic
from gateway.queue import EventQueue, new_token
from providers.base import Clock

from . import tries
from .leases import carrying_token, store_time
from .lifecycle import mark_queued

log = logging.getLogger("hookgate.recovery")

BATCH = 500
#: The failure group of an event given up after its worker stopped on every try of its round.
GIVEN_UP_GROUP = "worker:LeaseExpired"


@dataclass(slots=True)
class Pass:
    """What one pass sent, by why it sent it."""

    held: int = 0
    behind: int = 0
    lost: int = 0
    expired: int = 0


class RecoverySweep(Periodic):
    """Finds unfinished events the broker has lost and sends them again."""

    name = "hookgate-recovery"

    def __init__(
        self,
        engine: Engine,
        event_queue: EventQueue,
        settings: WorkerSettings,
        *,
        clock: Clock = time.time,
        paused: PausedProviders | None = None,
    ) -> None:
        super().__init__(settings.sweep_interval_seconds)
        self.engine = engine
        self.paused = paused or PausedProviders(engine)
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
                select(
                    events.c.id,
                    events.c.provider,
                    events.c.status,
                    events.c.message_id,
                    events.c.sweep_after,
                    waiting_behind().label("behind"),
                )
                .where(events.c.status.in_((RECEIVED, QUEUED)), events.c.sweep_after <= now)
                .order_by(events.c.sweep_after)
                .limit(BATCH)
            ).all()
            expired = conn.execute(
                select(
                    events.c.id,
                    events.c.provider,
                    events.c.event_id,
                    events.c.event_type,
                    events.c.attempts,
                    events.c.status,
                    events.c.message_id,
                    (events.c.attempts - events.c.attempts_before_round).label("tries"),
                    events.c.round,  # the rest for the attempt row of an event given up
                    events.c.next_trigger,
                    events.c.updated_at,
                )
                .where(events.c.status == PROCESSING, events.c.lease_expires_at <= store_time())
                .limit(BATCH)
            ).all()
        waiting = self.park_paused(waiting)
        lost = self.lost_messages(waiting)
        present = [row for row in waiting if row.message_id and row.message_id not in lost]
        resend = [row for row in waiting if row.message_id is None or row.message_id in lost]
        # An event whose message was used up while it waited behind an earlier event of its
        # resource is routine, unless that event's message was lost too (a flushed broker).
        lost_first = {row.id for row in resend if row.message_id is not None and row.behind is None}
        sent: list[tuple[int, str]] = []
        counts = Pass()
        given_up: list[tuple[Any, str]] = []
        later = now + self.settings.requeue_after_seconds
        with self.engine.begin() as conn:
            # One pass in primary key order, as the workers' statements lock rows: two transactions
            # that lock events in opposite orders deadlock on PostgreSQL, and one of them is undone.
            recheck = {row.id for row in present}
            for row in sorted([*present, *resend, *expired], key=lambda row: row.id):
                if row.id in recheck:
                    # Looked at again later. Fenced by the token read above: a worker's failed try
                    # may have set a retry time (and cleared the token) since, and it must stand.
                    conn.execute(
                        update(events).where(carrying_token(RECEIVED, QUEUED)).values(sweep_after=later),
                        {"pk": row.id, "token": row.message_id},
                    )
                    continue
                guard = [events.c.id == row.id, events.c.status == row.status]
                guard.append(
                    events.c.message_id.is_(None) if row.message_id is None else events.c.message_id == row.message_id
                )
                if row.message_id is None and row.status != PROCESSING:
                    # Still due as read: a resource's pass may have tried it and set a retry time since.
                    guard.append(events.c.sweep_after == row.sweep_after)
                values: dict[str, object] = {"lease_expires_at": None, "updated_at": now}
                token, why = None, self.why(row, lost_first)
                if row.status == PROCESSING:
                    guard.append(events.c.lease_expires_at <= store_time())
                if row.status == PROCESSING and row.tries >= self.settings.max_attempts:  # this replay's own tries
                    values.update(
                        status=FAILED,
                        sweep_after=None,
                        last_error=f"the worker stopped while processing it, {row.tries} times",
                        error_group=GIVEN_UP_GROUP,
                    )
                else:
                    token = new_token()
                    values.update(status=RECEIVED, message_id=token, sweep_after=later)
                    if why in ("lost", "expired"):  # a recovery: the next try is the sweep's
                        values.update(next_trigger=SWEEP)
                changed = conn.execute(update(events).where(*guard).values(**values)).rowcount
                if changed and token:
                    sent.append((row.id, token))
                    setattr(counts, why, getattr(counts, why) + 1)
                elif changed:
                    conn.execute(insert(attempts).values(**tries.given_up(row, str(values["last_error"]), now)))
                    given_up.append((row, str(values["last_error"])))
        for row, error in given_up:
            with event_context(row):
                log.error("event %s/%s failed: %s", row.provider, row.event_id, error)
            worker_metrics.failed_try(row.provider, final=True)
        if sent:
            self.event_queue.send(sent)
            mark_queued(self.engine, sent)
            self.report(counts)
        return len(sent)

    @staticmethod
    def why(row: Any, lost_first: set[int]) -> str:
        """Why an event is sent again, as :class:`Pass` counts it: its lease ``expired``, it was
        ``held`` until due (a retry, an ordering window: its trigger stands), it waited ``behind``
        an earlier event of its resource (routine), or its message was ``lost``."""
        if row.status == PROCESSING:
            return "expired"
        if row.message_id is None:
            return "held"
        if row.behind is not None and row.behind not in lost_first:
            return "behind"
        return "lost"

    def park_paused(self, waiting: Sequence[Any]) -> list[Any]:
        """Park the due events of paused providers (see :mod:`gateway.pausing`) instead of sending
        them; the rest. An event that could not be parked (its provider was resumed a moment
        ago) is left for the next pass, which sends it."""
        paused = self.paused.get()
        held: dict[str, list[tuple[int, str | None]]] = {}
        for row in waiting:
            if row.provider in paused:
                held.setdefault(row.provider, []).append((row.id, row.message_id))
        for provider, rows in held.items():
            parked = park(self.engine, provider, rows)
            log.debug("provider %s is paused: %d of its due events wait for its resume", provider, parked)
        return [row for row in waiting if row.provider not in paused]

    def lost_messages(self, waiting: Sequence[Any]) -> set[str]:
        """The tokens of these due events whose broker message is lost (see the module's docstring)."""
        tokens = [row.message_id for row in waiting if row.message_id]
        if not tokens:
            return set()
        if self.event_queue.tracks_messages:
            missing = self.event_queue.missing(tokens)
            held = [token for token in tokens if token not in missing]
            return missing | self.event_queue.orphaned(held, self.settings.requeue_after_seconds)
        unconfirmed = {row.message_id for row in waiting if row.message_id and row.status == RECEIVED}
        if len(unconfirmed) < len(tokens) and self.event_queue.backlog() == 0:
            return set(tokens)
        return unconfirmed

    def report(self, counts: Pass) -> None:
        """Log what a pass sent: events that were held or waiting behind another are routine
        (DEBUG); lost messages and expired leases are recoveries (WARNING)."""
        worker_metrics.swept(held=counts.held, behind=counts.behind, lost=counts.lost, expired=counts.expired)
        if counts.held:
            log.debug("%d held events came due", counts.held)
        if counts.behind:
            log.debug("%d events waiting behind an earlier event of their resource were sent again", counts.behind)
        if counts.lost:
            log.warning(
                "sent %d events again whose broker message was lost (gone from the broker, never "
                "confirmed by it, or prefetched by a worker that is silent or stalled for over %.1f s)",
                counts.lost,
                self.settings.requeue_after_seconds,
            )
        if counts.expired:
            log.warning("sent %d events again whose lease expired: their worker died or stalled", counts.expired)
