"""Per-resource order: which of a resource's pending events may be applied now, and in what order.

Pure functions over rows the store gives (see :mod:`workers.resources`). One resource's events
are applied by one worker at a time: the worker that takes the resource's lease (see
:mod:`workers.leases`) applies every pending event of that resource in sequence order, then
lets go. A worker whose event belongs to a resource that
another worker holds only pushes the event's recovery check a little later and returns: the
holder normally applies it, and if not, the sweep sends it again.

The order is ``(sequence, arrival)``. The applied sequence only moves forward, and an event
older than it is ``superseded``. To let stragglers sort first, an event is not applied before it
is ``window`` seconds old (``ordering.window_ms``), and the pending events are applied as a
prefix: the first one that is not due (too fresh, waiting for a retry, or still being processed
by a presumed-dead worker) stops the pass, because everything behind it must wait for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.models import PROCESSING

from .resources import StoredResource

_NO_SEQUENCE = -(2**63)


def order_key(row: Any) -> tuple[int, int]:
    """Sequence first, arrival (the primary key) breaking ties; no sequence sorts first.

    :meth:`workers.resources.ResourceStore.pending` orders the same way in SQL."""
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
