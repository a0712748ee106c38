"""Reading and replaying the event log (the CLI and, later, the admin API use these).

Besides its status, a listed event says what it waits for, computed by the store in the same
query: ``retry_at`` (with ``next_attempt``) when a failed try scheduled a retry, and
``waiting_behind``, the store id of the event of the same resource that the per-resource order
applies first and that is not finished (see ``workers.ordering``; that module is not imported
here: the gateway never loads the workers).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Engine, Select, and_, bindparam, case, func, select, update

from .errors import ReplayError
from .models import FAILED, PRUNED, QUEUED, RECEIVED, STATUSES, UNFINISHED, events, handler_runs


def waiting_behind(event: Any = events) -> ColumnElement[Any]:
    """The store id of the first unfinished event of ``event``'s resource in the order they are
    applied, while ``event`` waits (``received``/``queued``) and is not that first one itself;
    NULL otherwise. ``event`` is unfinished too, so that first one is applied before it.

    One probe of ``ix_hookgate_events_unfinished_order`` per row, whatever the backlog.
    """
    ahead = events.alias("ahead")
    head = (
        select(ahead.c.id)
        .where(
            ahead.c.provider == event.c.provider,
            ahead.c.resource_id == event.c.resource_id,
            # Written into the SQL, not bound: SQLite uses a partial index only for a query whose
            # terms match its WHERE to the letter, which a parameter never does.
            ahead.c.status.in_(
                bindparam("unfinished_statuses", list(UNFINISHED), expanding=True, literal_execute=True)
            ),
        )
        .order_by(ahead.c.sequence.asc().nulls_first(), ahead.c.id)
        .limit(1)
        .scalar_subquery()
    )
    waiting = and_(event.c.status.in_((RECEIVED, QUEUED)), event.c.resource_id.is_not(None))
    return case((waiting, func.nullif(head, event.c.id)), else_=None)


def retry_at() -> ColumnElement[Any]:
    """When the next try of an event runs, if a failed try of its current round scheduled it:
    ``queued``, no broker message yet, and ``sweep_after`` the time (see ``workers.lifecycle``)."""
    retrying = and_(
        events.c.status == QUEUED,
        events.c.message_id.is_(None),
        events.c.attempts > events.c.attempts_before_round,
    )
    return case((retrying, events.c.sweep_after), else_=None)


def _with_next(query: Select[Any]) -> Select[Any]:
    """``query`` with what each event waits for: ``retry_at``, ``next_attempt``, ``waiting_behind``."""
    return query.add_columns(
        retry_at().label("retry_at"),
        (events.c.attempts + 1).label("next_attempt"),
        waiting_behind().label("waiting_behind"),
    )


def list_events(
    engine: Engine,
    *,
    provider: str | None = None,
    status: str | None = None,
    event_type: str | None = None,
    limit: int = 50,
) -> Sequence[Any]:
    """Newest first, without bodies, with what each event waits for (see :func:`_with_next`)."""
    query = (
        _with_next(
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
        )
        .where(events.c.status != PRUNED)
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
    """An event by store id or by the provider's event id, with its handler runs and what it
    waits for (see :func:`_with_next`); a pruned event is gone (only its id is kept, to answer
    duplicates)."""
    query = _with_next(select(events)).where(events.c.status != PRUNED)
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


@dataclass(slots=True)
class Replay:
    """What a replay did: the events queued again and those it refused, with the reason."""

    queued: list[Any] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)


def replay(
    engine: Engine,
    refs: Sequence[str] = (),
    *,
    status: str | None = None,
    provider: str | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> Replay:
    """Queue stored events again; the workers' sweep sends them within a second or so.

    Events are named by ``refs`` (store ids or provider event ids, as :func:`find_event` takes
    them) or chosen by ``status`` (and ``provider``). A ``failed`` event runs the handlers that
    have not succeeded. A ``processed`` or ``superseded`` event is refused unless ``force``,
    which starts a new round: every handler runs again. An event still in flight is refused:
    it will be processed anyway. Nothing is erased: the attempt count goes on, the last error
    stays until the next outcome, and earlier rounds' handler runs are kept. Each replay gets
    ``max_attempts`` tries of its own.
    """
    if status is not None and status not in STATUSES:
        raise ReplayError(f"unknown status {status!r} (one of: {', '.join(STATUSES)})")
    result = Replay()
    rows: list[Any] = []
    for ref in refs:
        found = find_event(engine, ref, provider)
        if found is None:
            result.refused.append((ref, f"no event {ref}"))
        else:
            rows.append(found[0])
    if status is not None:
        query = select(events).where(events.c.status == status).order_by(events.c.id)
        if provider:
            query = query.where(events.c.provider == provider)
        with engine.connect() as conn:
            rows += conn.execute(query).all()
    now = time.time()
    with engine.begin() as conn:
        for row in rows:
            name = f"{row.id} ({row.provider}/{row.event_id})"
            if row.status in UNFINISHED:
                result.refused.append((name, f"{name} is in flight ({row.status}): it will be processed anyway"))
                continue
            if row.status != FAILED and not force:
                result.refused.append((name, f"{name} is already {row.status}; --force runs every handler again"))
                continue
            if dry_run:
                result.queued.append(row)
                continue
            values: dict[str, Any] = {
                "status": QUEUED,
                "message_id": None,
                "sweep_after": now,
                "lease_expires_at": None,
                "attempts_before_round": events.c.attempts,
                "updated_at": now,
            }
            if force:
                values["round"] = events.c.round + 1
            changed = conn.execute(
                update(events).where(events.c.id == row.id, events.c.status == row.status).values(**values)
            ).rowcount
            if changed:
                result.queued.append(row)
            else:
                result.refused.append((name, f"{name} changed while it was being replayed; look again"))
    return result
