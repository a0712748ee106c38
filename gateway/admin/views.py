"""What the console shows, as plain data: the API serves it as JSON, the pages render it.

Every query here is cheap at a million stored events: lists are keyset pages on the store id
(see :func:`gateway.eventlog.list_events`), lookups go by a unique key or an index, and nothing
counts the whole table. Status counts are exact up to :data:`COUNT_CAP` per status and said to be
"at least" past it (see :func:`status_counts`).
"""

from __future__ import annotations

import base64
import importlib
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import orjson
from sqlalchemy import Engine, func, select

from gateway.eventlog import EventFilter, find_event, list_events, list_fields
from gateway.models import STATUSES, UNFINISHED, attempts, events, resources

#: Past this many events of one status, a count says "at least" (``"10000+"``) instead of
#: reading on: each count reads at most this many index entries.
COUNT_CAP = 10_000
#: Failed tries counted for "failures in the last hour" are among the newest this many attempts.
RECENT_ATTEMPTS = 10_000
HOUR = 3600.0


def optional(name: str) -> ModuleType | None:
    """A module built by another part of the console (attempts, rejections, pausing, replay
    jobs), or ``None`` in a build without it: its endpoints answer 501 and its pages say so."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        return None


def event_item(row: Any) -> dict[str, Any]:
    """An event as the list shows it (the API's list items)."""
    return list_fields(row)


def event_page(engine: Engine, where: EventFilter, cursor: str | None, limit: int) -> dict[str, Any]:
    """``{"events": [...], "next_cursor": ...}``; raises FilterError on a bad filter or cursor."""
    page = list_events(engine, where, cursor=cursor, limit=limit)
    return {"events": [event_item(row) for row in page.rows], "next_cursor": page.next_cursor}


def body_fields(body: bytes) -> dict[str, Any]:
    """The raw body as text when it is UTF-8, else base64 (``body_encoding`` says which)."""
    try:
        return {"body": body.decode("utf-8"), "body_encoding": "utf-8"}
    except UnicodeDecodeError:
        return {"body": base64.b64encode(body).decode(), "body_encoding": "base64"}


def resource_fields(row: Any) -> dict[str, Any]:
    return {
        "provider": row.provider,
        "resource_id": row.resource_id,
        "resource_type": row.resource_type,
        "applied_sequence": row.applied_sequence,
        "applied_event_id": row.applied_event_id,
        "state": orjson.loads(row.state) if row.state else None,
        "deleted": bool(row.deleted),
        "fetched_at": row.fetched_at,
        "updated_at": row.updated_at,
    }


def stored_resource(engine: Engine, provider: str, resource_id: str | None) -> dict[str, Any] | None:
    if resource_id is None:
        return None
    with engine.connect() as conn:
        row = conn.execute(
            select(resources).where(resources.c.provider == provider, resources.c.resource_id == resource_id)
        ).one_or_none()
    return None if row is None else resource_fields(row)


def event_attempts(engine: Engine, event_pk: int) -> list[dict[str, Any]]:
    """The event's attempts, oldest first (see :mod:`gateway.attempts`); none in a build without it."""
    module = optional("gateway.attempts")
    return [] if module is None else list(module.attempts_for(engine, event_pk))


def event_detail(engine: Engine, provider: str, event_id: str) -> dict[str, Any] | None:
    """One event whole: its list fields and row, headers, body, attempts, handler runs, resource."""
    found = find_event(engine, event_id, provider)
    if found is None:
        return None
    row, runs = found
    return {
        **event_item(row),
        "sequence": row.sequence,
        "round": row.round,
        "updated_at": row.updated_at,
        "processed_at": row.processed_at,
        "retry_at": row.retry_at,
        "next_attempt": row.next_attempt,
        "waiting_behind": row.waiting_behind,
        "error_group": row.error_group,
        "headers": orjson.loads(row.headers),
        **body_fields(row.body),
        "tries": row.attempts,
        "attempts": event_attempts(engine, row.id),
        "handler_runs": [{"handler": run.handler, "round": run.round, "finished_at": run.finished_at} for run in runs],
        "resource": stored_resource(engine, row.provider, row.resource_id),
    }


def resource_detail(engine: Engine, provider: str, resource_id: str, cursor: str | None) -> dict[str, Any] | None:
    """A resource's reconciled state and a page of its events; ``None`` when neither exists."""
    resource = stored_resource(engine, provider, resource_id)
    page = event_page(engine, EventFilter(provider=provider, resource_id=resource_id), cursor, 50)
    if resource is None and not page["events"]:
        return None
    return {"provider": provider, "resource_id": resource_id, "resource": resource, **page}


@dataclass(slots=True)
class StatusCounts:
    """Events per provider and status; a status in ``capped`` has more than :data:`COUNT_CAP`
    events, and its numbers count only its newest ``COUNT_CAP``."""

    by_provider: dict[str, dict[str, int]] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    capped: set[str] = field(default_factory=set)

    def shown(self, count: int, status: str) -> int | str:
        """A count as the API and pages give it: ``"10000+"`` past the cap."""
        return f"{count}+" if status in self.capped else count

    def for_provider(self, provider: str | None) -> dict[str, int | str]:
        counts = self.totals if provider is None else self.by_provider.get(provider, {})
        return {status: self.shown(counts.get(status, 0), status) for status in STATUSES}


def status_counts(engine: Engine, cap: int = COUNT_CAP) -> StatusCounts:
    """Per status, the newest ``cap + 1`` events of that status (a range of the (status, id)
    index), grouped by provider: one bounded read per status, whatever the store holds."""
    counts = StatusCounts()
    with engine.connect() as conn:
        for status in STATUSES:
            newest = (
                select(events.c.provider)
                .where(events.c.status == status)
                .order_by(events.c.id.desc())
                .limit(cap + 1)
                .subquery()
            )
            rows = conn.execute(select(newest.c.provider, func.count()).group_by(newest.c.provider)).all()
            total = sum(n for _, n in rows)
            if total > cap:
                counts.capped.add(status)
                total = cap
            counts.totals[status] = total
            for provider, n in rows:
                counts.by_provider.setdefault(provider, {})[status] = n
    return counts


def oldest_unfinished(engine: Engine) -> float | None:
    """When the oldest unfinished event arrived: the lowest store id of each unfinished status
    (one probe of the (status, id) index each)."""
    with engine.connect() as conn:
        firsts = [
            conn.execute(
                select(events.c.received_at).where(events.c.status == status).order_by(events.c.id).limit(1)
            ).scalar()
            for status in UNFINISHED
        ]
    found = [at for at in firsts if at is not None]
    return min(found) if found else None


def failures_last_hour(engine: Engine, now: float) -> int:
    """Failed tries (outcome ``retry`` or ``failed``) that finished within the hour, among the
    newest :data:`RECENT_ATTEMPTS` attempts."""
    newest = select(attempts.c.outcome, attempts.c.finished_at).order_by(attempts.c.id.desc()).limit(RECENT_ATTEMPTS)
    recent = newest.subquery()
    query = (
        select(func.count())
        .select_from(recent)
        .where(recent.c.finished_at >= now - HOUR, recent.c.outcome.in_(("retry", "failed")))
    )
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def failure_groups(engine: Engine, limit: int = 100) -> list[dict[str, Any]] | None:
    """The failure groups (see :mod:`gateway.attempts`); ``None`` in a build without them."""
    module = optional("gateway.attempts")
    if module is None or not hasattr(module, "failure_groups"):
        return None
    return list(module.failure_groups(engine, limit=limit))


def stats(engine: Engine, providers: list[str]) -> dict[str, Any]:
    """``GET stats``: counts per provider and status, the backlog's age, recent failures, groups."""
    now = time.time()
    counts = status_counts(engine)
    seen = sorted(set(providers) | set(counts.by_provider))
    oldest = oldest_unfinished(engine)
    return {
        "counts": {name: counts.for_provider(name) for name in seen},
        "totals": counts.for_provider(None),
        "count_cap": COUNT_CAP,
        "oldest_unfinished_age_seconds": None if oldest is None else max(0.0, now - oldest),
        "failures_last_hour": failures_last_hour(engine, now),
        "failure_groups": failure_groups(engine),
    }
