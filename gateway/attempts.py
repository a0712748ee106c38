"""Reading the attempt history and the failure groups (the CLI, the admin API and pages use these).

The workers write one attempt row per try of an event, in the transaction that records the
try's outcome (see ``workers.tries``; that module is not imported here: the gateway never loads
the workers). A failed try also puts its event in a *failure group*, ``events.error_group``:
the handler that raised first and the exception's class, e.g.
``tests.support.handlers.charge:ValueError``, so that a thousand events failing for one reason
are one line whatever their messages say. The group is cleared when the event settles.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Engine, func, select

from .models import attempts, events


def error_text(errors: list[dict[str, Any]]) -> str | None:
    """One line per error naming the handler and the exception's class: ``handler: Type: message``."""
    if not errors:
        return None
    return "\n".join(f"{e['handler']}: {str(e['type']).rsplit('.', 1)[-1]}: {e['message']}" for e in errors)


def attempts_for(engine: Engine, event_pk: int) -> list[dict[str, Any]]:
    """Every recorded try of an event, oldest first (see the module's docstring for the fields)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(attempts).where(attempts.c.event_pk == event_pk).order_by(attempts.c.attempt, attempts.c.id)
        ).all()
    history = []
    for row in rows:
        errors = orjson.loads(row.errors) if row.errors else []
        history.append(
            {
                "attempt": row.attempt,
                "round": row.round,
                "started_at": row.started_at,
                "finished_at": row.finished_at,
                "outcome": row.outcome,
                "trigger": row.trigger,
                "errors": errors,
                "error": error_text(errors),
                "reconcile_status": row.reconcile_status,
                "reconcile_error": row.reconcile_error,
                "worker": row.worker,
            }
        )
    return history


def failure_groups(engine: Engine, limit: int = 100) -> list[dict[str, Any]]:
    """Failed and retrying events grouped by provider, type and failure group, largest first.

    Only failed and retrying events have a group: the workers clear it when an event settles,
    and retention when it prunes one. So this is one GROUP BY over
    ``ix_hookgate_events_error_group`` (only events in a group are read, never the whole
    table), joined back to each group's newest event for its example and last error.
    ``first_seen`` is when the group's oldest event arrived, ``last_seen`` the latest change of
    one of its events (usually its last failed try).
    """
    grouped = (
        select(
            events.c.provider,
            events.c.event_type,
            events.c.error_group,
            func.count().label("count"),
            func.min(events.c.received_at).label("first_seen"),
            func.max(events.c.updated_at).label("last_seen"),
            func.max(events.c.id).label("example_pk"),
        )
        # A range, not IS NOT NULL, which SQLite's planner does not take to the index.
        .where(events.c.error_group > "")
        .group_by(events.c.error_group, events.c.provider, events.c.event_type)
        .order_by(func.count().desc(), func.max(events.c.id).desc())
        .limit(max(1, limit))
        .subquery("grouped")
    )
    example = events.alias("example")
    query = select(grouped, example.c.event_id, example.c.last_error).join(
        example, example.c.id == grouped.c.example_pk
    )
    with engine.connect() as conn:
        rows = conn.execute(query.order_by(grouped.c.count.desc(), grouped.c.example_pk.desc())).all()
    return [
        {
            "provider": row.provider,
            "type": row.event_type,
            "group": row.error_group,
            "count": row.count,
            "first_seen": row.first_seen,
            "last_seen": row.last_seen,
            "example": {"provider": row.provider, "event_id": row.event_id},
            "last_error": row.last_error,
        }
        for row in rows
    ]
