"""What a handler receives."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    """One verified, stored delivery, as handed to handler plugins.

    ``resource`` is the provider's current state of the resource when reconciliation is
    configured (else ``None``); ``previous`` is the state stored before this event;
    ``resource_deleted`` says the API answered that the resource is gone. ``superseded`` is set
    on an event older than the state already applied: only handlers registered with
    ``include_superseded=True`` see those.
    """

    provider: str
    id: str
    type: str
    resource_id: str | None
    sequence: int | None
    received_at: datetime
    payload: Any
    headers: dict[str, str] = field(default_factory=dict)
    resource: Any = None
    previous: Any = None
    resource_type: str | None = None
    resource_deleted: bool = False
    superseded: bool = False
    attempt: int = 1
