"""Leases: which worker may work on an event or a resource right now, and until when.

Where a lease is **taken**: :meth:`EventLeases.claim` moves a waiting event to ``processing``
under a new token; :meth:`ResourceLeases.acquire` takes a resource's row by compare-and-set.

Where it is **renewed**: :class:`LeaseKeeper`, a thread of each worker process, pushes back the
expiry of every lease the process holds, every third of a lease, on a connection of its own, so
that renewal never waits behind handlers for a pooled connection. It renews a lease only until
the holder's *renewal deadline* (the handler time limit plus a grace, from the start of the
current handler): a thread stuck where no time limit reaches it (a socket read, a lock wait)
stops being renewed, its lease expires, and the event is taken over.

Where it is **lost**: the recovery sweep re-sends an event whose lease expired under a new
token, and a resource lease that expired may be acquired by anyone. Every write of an outcome is
fenced by :func:`holds_event` (or the resource's ``lease_token``): a worker that lost its lease
commits nothing.

All lease arithmetic uses the store's clock (:class:`store_time`), never the host's: hosts
whose clocks disagree still agree on whether a lease is live. (Schedule times, such as when a
retry is due, are written by the host that decides them; skew only shifts them.)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, Float, and_, bindparam, exists, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from gateway.config import WorkerSettings
from gateway.models import PROCESSING, QUEUED, RECEIVED, events, leases, provider_states, resources
from gateway.periodic import Periodic
from gateway.prepared import Prepared
from providers.base import Clock

log = logging.getLogger("hookgate.worker")

ResourceKey = tuple[str, str]

#: After a handler's time limit, how long its thread may take to unwind and record the outcome
#: before its leases are no longer renewed.
RENEWAL_GRACE_SECONDS = 5.0


class store_time(FunctionElement[float]):
    """The store's current time in Unix seconds, evaluated by the database."""

    type = Float()
    inherit_cache = True


@compiles(store_time, "postgresql")
def _pg_time(element: store_time, compiler: SQLCompiler, **kw: Any) -> str:
    return "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"


@compiles(store_time, "sqlite")
def _sqlite_time(element: store_time, compiler: SQLCompiler, **kw: Any) -> str:
    return "((julianday('now') - 2440587.5) * 86400.0)"


def carrying_token(*statuses: str) -> Any:
    """The event ``:pk`` while it carries the token ``:token`` in one of ``statuses``: a condition
    on bound parameters, for an executemany over ``{"pk": …, "token": …}`` rows (an expanding
    ``IN`` cannot be used there)."""
    return and_(
        events.c.id == bindparam("pk"),
        events.c.message_id == bindparam("token"),
        or_(*(events.c.status == status for status in statuses)),
    )


def holds_event(pk: int, token: str) -> Any:
    """The fence: the event is still ``processing`` under this token."""
    return and_(events.c.id == pk, events.c.message_id == token, events.c.status == PROCESSING)


class EventLeases:
    """Taking and renewing the lease of one event."""

    def __init__(self, engine: Engine, settings: WorkerSettings, *, clock: Clock = time.time) -> None:
        self.engine = engine
        self.settings = settings
        #: This host's clock: only for ``updated_at``, never for a lease.
        self.clock = clock

    def claim(self, pk: int, token: str, *, message: str | None = None) -> Any | None:
        """Lease the waiting event, fenced by ``token`` from now on; ``None`` if it is not waiting
        or its provider is paused.

        ``message`` is the token the event must still carry (a broker message's); a resource
        pass that holds the resource's lease passes ``None`` and takes any waiting event of it.
        """
        values = {"pks": [pk], "holder": token, "seconds": self.settings.lease_seconds, "now": self.clock()}
        with self.engine.begin() as conn:
            if message is None:
                return CLAIM_MANY.first(conn, values)
            return CLAIM_OF_MESSAGE.first(conn, {**values, "message": message})

    def claim_many(self, conn: Connection, pks: Sequence[int], token: str) -> dict[int, Any]:
        """Lease these waiting events at once, in one statement (a resource pass's round, whose
        holder owns the resource's lease); the rows claimed, by primary key. An event that is no
        longer waiting, or whose provider is paused, is left out."""
        if not pks:
            return {}
        values = {"pks": list(pks), "holder": token, "seconds": self.settings.lease_seconds, "now": self.clock()}
        return {row.id: row for row in CLAIM_MANY.rows(conn, values)}

    def give_back(self, conn: Connection, pks: Sequence[int], token: str, at: float) -> None:
        """Undo the claim of events a round did not start (the pass stopped before them): they
        wait again, with no message and the try not used up, until ``at``, when the recovery
        sweep sends them (see :mod:`workers.recovery`)."""
        if pks:
            conn.execute(
                update(events)
                .where(events.c.id.in_(pks), events.c.message_id == token, events.c.status == PROCESSING)
                .values(
                    status=QUEUED,
                    message_id=None,
                    attempts=events.c.attempts - 1,
                    lease_expires_at=None,
                    sweep_after=at,
                )
            )

    def renew(self, conn: Connection, held: Sequence[tuple[int, str]]) -> list[int]:
        """Renew these leases; the events among them taken over by another token meanwhile (the
        recovery sweep's: this process held them past their expiry). An event that was settled
        or given back as the keeper ran is not counted: its holder is done with it."""
        if not held:
            return []
        lock_before_renewing(conn, events.c.id.in_([pk for pk, _ in held]), events.c.id)
        renewed = conn.execute(
            update(events)
            .where(carrying_token(PROCESSING))
            .values(lease_expires_at=store_time() + self.settings.lease_seconds),
            [{"pk": pk, "token": token} for pk, token in sorted(held)],  # in key order (see recovery)
        ).rowcount
        if renewed == len(held):
            return []
        tokens = dict(held)
        now = conn.execute(select(events.c.id, events.c.message_id).where(events.c.id.in_(tokens))).all()
        return sorted(pk for pk, token in now if token is not None and token != tokens[pk])


def lock_before_renewing(conn: Connection, rows: Any, *key: Any) -> None:
    """On PostgreSQL, lock the ``rows`` whose leases are about to be renewed, in ``key`` order
    (see recovery): PostgreSQL computes an UPDATE's new values before it waits for a row lock,
    so a renewal that waited would stamp an expiry already past. Locked first, it stamps one a
    lease from when it got the rows."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(*key).where(rows).order_by(*key).with_for_update(key_share=True))


def insert_ignoring_conflict(conn: Connection, table: Any, values: dict[str, Any]) -> bool:
    """INSERT … ON CONFLICT DO NOTHING; whether the row was inserted.

    Asked with RETURNING, not ``rowcount``: psycopg reports -1 for this statement.
    """
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table).values(**values).on_conflict_do_nothing()
    return conn.execute(statement.returning(*table.primary_key.columns)).first() is not None


def take_named_lease(engine: Engine, name: str, holder: str, seconds: float) -> bool:
    """Take (or extend) the lease called ``name`` for ``holder`` unless another live holder has
    it; expiry is judged by the store's clock."""
    with engine.begin() as conn:
        taken = conn.execute(
            update(leases)
            .where(
                leases.c.name == name,
                or_(leases.c.holder.is_(None), leases.c.holder == holder, leases.c.expires_at <= store_time()),
            )
            .values(holder=holder, expires_at=store_time() + seconds)
        ).rowcount
        if taken:
            return True
        return insert_ignoring_conflict(
            conn, leases, {"name": name, "holder": holder, "expires_at": store_time() + seconds}
        )


def release_named_lease(engine: Engine, name: str, holder: str) -> None:
    with engine.begin() as conn:
        conn.execute(update(leases).where(leases.c.name == name, leases.c.holder == holder).values(holder=None))


def resource_row(key: ResourceKey) -> Any:
    return and_(resources.c.provider == key[0], resources.c.resource_id == key[1])


#: :func:`resource_row` with the key as parameters (``key_provider``, ``key_resource``): the
#: statements every pass runs are built once (see workers.lifecycle).
RESOURCE_ROW = and_(
    resources.c.provider == bindparam("key_provider"), resources.c.resource_id == bindparam("key_resource")
)
_FREE = or_(resources.c.lease_token.is_(None), resources.c.lease_expires_at <= store_time())
#: What a pass needs of the resource's row, returned by the statement that takes its lease: while
#: the lease is held only the pass writes the row, so it keeps these current in memory.
STORED_COLUMNS = (resources.c.applied_sequence, resources.c.state, resources.c.deleted)
TAKE = Prepared(
    update(resources)
    .where(RESOURCE_ROW, _FREE)
    .values(lease_token=bindparam("holder"), lease_expires_at=store_time() + bindparam("seconds"))
    .returning(*STORED_COLUMNS)
)
_GIVE_UP = (
    update(resources)
    .where(RESOURCE_ROW, resources.c.lease_token == bindparam("holder"))
    .values(lease_token=None, lease_expires_at=None)
)
GIVE_UP = Prepared(_GIVE_UP)
#: :data:`GIVE_UP` only when no event of the resource is unfinished: the usual end of a pass, in
#: one statement rather than a look at the pending events and then the release.
GIVE_UP_IF_DONE = Prepared(
    _GIVE_UP.where(
        ~exists().where(
            events.c.provider == bindparam("key_provider"),
            events.c.resource_id == bindparam("key_resource"),
            events.c.status.in_((RECEIVED, QUEUED, PROCESSING)),
        )
    )
)
#: A resource's first lease creates its row (see :meth:`ResourceLeases.take`).
_NEW_RESOURCE_VALUES = {
    "provider": bindparam("key_provider"),
    "resource_id": bindparam("key_resource"),
    "lease_token": bindparam("holder"),
    "lease_expires_at": store_time() + bindparam("seconds"),
    "deleted": False,
    "updated_at": bindparam("now"),
}
NEW_RESOURCE = {
    dialect.__name__.rsplit(".", 1)[-1]: Prepared(
        dialect.insert(resources)
        .values(_NEW_RESOURCE_VALUES)
        .on_conflict_do_nothing()
        .returning(*STORED_COLUMNS)  # not rowcount: psycopg's is -1 for ON CONFLICT DO NOTHING
    )
    for dialect in (postgresql, sqlite)
}
# The store's pause state fences the claim: a worker's cached paused set may be a second old, and
# an event stored after ``pause`` returned must not run (see gateway.pausing).
_PAUSED = exists().where(provider_states.c.provider == events.c.provider, provider_states.c.paused.is_(True))
_CLAIM = (
    update(events)
    .where(events.c.id.in_(bindparam("pks", expanding=True)), events.c.status.in_((RECEIVED, QUEUED)), ~_PAUSED)
    .values(
        status=PROCESSING,
        message_id=bindparam("holder"),
        attempts=events.c.attempts + 1,
        lease_expires_at=store_time() + bindparam("seconds"),
        updated_at=bindparam("now"),
    )
    .returning(*events.c)
)
CLAIM_MANY = Prepared(_CLAIM)
CLAIM_OF_MESSAGE = Prepared(_CLAIM.where(events.c.message_id == bindparam("message")))


class ResourceLeases:
    """Taking, renewing and giving back the lease of a resource (one pass over its events)."""

    def __init__(self, engine: Engine, settings: WorkerSettings, *, clock: Clock = time.time) -> None:
        self.engine = engine
        self.settings = settings
        #: This host's clock: only for ``updated_at``, never for a lease.
        self.clock = clock

    def acquire(self, key: ResourceKey, holder: str) -> bool:
        """Take the resource's lease unless a live worker holds it (in a transaction of its own)."""
        with self.engine.begin() as conn:
            return self.take(conn, key, holder) is not None

    def take(self, conn: Connection, key: ResourceKey, holder: str) -> Any | None:
        """Take the resource's lease unless a live worker holds it, in the caller's transaction;
        the row's :data:`STORED_COLUMNS` once taken, ``None`` if another worker holds it."""
        values = {
            "key_provider": key[0],
            "key_resource": key[1],
            "holder": holder,
            "seconds": self.settings.lease_seconds,
        }
        taken = TAKE.first(conn, values)
        if taken is not None:
            return taken
        return NEW_RESOURCE[conn.dialect.name].first(conn, {**values, "now": self.clock()})

    def renew(self, conn: Connection, held: Sequence[tuple[ResourceKey, str]]) -> None:
        if held:
            rows = or_(*(resource_row(key) for key, _ in held))
            lock_before_renewing(conn, rows, resources.c.provider, resources.c.resource_id)
        for key, holder in held:
            conn.execute(
                update(resources)
                .where(resource_row(key), resources.c.lease_token == holder)
                .values(lease_expires_at=store_time() + self.settings.lease_seconds)
            )

    def release(self, key: ResourceKey, holder: str) -> None:
        with self.engine.begin() as conn:
            self.give_up(conn, key, holder)

    def give_up(self, conn: Connection, key: ResourceKey, holder: str) -> None:
        """Release the lease in the caller's transaction (the one that ends a pass)."""
        GIVE_UP.rowcount(conn, {"key_provider": key[0], "key_resource": key[1], "holder": holder})

    def give_up_if_done(self, conn: Connection, key: ResourceKey, holder: str) -> bool:
        """Release the lease in the caller's transaction if none of the resource's events is
        unfinished; whether it was released."""
        return GIVE_UP_IF_DONE.rowcount(conn, {"key_provider": key[0], "key_resource": key[1], "holder": holder}) == 1


@dataclass(slots=True)
class Lease:
    """A lease this process holds, renewed until ``renew_until`` (monotonic seconds)."""

    key: Any
    token: str
    renew_until: float = field(default=0.0)

    def extend(self, seconds: float) -> None:
        """Keep renewing for ``seconds`` more (from now)."""
        self.renew_until = max(self.renew_until, time.monotonic() + seconds)


class LeaseKeeper(Periodic):
    """Renews, every third of a lease, the leases this process holds, until their deadlines.

    The renewals keep their pace whatever one takes (the next starts a third of a lease after
    the last one started, at once if that is past). A renewal slower than a third of a lease is
    logged, and so is a lease found taken over: a lapse is never silent.

    A renewal waits for a row lock as long as it takes, with no lock timeout: waiting, it is
    first in line for the row, ahead of a recovery sweep that finds the lease expired meanwhile,
    and it stamps the new expiry only once it holds the row (see :meth:`EventLeases.renew`), so
    the sweep then finds the lease live. A renewal that gave up and tried again would queue
    behind the sweep.
    """

    name = "hookgate-leases"

    def __init__(self, engine: Engine, settings: WorkerSettings) -> None:
        super().__init__(settings.lease_seconds / 3)
        #: Its own engine (one connection): renewal must never wait for a handler's connection.
        self.engine = engine
        self.event_leases = EventLeases(engine, settings)
        self.resource_leases = ResourceLeases(engine, settings)
        #: How long a holder is renewed after it starts a piece of work (a handler call).
        self.work_seconds = settings.handler_time_limit_seconds + RENEWAL_GRACE_SECONDS
        #: By what is leased and its holder's token: two threads may hold entries for the same
        #: resource at once (the second finding the lease taken), neither replacing the other's.
        self._events: dict[tuple[int, str], Lease] = {}
        self._resources: dict[tuple[ResourceKey, str], Lease] = {}
        self._lock = threading.Lock()
        #: When the last renewal started (monotonic), for the pace of the next.
        self._started: float | None = None

    @contextmanager
    def holding_event(self, pk: int, token: str) -> Iterator[Lease]:
        with self._holding(self._events, pk, token) as lease:
            yield lease

    @contextmanager
    def holding_events(self, pks: Iterable[int], token: str) -> Iterator[list[Lease]]:
        """Renew the leases of a round's events (see :meth:`EventLeases.claim_many`)."""
        with ExitStack() as stack:
            yield [stack.enter_context(self._holding(self._events, pk, token)) for pk in pks]

    @contextmanager
    def holding_resource(self, key: ResourceKey, holder: str) -> Iterator[Lease]:
        with self._holding(self._resources, key, holder) as lease:
            yield lease

    @contextmanager
    def _holding(self, table: dict[tuple[Any, str], Lease], key: Any, token: str) -> Iterator[Lease]:
        lease = Lease(key, token)
        lease.extend(self.work_seconds)
        with self._lock:
            table[key, token] = lease
        try:
            yield lease
        finally:
            with self._lock:
                if table.get((key, token)) is lease:
                    del table[key, token]

    def _due(self, table: dict[tuple[Any, str], Lease]) -> list[tuple[Any, str]]:
        now = time.monotonic()
        with self._lock:
            return [(lease.key, lease.token) for lease in table.values() if lease.renew_until > now]

    def next_wait(self) -> float:
        """A third of a lease after the last renewal started, not after it ended: a slow one
        (or a failed one) is followed by the next at once."""
        if self._started is None:
            return self.interval
        return max(0.0, self._started + self.interval - time.monotonic())

    def tick(self) -> None:
        started = self._started = time.monotonic()
        held_events, held_resources = self._due(self._events), self._due(self._resources)
        if not held_events and not held_resources:
            return
        try:
            with self.engine.begin() as conn:
                lost = self.event_leases.renew(conn, held_events)
                self.resource_leases.renew(conn, held_resources)
        finally:
            took = time.monotonic() - started
            if took > self.interval:
                log.warning(
                    "renewing %d leases took %.1f s, longer than a third of a lease (%.3g s): "
                    "a store that slow lets them lapse and another worker take their events over",
                    len(held_events) + len(held_resources),
                    took,
                    self.interval,
                )
        if lost:
            log.warning(
                "events %s were taken over by another worker while this one still held them: their "
                "leases lapsed (a renewal came too late), and their handlers may run twice",
                lost,
            )

    def stop(self) -> None:
        super().stop()
        self.engine.dispose()
