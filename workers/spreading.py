"""A broker message's events over a process's threads: lanes, and handing lanes to new messages.

One message carries up to ``MESSAGE_EVENTS`` events (see :mod:`gateway.queue`), split into
*lanes*: each resource's events (one pass applies them) and each event without a resource. A
thread runs a message's lanes one after another. That is what makes a burst cheap, one fetch,
acknowledgement and query for many events; it must not make slow handlers delay the lanes
behind them for long while threads are free. So a message's lanes not started yet go to new
messages, one lane each, with new tokens (:meth:`workers.lifecycle.EventLifecycle.retoken`),
for any thread of any worker to take. A watchdog thread (:class:`Spreader`) takes the lanes
still waiting from the running thread when

* the lane running has taken longer than :data:`SPREAD_AFTER_SECONDS`, or
* a thread of this process is idle and the message has taken longer than that, however quick
  each of its lanes.

And the thread hands them over itself as the message arrives when a thread of this process is
idle and the lanes behind the first would wait longer than :data:`SPREAD_AFTER_SECONDS` in all,
judged by how long this process's lanes take lately: the watchdog would hand them over anyway.

Handing lanes over costs a write transaction and a broker message for each lane, about what a
quick lane costs to run, so a message of a few quick lanes (the intake's small batches at a steady
rate) runs whole; under a burst every thread is busy and messages stay whole. A lane is taken
either by its thread or by the watchdog, under the message's lock, never both; and the events
of a lane handed over keep the old token only until the retoken commits, so the old message
claims none of them afterwards.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("hookgate.worker")

#: A lane running longer than this sends the message's waiting lanes to new messages.
SPREAD_AFTER_SECONDS = 0.1
#: The weight of the latest lane in a process's typical lane time (an exponential average).
LANE_WEIGHT = 0.2


def lanes_of(rows: list[Any]) -> list[list[Any]]:
    """A message's events as lanes: each resource's events together (one pass runs them), each
    event without a resource alone; in the order they came."""
    lanes: dict[Any, list[Any]] = {}
    for row in rows:
        key = (row.provider, row.resource_id) if row.resource_id is not None else row.id
        lanes.setdefault(key, []).append(row)
    return list(lanes.values())


class Lanes:
    """The lanes of one message, taken one at a time by its thread or all at once by the watchdog."""

    def __init__(self, lanes: list[list[Any]], token: str) -> None:
        self.token = token
        self._waiting = deque(lanes)
        self._lock = threading.Lock()
        #: When the message's first lane, and the lane running, began (monotonic).
        self.started = self.lane_started = time.monotonic()

    def next(self) -> list[Any] | None:
        with self._lock:
            if not self._waiting:
                return None
            self.lane_started = time.monotonic()
            return self._waiting.popleft()

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def take_rest(self) -> list[list[Any]]:
        with self._lock:
            rest = list(self._waiting)
            self._waiting.clear()
            return rest

    def overdue(self, now: float, idle: bool) -> bool:
        """Whether the lanes still waiting should go to new messages now (see the module)."""
        if not self._waiting:
            return False
        return now - self.lane_started > SPREAD_AFTER_SECONDS or (idle and now - self.started > SPREAD_AFTER_SECONDS)


class Spreader:
    """Counts the process's busy threads and runs the watchdog over the messages in progress."""

    def __init__(self, threads: int, hand_off: Callable[[list[list[Any]], str], None] | None) -> None:
        self.threads = threads
        self.busy = 0
        self.hand_off = hand_off
        self._running: set[Lanes] = set()
        self._lock = threading.Lock()
        self._watchdog: threading.Thread | None = None
        #: How long a lane of this process typically takes (seconds); slow until measured.
        self.lane_seconds = SPREAD_AFTER_SECONDS

    def idle(self) -> bool:
        """Whether lanes can be handed over and a thread of this process is free right now."""
        return self.hand_off is not None and self.busy < self.threads

    def worth_spreading(self, waiting: int) -> bool:
        """Whether ``waiting`` lanes behind a running one should go to idle threads right now."""
        return self.idle() and waiting * self.lane_seconds > SPREAD_AFTER_SECONDS

    def lane_ran(self, seconds: float) -> None:
        """A lane took ``seconds``: it counts toward :attr:`lane_seconds`."""
        self.lane_seconds += LANE_WEIGHT * (seconds - self.lane_seconds)

    @contextmanager
    def running(self) -> Iterator[None]:
        """A thread runs a message in this block."""
        with self._lock:
            self.busy += 1
        try:
            yield
        finally:
            with self._lock:
                self.busy -= 1

    @contextmanager
    def watching(self, lanes: Lanes) -> Iterator[Lanes]:
        """Let the watchdog hand these lanes over while the block runs them (if they have
        somewhere to go)."""
        if self.hand_off is None:
            yield lanes
            return
        with self._lock:
            self._running.add(lanes)
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, name="hookgate-spread", daemon=True)
                self._watchdog.start()
        try:
            yield lanes
        finally:
            with self._lock:
                self._running.discard(lanes)

    def _watch(self) -> None:
        while True:
            time.sleep(SPREAD_AFTER_SECONDS / 2)
            now, idle = time.monotonic(), self.idle()
            with self._lock:
                overdue = [lanes for lanes in self._running if lanes.overdue(now, idle)]
            for lanes in overdue:
                if self.hand_off is not None and (rest := lanes.take_rest()):
                    try:
                        self.hand_off(rest, lanes.token)
                    except Exception:  # their events keep the old token: the sweep sends them
                        log.warning("%d lanes could not be handed to new messages", len(rest), exc_info=True)
