"""Per-resource order, decided in the database so that it holds across processes and hosts.

One resource's events are applied by one worker at a time: the worker that takes the resource's
lease (a compare-and-set on ``hookgate_resources.lease_token``) applies every pending event of
that resource in sequence order, then lets go. A worker whose event belongs to a resource that
another worker holds only pushes the event's recovery check a little later and returns: the
holder normally applies it, and if not, the sweep sends it again.

The order is ``(sequence, arrival)``. The applied sequence only moves forward, and an event
older than it is ``superseded``. To let stragglers sort first, an event is not applied before it
is ``window`` seconds old (``ordering.window_ms``), and the pending events are applied as a
prefix: the first one that is not due (too fresh, waiting for a retry, or still being processed
by a presumed-dead worker) stops the pass, because everything behind it must wait for it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from gateway.config import WorkerSettings
from gateway.models import PROCESSING, QUEUED, RECEIVED, events, resources
from providers.base import Clock

from .reconcile import Fetched

ResourceKey = tuple[str, str]

#: The most pending events of one resource looked at in one pass.
PASS_LIMIT = 500
_NO_SEQUENCE = -(2**63)


@dataclass(frozen=True, slots=True)
class StoredResource:
    """The store's view of a resource before an event is applied."""

    applied_sequence: int | None = None
    state: Any = None
    deleted: bool = False


def order_key(row: Any) -> tuple[int, int]:
    """Sequence first, arrival (the primary key) breaking ties; no sequence sorts first."""
    return (row.sequence if row.sequence is not None else _NO_SEQUENCE, row.id)


def is_superseded(row: Any, stored: StoredResource) -> bool:
    return row.sequence is not None and stored.applied_sequence is not None and row.sequence < stored.applied_sequence


def due_at(row: Any, window: float) -> float:
    """When a pending event may be applied: after its window, and after a scheduled retry."""
    due = row.received_at + window
    if row.message_id is None and row.sweep_after is not None:
        due = max(due, row.sweep_after)
    return due


def due_prefix(pending: Sequence[Any], now: float, window: float) -> tuple[list[Any], Any | None]:
    """The events that may be applied now, in order, and the first one that stops the pass."""
    batch: list[Any] = []
    for row in sorted(pending, key=order_key):
        if row.status == PROCESSING or due_at(row, window) > now:
            return batch, row
        batch.append(row)
    return batch, None


def insert_ignoring_conflict(conn: Connection, table: Any, values: dict[str, Any]) -> bool:
    """INSERT … ON CONFLICT DO NOTHING; whether the row was inserted.

    Asked with RETURNING, not ``rowcount``: psycopg reports -1 for this statement.
    """
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table).values(**values).on_conflict_do_nothing()
    return conn.execute(statement.returning(*table.primary_key.columns)).first() is not None


class ResourceStore:
    """The resources table: leases, the stored state, and the fenced write of a new state."""

    def __init__(self, engine: Engine, settings: WorkerSettings, *, clock: Clock = time.time) -> None:
        self.engine = engine
        self.settings = settings
        self.clock = clock

    @staticmethod
    def _row(key: ResourceKey) -> Any:
        return and_(resources.c.provider == key[0], resources.c.resource_id == key[1])

    def acquire(self, key: ResourceKey, holder: str) -> bool:
        """Take the resource's lease unless a live worker holds it."""
        now = self.clock()
        expires = now + self.settings.lease_seconds
        with self.engine.begin() as conn:
            taken = conn.execute(
                update(resources)
                .where(self._row(key), or_(resources.c.lease_token.is_(None), resources.c.lease_expires_at <= now))
                .values(lease_token=holder, lease_expires_at=expires)
            ).rowcount
            if taken:
                return True
            values = {"provider": key[0], "resource_id": key[1], "lease_token": holder, "lease_expires_at": expires}
            return insert_ignoring_conflict(conn, resources, {**values, "deleted": False, "updated_at": now})

    def renew(self, held: Iterable[tuple[ResourceKey, str]]) -> None:
        expires = self.clock() + self.settings.lease_seconds
        with self.engine.begin() as conn:
            for key, holder in held:
                conn.execute(
                    update(resources)
                    .where(self._row(key), resources.c.lease_token == holder)
                    .values(lease_expires_at=expires)
                )

    def release(self, key: ResourceKey, holder: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(resources)
                .where(self._row(key), resources.c.lease_token == holder)
                .values(lease_token=None, lease_expires_at=None)
            )

    def pending(self, key: ResourceKey) -> list[Any]:
        """The resource's unfinished events, in order (at most :data:`PASS_LIMIT`)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    events.c.id,
                    events.c.status,
                    events.c.sequence,
                    events.c.received_at,
                    events.c.message_id,
                    events.c.sweep_after,
                )
                .where(
                    events.c.provider == key[0],
                    events.c.resource_id == key[1],
                    events.c.status.in_((RECEIVED, QUEUED, PROCESSING)),
                )
                .order_by(events.c.sequence, events.c.id)
                .limit(PASS_LIMIT)
            ).all()
        return sorted(rows, key=order_key)

    def stored(self, key: ResourceKey) -> StoredResource:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(resources.c.applied_sequence, resources.c.state, resources.c.deleted).where(self._row(key))
            ).one_or_none()
        if row is None:
            return StoredResource()
        return StoredResource(row.applied_sequence, orjson.loads(row.state) if row.state else None, bool(row.deleted))

    def apply(
        self, conn: Connection, key: ResourceKey, holder: str, row: Any, stored: StoredResource, fetched: Fetched
    ) -> StoredResource | None:
        """Write the event's outcome to the resource, inside the event's transaction.

        Returns the resource as now stored; ``None`` (and nothing written) if another worker
        has taken over the lease.
        """
        applied = stored.applied_sequence
        if row.sequence is not None:
            applied = row.sequence if applied is None else max(applied, row.sequence)
        values: dict[str, Any] = {
            "applied_sequence": applied,
            "applied_event_id": row.event_id,
            "updated_at": self.clock(),
        }
        if fetched.resource_type:
            values["resource_type"] = fetched.resource_type[:64]
        if fetched.reconciled:
            values.update(
                state=None if fetched.state is None else orjson.dumps(fetched.state).decode(),
                deleted=fetched.deleted,
                fetched_at=fetched.fetched_at,
            )
        changed = conn.execute(
            update(resources).where(self._row(key), resources.c.lease_token == holder).values(**values)
        ).rowcount
        if not changed:
            return None
        if not fetched.reconciled:
            return StoredResource(applied, stored.state, stored.deleted)
        return StoredResource(applied, fetched.state, fetched.deleted)
