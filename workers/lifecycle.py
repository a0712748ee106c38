"""An event's status in the store as a worker moves it: waiting, scheduled, settled.

Every change of a claimed event (see :mod:`workers.leases`) is fenced by its token.

A worker may only move an event whose ``message_id`` still equals the token of the message it
is running (or, for an event of a resource, the token of the resource pass that claimed it).
The recovery sweep gives a new token when it re-sends an event, so a worker that
was presumed dead (a GC pause, SIGSTOP, a partition) can never commit over the one that took
its place, and stale or duplicated broker messages claim nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, insert, or_, select, update

from gateway.config import WorkerSettings
from gateway.models import FAILED, PROCESSING, QUEUED, RECEIVED, RETRY, events, handler_runs
from gateway.models import attempts as attempt_rows  # ``attempts`` is a count in fail()
from gateway.prepared import Prepared
from gateway.queue import new_token
from providers.base import Clock

from .leases import carrying_token, holds_event
from .tries import ATTEMPT_COLUMNS, Try

#: ``last_error`` keeps at most this many characters.
MAX_ERROR = 4000


# The statements run for every broker message and every round, built once: building a statement
# and its cache key each time was a tenth of a worker's CPU (py-spy --gil).
_OF_MESSAGE = and_(
    events.c.id.in_(bindparam("pks", expanding=True)),
    events.c.message_id == bindparam("token"),
    events.c.status.in_((RECEIVED, QUEUED)),
)
CURRENT = Prepared(select(events.c.id, events.c.provider, events.c.resource_id).where(_OF_MESSAGE))
#: ``received`` until the new message is sent (see :func:`mark_queued`): unconfirmed, for the sweep.
RETOKEN = update(events).where(_OF_MESSAGE).values(message_id=bindparam("fresh"), status=RECEIVED)
HAND_OVER = update(events).where(_OF_MESSAGE).values(message_id=None, sweep_after=bindparam("now"))
FINISH = Prepared(
    update(events)
    .where(
        events.c.id.in_(bindparam("pks", expanding=True)),
        events.c.message_id == bindparam("holder"),
        events.c.status == PROCESSING,
    )
    .values(
        status=bindparam("settled"),
        processed_at=bindparam("now"),
        updated_at=bindparam("now"),
        lease_expires_at=None,
        sweep_after=None,
        last_error=None,
        error_group=None,
    )
)

RECORD_HANDLER = Prepared(insert(handler_runs), column_keys=("event_pk", "handler", "round", "finished_at"))
RECORD_ATTEMPT = Prepared(insert(attempt_rows), column_keys=ATTEMPT_COLUMNS)


@dataclass(frozen=True, slots=True)
class FailedTry:
    """What a failed try left: ``queued`` with the time of the next try, or ``failed`` for good."""

    status: str
    retry_at: float | None = None


def mark_queued(engine: Engine, sent: list[tuple[int, str]]) -> None:
    """Record that the broker took the messages of these ``(pk, token)`` items: ``queued``, unless
    a worker moved the event meanwhile. With RabbitMQ the recovery sweep takes ``queued`` to mean
    that the message is in a queue, and ``received`` that it was never confirmed."""
    with engine.begin() as conn:
        conn.execute(
            update(events).where(carrying_token(RECEIVED)).values(status=QUEUED),
            [{"pk": pk, "token": token} for pk, token in sent],
        )


class EventLifecycle:
    """Defer, schedule, record and settle events in the store."""

    def __init__(self, engine: Engine, settings: WorkerSettings, *, clock: Clock = time.time) -> None:
        self.engine = engine
        self.settings = settings
        self.clock = clock

    def current(self, pks: list[int], token: str) -> list[Any]:
        """The events of a message whose token is still ``token`` and that are waiting, in order."""
        with self.engine.connect() as conn:
            found = {row.id: row for row in CURRENT.rows(conn, {"pks": pks, "token": token})}
        return [found[pk] for pk in pks if pk in found]

    def retoken(self, groups: list[list[int]], token: str) -> list[tuple[int, str]]:
        """Give each group of the message ``token``'s waiting events a token of its own, for a
        message of its own, ``received`` until it is sent; the ``(pk, token)`` items to send."""
        moved: list[tuple[int, str]] = []
        with self.engine.begin() as conn:
            # Lock them all first, in key order (see workers.recovery); a no-op on SQLite.
            everyone = sorted(pk for pks in groups for pk in pks)
            conn.execute(select(events.c.id).where(events.c.id.in_(everyone)).order_by(events.c.id).with_for_update())
            for pks in groups:
                fresh = new_token()
                if conn.execute(RETOKEN, {"pks": pks, "token": token, "fresh": fresh}).rowcount:
                    moved.extend((pk, fresh) for pk in pks)
        return moved

    def hand_over(self, pks: list[int], token: str) -> None:
        """Leave these events of the message ``token`` to the recovery sweep, which sends them now."""
        with self.engine.begin() as conn:
            conn.execute(HAND_OVER, {"pks": pks, "token": token, "now": self.clock()})

    def defer(self, conn: Connection, pks: list[int], token: str, delay: float) -> None:
        """Have the recovery sweep look at this event again in ``delay`` seconds.

        Used when another worker holds the event's resource: that worker usually applies it;
        if it does not, the sweep finds the message gone and sends a new one.
        """
        conn.execute(
            update(events)
            .where(events.c.id.in_(pks), events.c.message_id == token, events.c.status.in_((RECEIVED, QUEUED)))
            .values(sweep_after=self.clock() + delay)
        )

    def schedule(self, conn: Connection, pk: int, at: float) -> None:
        """Send this waiting event only at ``at`` (no message until then): the sweep sends it."""
        conn.execute(
            update(events)
            .where(events.c.id == pk, events.c.status.in_((RECEIVED, QUEUED)))
            .values(message_id=None, sweep_after=at)
        )

    def succeeded_handlers(self, rows: list[Any]) -> dict[int, set[str]]:
        """Handlers already recorded as done for these claimed events in their current round, by
        event; in one query.

        Records are written only in the transaction that settles a try, so on an event's very
        first try there are none to read.
        """
        done: dict[int, set[str]] = {row.id: set() for row in rows}
        again = [row for row in rows if row.attempts > 1]
        if not again:
            return done
        current = or_(*(and_(handler_runs.c.event_pk == row.id, handler_runs.c.round == row.round) for row in again))
        with self.engine.connect() as conn:
            for pk, name in conn.execute(select(handler_runs.c.event_pk, handler_runs.c.handler).where(current)):
                done[pk].add(name)
        return done

    def record_handlers(self, conn: Connection, succeeded: Iterable[tuple[Any, list[str]]]) -> None:
        """Record the handlers that succeeded, for each event row; call only once the fence has
        held (see :meth:`finish`)."""
        now = self.clock()
        rows = [
            {"event_pk": row.id, "handler": name, "round": row.round, "finished_at": now}
            for row, names in succeeded
            for name in names
        ]
        RECORD_HANDLER.run_many(conn, rows)

    def record_attempts(self, conn: Connection, tries: Iterable[tuple[Try, str]]) -> None:
        """Write each try's attempt row (with the status it left), in the transaction of its
        outcome; call only once the fence has held (see :meth:`finish`)."""
        now = self.clock()
        rows = [tried.row(status, now) for tried, status in tries]
        RECORD_ATTEMPT.run_many(conn, rows)

    def finish(self, conn: Connection, pks: list[int], token: str, status: str) -> bool:
        """Mark the events ``processed`` or ``superseded``; ``False`` if the lease of any was
        lost (the caller then rolls back)."""
        if not pks:
            return True
        values = {"pks": pks, "holder": token, "settled": status, "now": self.clock()}
        return FINISH.rowcount(conn, values) == len(pks)

    def fail(
        self,
        conn: Connection,
        row: Any,
        token: str,
        error: str,
        *,
        tried: Try,
        retry_after: float | None = None,
        permanent: bool = False,
    ) -> FailedTry | None:
        """Record a failed try: ``queued`` again after a backoff, or ``failed`` after the last try.

        The backoff is at least ``retry_after`` (an API's ``Retry-After``). The retry is not sent
        to the broker here: clearing ``message_id`` and setting ``sweep_after`` makes the recovery
        sweep send it when it is due, so a retry survives any broker loss. A ``permanent``
        failure is ``failed`` at once. Each round (see :mod:`gateway.eventlog`'s replay) has
        ``max_attempts`` tries of its own. The event joins the try's failure group, its next try is
        a ``retry``, and the try's attempt row is written if the fence holds. Returns the new
        status and, for a retry, when it is due; ``None`` if the lease was lost.
        """
        now = self.clock()
        attempts = row.attempts - row.attempts_before_round
        final = self.is_last_try(row, permanent)
        values: dict[str, Any] = {"last_error": error[:MAX_ERROR], "updated_at": now, "lease_expires_at": None}
        outcome = FailedTry(FAILED)
        if not final:
            delay = max(self.settings.backoff(attempts), retry_after or 0.0)
            outcome = FailedTry(QUEUED, now + delay)
            values.update(message_id=None, next_trigger=RETRY)
        values.update(status=outcome.status, sweep_after=outcome.retry_at, error_group=tried.group(outcome.status))
        changed = conn.execute(update(events).where(holds_event(row.id, token)).values(**values)).rowcount
        if not changed:
            return None
        self.record_attempts(conn, [(tried, outcome.status)])
        return outcome

    def is_last_try(self, row: Any, permanent: bool = False) -> bool:
        """Whether a failure of this try leaves the event ``failed`` rather than retried."""
        return permanent or row.attempts - row.attempts_before_round >= self.settings.max_attempts
