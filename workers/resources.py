"""The resources table: each resource's applied sequence and reconciled state.

Its lease columns belong to :mod:`workers.leases`; here are the pending events of a resource, its
stored state, and the fenced write of a new state inside the event's transaction.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, bindparam, select, update

from gateway.models import PROCESSING, QUEUED, RECEIVED, events, resources
from gateway.prepared import Prepared
from providers.base import Clock

from .leases import RESOURCE_ROW, ResourceKey
from .reconcile import Fetched

#: The most pending events of one resource looked at in one pass.
PASS_LIMIT = 500


# Run for every pass, built once (see workers.lifecycle).
PENDING = Prepared(
    select(
        events.c.id,
        events.c.event_type,
        events.c.status,
        events.c.sequence,
        events.c.received_at,
        events.c.message_id,
        events.c.sweep_after,
    )
    .where(
        events.c.provider == bindparam("key_provider"),
        events.c.resource_id == bindparam("key_resource"),
        events.c.status.in_((RECEIVED, QUEUED, PROCESSING)),
    )
    .order_by(events.c.sequence.asc().nulls_first(), events.c.id)
    .limit(PASS_LIMIT)
)


@dataclass(frozen=True, slots=True)
class StoredResource:
    """The store's view of a resource before an event is applied."""

    applied_sequence: int | None = None
    state: Any = None
    deleted: bool = False


class ResourceStore:
    """Reads a resource's pending events and state; writes the state an event leaves behind."""

    def __init__(self, engine: Engine, *, clock: Clock = time.time) -> None:
        self.engine = engine
        self.clock = clock

    def pending(self, conn: Connection, key: ResourceKey) -> list[Any]:
        """The resource's unfinished events in order (at most :data:`PASS_LIMIT`).

        Events without a sequence come first, on every backend (PostgreSQL sorts NULL last by
        default), so that the limit never cuts off the event the order puts first."""
        return PENDING.rows(conn, {"key_provider": key[0], "key_resource": key[1]})

    def write_state(
        self, conn: Connection, key: ResourceKey, holder: str, row: Any, after: StoredResource, fetched: Fetched
    ) -> bool:
        """Write the resource as ``row``, the last event a round applied, leaves it (``after``, see
        :func:`applied`), inside the round's transaction; ``False`` (and nothing written) if
        another worker has taken over the lease."""
        values: dict[str, Any] = {
            "applied_sequence": after.applied_sequence,
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
        params = {f"new_{column}": value for column, value in values.items()}
        params.update(key_provider=key[0], key_resource=key[1], holder=holder)
        return bool(_write_state(tuple(values)).rowcount(conn, params))


@functools.cache
def _write_state(columns: tuple[str, ...]) -> Prepared:
    """The fenced UPDATE of a resource that writes ``columns`` (one per set of columns that
    :meth:`ResourceStore.write_state` writes: a handful)."""
    return Prepared(
        update(resources)
        .where(RESOURCE_ROW, resources.c.lease_token == bindparam("holder"))
        .values({column: bindparam(f"new_{column}") for column in columns})
    )


def stored_of(row: Any | None) -> StoredResource:
    """The resource as its row's :data:`~workers.leases.STORED_COLUMNS` say (none: never stored)."""
    if row is None:
        return StoredResource()
    return StoredResource(row.applied_sequence, orjson.loads(row.state) if row.state else None, bool(row.deleted))


def applied(stored: StoredResource, row: Any, fetched: Fetched) -> StoredResource:
    """The resource once the event ``row`` is applied: its sequence, and the state reconciliation
    fetched (or the stored one, when nothing was fetched)."""
    sequence = stored.applied_sequence
    if row.sequence is not None:
        sequence = row.sequence if sequence is None else max(sequence, row.sequence)
    if not fetched.reconciled:
        return StoredResource(sequence, stored.state, stored.deleted)
    return StoredResource(sequence, fetched.state, fetched.deleted)
