"""Pausing a provider: the intake keeps storing its events, the workers leave them waiting.

The state is a row per provider in ``hookgate_provider_states``, so every process sees it. A
worker reads the paused set at most once a second (:class:`PausedProviders`) to park events
without trying to claim them; the claim itself is fenced by the store's state (see
``workers.leases.EventLeases.claim``), so no try starts once ``pause`` has returned.

A waiting event of a paused provider that reaches a worker (its broker message) or the recovery
sweep (a held event or a retry coming due, a lost message) is *parked*: no message, no
``sweep_after``, so the sweep passes over it and its broker message, if any, claims nothing. No
try is used up. Parking is fenced by the provider's row (:func:`park`): it happens only while
the provider is still paused, so a worker whose cached set is a second old cannot park an event
after the resume that should have released it. (An event whose worker died mid-try is sent
again by the sweep as usual, and parked by the worker that receives it.)

:func:`resume` releases the parked events in the transaction that marks the provider active:
they are due at once, for the trigger ``resume``, and the sweep sends them. A resource pass then
applies them in the resource's order, as it does any backlog.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence

from sqlalchemy import Connection, Engine, exists, insert, select, update
from sqlalchemy.exc import IntegrityError

from .models import QUEUED, RECEIVED, RESUME, events, provider_states

ACTIVE, PAUSED = "active", "paused"

#: How long a worker trusts the paused set it read: a pause or a resume reaches it within this.
CACHE_SECONDS = 1.0


def _write_state(conn: Connection, provider: str, paused: bool, now: float) -> bool:
    """Set the provider's state; whether it changed. The row is locked until the transaction
    ends, so that no park of this provider's events interleaves with it (see :func:`park`)."""
    changed = conn.execute(
        update(provider_states)
        .where(provider_states.c.provider == provider, provider_states.c.paused != paused)
        .values(paused=paused, changed_at=now)
    ).rowcount
    if changed:
        return True
    known = conn.execute(select(provider_states.c.provider).where(provider_states.c.provider == provider)).first()
    if known is not None or not paused:  # already in that state; no row means active
        return False
    try:
        with conn.begin_nested():
            conn.execute(insert(provider_states).values(provider=provider, paused=True, changed_at=now))
    except IntegrityError:  # paused by another process meanwhile
        return False
    return True


def pause(engine: Engine, provider: str) -> bool:
    """Pause ``provider``; ``True`` if it was active."""
    with engine.begin() as conn:
        return _write_state(conn, provider, True, time.time())


def resume(engine: Engine, provider: str) -> bool:
    """Resume ``provider`` and make its parked events due now; ``True`` if it was paused."""
    now = time.time()
    with engine.begin() as conn:
        if not _write_state(conn, provider, False, now):
            return False
        conn.execute(
            update(events)
            .where(
                events.c.provider == provider,
                events.c.status.in_((RECEIVED, QUEUED)),
                events.c.message_id.is_(None),
                events.c.sweep_after.is_(None),
            )
            .values(sweep_after=now, next_trigger=RESUME, updated_at=now)
        )
    return True


def paused_providers(engine: Engine) -> set[str]:
    """The providers paused now."""
    with engine.connect() as conn:
        return set(conn.scalars(select(provider_states.c.provider).where(provider_states.c.paused.is_(True))))


def states(engine: Engine, providers: Iterable[str]) -> dict[str, str]:
    """``active`` or ``paused`` for each of ``providers``, in their order."""
    paused = paused_providers(engine)
    return {name: PAUSED if name in paused else ACTIVE for name in providers}


def park(engine: Engine, provider: str, waiting: Sequence[tuple[int, str | None]]) -> int:
    """Park these waiting events of ``provider`` (``(pk, message token)`` as last read) while it
    is still paused; how many were parked.

    The provider's row is read ``FOR SHARE`` (PostgreSQL) in the transaction: a concurrent
    :func:`resume` either commits first, and nothing is parked, or waits for this transaction
    and then releases what it parked. On SQLite the single UPDATE, whose condition reads the
    row, runs under the store's one write lock, which gives the same guarantee.
    """
    if not waiting:
        return 0
    still_paused = exists().where(provider_states.c.provider == provider, provider_states.c.paused.is_(True))
    with engine.begin() as conn:
        locked = conn.execute(
            select(provider_states.c.provider)
            .where(provider_states.c.provider == provider, provider_states.c.paused.is_(True))
            .with_for_update(read=True)
        ).first()
        if locked is None:
            return 0
        parked = 0
        for pk, message in waiting:
            same_message = events.c.message_id.is_(None) if message is None else events.c.message_id == message
            parked += conn.execute(
                update(events)
                .where(events.c.id == pk, events.c.status.in_((RECEIVED, QUEUED)), same_message, still_paused)
                .values(message_id=None, sweep_after=None, lease_expires_at=None)
            ).rowcount
        return parked


class PausedProviders:
    """The paused set, read from the store at most once per :data:`CACHE_SECONDS`; shared by
    a worker process's threads and its recovery sweep."""

    def __init__(self, engine: Engine, max_age: float = CACHE_SECONDS) -> None:
        self.engine = engine
        self.max_age = max_age
        self._lock = threading.Lock()
        self._paused: frozenset[str] = frozenset()
        self._read_at = float("-inf")

    def get(self) -> frozenset[str]:
        with self._lock:
            if time.monotonic() - self._read_at >= self.max_age:
                self._paused = frozenset(paused_providers(self.engine))
                self._read_at = time.monotonic()
            return self._paused

    def __contains__(self, provider: object) -> bool:
        return provider in self.get()
