"""The garbage collector in a long-running process: the start-up heap frozen, young passes rarer.

The start-up heap (SQLAlchemy, SQLModel, pydantic, the providers, the handler modules: hundreds of
thousands of objects) never becomes garbage, yet every full collection walks it: ~100 ms with the
whole process stopped, which was the intake's p99 under load. What serving an event allocates
(the request's objects, a row, a round's records) is freed by reference counting: a young
collection every 700 allocations finds next to nothing and costs a share of the CPU under load.
"""

from __future__ import annotations

import gc

#: The youngest generation's threshold once the start-up heap is frozen.
GEN0_THRESHOLD = 10_000


def freeze_startup_heap() -> None:
    """Call once a process has built what it keeps for its life (after a fork, in the child)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, *gc.get_threshold()[1:])
