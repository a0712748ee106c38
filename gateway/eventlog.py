"""Reading and replaying the event log (the CLI and, later, the admin API use these)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, select, update

from .models import FAILED, QUEUED, events, handler_runs


def list_events(
    engine: Engine,
    *,
    provider: str | None = None,
    status: str | None = None,
    event_type: str | None = None,
    limit: int = 50,
) -> Sequence[Any]:
    """Newest first, without bodies."""
    query = (
        select(
            events.c.id,
            events.c.provider,
            events.c.event_id,
            events.c.event_type,
            events.c.status,
            events.c.attempts,
            events.c.received_at,
            events.c.last_error,
        )
        .order_by(events.c.id.desc())
        .limit(limit)
    )
    if provider:
        query = query.where(events.c.provider == provider)
    if status:
        query = query.where(events.c.status == status)
    if event_type:
        query = query.where(events.c.event_type == event_type)
    with engine.connect() as conn:
        return conn.execute(query).all()


def find_event(engine: Engine, ref: str, provider: str | None = None) -> tuple[Any, list[Any]] | None:
    """An event by store id or by the provider's event id, with its handler runs."""
    query = select(events)
    if ref.isdigit() and provider is None:
        query = query.where(events.c.id == int(ref))
    else:
        query = query.where(events.c.event_id == ref)
        if provider:
            query = query.where(events.c.provider == provider)
    with engine.connect() as conn:
        row = conn.execute(query.limit(1)).first()
        if row is None:
            return None
        runs = conn.execute(
            select(handler_runs).where(handler_runs.c.event_pk == row.id).order_by(handler_runs.c.finished_at)
        ).all()
    return row, list(runs)


def replay(engine: Engine, *, ids: Sequence[int] = (), status: str | None = None, provider: str | None = None) -> int:
    """Queue stored events again; the workers' sweep sends them within a second or so.

    Handlers that already succeeded for an event are not run again (their runs are kept).
    """
    condition = events.c.id.in_(list(ids)) if ids else events.c.status == (status or FAILED)
    query = update(events).where(condition)
    if provider:
        query = query.where(events.c.provider == provider)
    now = time.time()
    with engine.begin() as conn:
        return conn.execute(
            query.values(
                status=QUEUED, message_id=None, sweep_after=now, attempts=0, lease_expires_at=None, updated_at=now
            )
        ).rowcount
