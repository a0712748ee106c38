"""Reading and replaying the event log (the CLI and, later, the admin API use these).

Besides its status, a listed event says what it waits for, computed by the store in the same
query: ``retry_at`` (with ``next_attempt``) when a failed try scheduled a retry, and
``waiting_behind``, the store id of the event of the same resource that the per-resource order
applies first and that is not finished (see ``workers.ordering``; that module is not imported
here: the gateway never loads the workers).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import ColumnElement, Engine, Select, and_, bindparam, case, func, or_, select, update

from .errors import HookgateError, ReplayError
from .models import FAILED, PRUNED, QUEUED, RECEIVED, REPLAY, STATUSES, UNFINISHED, events, handler_runs


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


class FilterError(HookgateError):
    """Raised when an event filter is unusable (an unknown status, a bad pattern or time)."""


def parse_time(value: str) -> float:
    """Unix seconds from ``value``: a number of seconds, or an ISO 8601 time (UTC if it names
    no zone).

    Raises:
        FilterError: it is neither.
    """
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise FilterError(f"{value!r} is not a time (ISO 8601, e.g. 2026-12-05T10:00:00Z, or Unix seconds)") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def type_condition(pattern: str) -> ColumnElement[bool] | None:
    """The event types that ``pattern`` takes, as a handler pattern does: ``*`` (every type, no
    condition), ``prefix.*`` or ``prefix/*``, or one exact type.

    Raises:
        FilterError: a ``*`` anywhere else.
    """
    if pattern == "*":
        return None
    if pattern.endswith((".*", "/*")) and "*" not in pattern[:-1]:
        return events.c.event_type.startswith(pattern[:-1], autoescape=True)
    if "*" in pattern:
        raise FilterError(f"type {pattern!r}: use an exact type, 'prefix.*', or '*'")
    return events.c.event_type == pattern


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a list, a count or a bulk replay covers; every field set narrows it (AND).

    ``q`` is the console's search box: an event id or a resource id, exactly. ``error`` is free
    text found anywhere in the last error, in any case.
    """

    provider: str | None = None
    type: str | None = None
    status: str | None = None
    received_from: float | None = None
    received_to: float | None = None
    event_id: str | None = None
    resource_id: str | None = None
    error: str | None = None
    q: str | None = None
    #: A failure group's signature (``events.error_group``), as the failure groups list it.
    group: str | None = None

    #: The names a filter takes in a query string, a JSON body or a replay job's record: the
    #: fields', except ``since`` and ``until`` for the received time.
    PARAMS: ClassVar[dict[str, str]] = {
        "provider": "provider",
        "type": "type",
        "status": "status",
        "since": "received_from",
        "until": "received_to",
        "event_id": "event_id",
        "resource_id": "resource_id",
        "error": "error",
        "q": "q",
        "group": "group",
    }

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> EventFilter:
        """A filter from request parameters or stored JSON (see :data:`PARAMS`); empty values
        are left out, and so are names it does not know (a page's other parameters).

        Raises:
            FilterError: an unknown status, a bad type pattern or an unreadable time.
        """
        values: dict[str, Any] = {}
        for param, name in cls.PARAMS.items():
            value = params.get(param)
            if value is None or value == "":
                continue
            if name in ("received_from", "received_to"):
                values[name] = value if isinstance(value, int | float) else parse_time(str(value))
            else:
                values[name] = str(value).strip()
        made = cls(**values)
        made.conditions()  # validates
        return made

    def to_params(self) -> dict[str, Any]:
        """The fields that are set, named as :meth:`from_params` reads them."""
        return {param: getattr(self, name) for param, name in self.PARAMS.items() if getattr(self, name) is not None}

    def conditions(self) -> list[ColumnElement[bool]]:
        """The WHERE terms; a pruned event (an id-only tombstone) never matches."""
        if self.status is not None and self.status not in STATUSES:
            raise FilterError(f"unknown status {self.status!r} (one of: {', '.join(STATUSES)})")
        terms: list[ColumnElement[bool]] = [events.c.status != PRUNED]
        # With a term that names a few events (an id, a resource, a group), their index is the
        # one to read. SQLite, which keeps no statistics unless ANALYZE ran, would as soon walk a
        # whole provider's or status's events on (provider, id) or (status, id) for the order:
        # written as ``column || ''``, those terms are filters no index serves.
        pinpoint = bool(self.event_id or self.resource_id or self.q or self.group)

        def broad(column: ColumnElement[str]) -> ColumnElement[str]:
            return column.concat("") if pinpoint else column

        if self.provider:
            terms.append(broad(events.c.provider) == self.provider)
        if self.type and (condition := type_condition(self.type)) is not None:
            terms.append(condition)
        if self.status:
            terms.append(broad(events.c.status) == self.status)
        if self.received_from is not None:
            terms.append(events.c.received_at >= self.received_from)
        if self.received_to is not None:
            terms.append(events.c.received_at < self.received_to)
        if self.event_id:
            terms.append(events.c.event_id == self.event_id)
        if self.resource_id:
            terms.append(events.c.resource_id == self.resource_id)
        if self.error:
            terms.append(events.c.last_error.icontains(self.error, autoescape=True))
        if self.q:
            terms.append(or_(events.c.event_id == self.q, events.c.resource_id == self.q))
        if self.group:
            terms.append(events.c.error_group == self.group)
        return terms


@dataclass(frozen=True, slots=True)
class EventPage:
    """One page of the event log, newest first; ``next_cursor`` is ``None`` on the last page."""

    rows: Sequence[Any]
    next_cursor: str | None


#: The most events one page holds.
MAX_PAGE = 500


def encode_cursor(pk: int) -> str:
    """An opaque cursor: the page after it starts below store id ``pk``."""
    return base64.urlsafe_b64encode(f"id:{pk}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The store id a cursor stands for.

    Raises:
        FilterError: it is not a cursor this module made.
    """
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, pk = text.partition(":")
        if kind == "id" and pk.isdigit():
            return int(pk)
    except (ValueError, UnicodeDecodeError):
        pass
    raise FilterError(f"{cursor!r} is not a cursor of this event list")


def list_events(
    engine: Engine, where: EventFilter | None = None, *, cursor: str | None = None, limit: int = 50
) -> EventPage:
    """A page of events matching ``where``, newest first, without bodies, with what each waits
    for (see :func:`_with_next`).

    Pages are cut on the store id (keyset), not an offset: events that arrive between two pages
    come before the first one and never shift what the next page holds, and a page costs the
    same however deep it is.
    """
    limit = max(1, min(limit, MAX_PAGE))
    query = _with_next(
        select(
            events.c.id,
            events.c.provider,
            events.c.event_id,
            events.c.event_type,
            events.c.resource_id,
            events.c.status,
            events.c.attempts,
            events.c.received_at,
            events.c.last_error,
        )
    ).where(*(where or EventFilter()).conditions())
    if cursor is not None:
        query = query.where(events.c.id < decode_cursor(cursor))
    query = query.order_by(events.c.id.desc()).limit(limit + 1)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return EventPage(rows, encode_cursor(rows[-1].id) if more else None)


def list_fields(row: Any) -> dict[str, Any]:
    """A listed event as the admin API's list and ``events list --json`` give it."""
    return {
        "id": row.id,
        "provider": row.provider,
        "event_id": row.event_id,
        "type": row.event_type,
        "resource_id": row.resource_id,
        "status": row.status,
        "attempts": row.attempts,
        "received_at": row.received_at,
        "last_error": row.last_error,
    }


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


def replay_values(now: float, *, force: bool, trigger: str) -> dict[str, Any]:
    """The new values of a finished event queued again: the sweep sends it at once, the tries
    of the new round count from here, and a forced replay starts a new round (every handler
    runs again). ``trigger`` says what its next attempt is run for (see ``models.TRIGGERS``)."""
    values: dict[str, Any] = {
        "status": QUEUED,
        "message_id": None,
        "sweep_after": now,
        "lease_expires_at": None,
        "attempts_before_round": events.c.attempts,
        "updated_at": now,
        "next_trigger": trigger,
    }
    if force:
        values["round"] = events.c.round + 1
    return values


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
    trigger: str = REPLAY,
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
            changed = conn.execute(
                update(events)
                .where(events.c.id == row.id, events.c.status == row.status)
                .values(**replay_values(now, force=force, trigger=trigger))
            ).rowcount
            if changed:
                result.queued.append(row)
            else:
                result.refused.append((name, f"{name} changed while it was being replayed; look again"))
    return result
