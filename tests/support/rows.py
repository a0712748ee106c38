"""Event rows written straight into the store, as the intake, a worker or the sweep leaves them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert

from gateway.models import QUEUED, RECEIVED, events


def insert_waiting(
    engine: Any,
    event_id: str,
    message_id: str | None,
    now: float,
    *,
    resource: str | None = None,
    due: bool = True,
    attempts: int = 0,
    status: str | None = None,
) -> int:
    """A waiting event as the intake, a worker or the sweep leaves it; ``due`` for the sweep now.

    Its status is ``queued`` when it has a message (the broker took it), else ``received``.
    """
    with engine.begin() as conn:
        return conn.execute(
            insert(events)
            .values(
                provider="acme",
                event_id=event_id,
                event_type="thing.updated",
                resource_id=resource,
                body=b"{}",
                headers="{}",
                received_at=now - 10,
                status=status or (QUEUED if message_id else RECEIVED),
                attempts=attempts,
                message_id=message_id,
                sweep_after=now - 1 if due else now + 3600,
                updated_at=now - 10,
            )
            .returning(events.c.id)
        ).scalar_one()
