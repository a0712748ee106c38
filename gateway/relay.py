"""The intake's hand-off of committed events to the broker, and what it sent for the writer to mark.

A 2xx follows a commit, never an enqueue: the relay enqueues events that are already stored, and
remembers their ids so that the store writer marks them ``queued`` with its next batch (or its
next idle pass). An enqueue that fails leaves its events ``received``, for the workers' recovery
sweep to send, and marks the broker down: the intake then answers 503 until a probe finds the
broker answering again.

Where it runs depends on who writes: beside a committer thread (:class:`gateway.ingest.Ingestor`),
a thread of its own takes each batch's new events; under ``hookgate serve`` the writer child
(:mod:`gateway.writer_process`) enqueues a batch's new events itself, once it has answered the
batch, so that no thread of the intake's process spends its CPU, or takes the event loop's GIL,
on the broker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from .batch_insert import Key
from .queue import EventQueue

log = logging.getLogger("hookgate.intake")

#: A work item for the broker: an event's id and its message's token.
Item = tuple[int, str]


def relayable(rows: Iterable[Mapping[str, Any]], inserted: Mapping[Key, int]) -> list[Item]:
    """The new events among ``rows`` that go to the broker at once: those with a token (a row
    held for its ordering window has none; the workers' sweep sends it when the window ends)."""
    tokens = {(row["provider"], row["event_id"]): row["message_id"] for row in rows}
    return [(pk, token) for key, pk in inserted.items() if (token := tokens[key]) is not None]


class Relay:
    """Sends work items to the broker and keeps the ids it sent until the writer takes them.

    Safe to share between a thread that sends and one that takes (:class:`gateway.ingest.Ingestor`).
    """

    def __init__(self, event_queue: EventQueue) -> None:
        self.event_queue = event_queue
        #: False after an enqueue failed, until :meth:`probe` finds the broker answering again.
        self.healthy = True
        self._sent: list[int] = []
        self._lock = threading.Lock()

    def send(self, items: list[Item]) -> None:
        """Enqueue ``items``; on failure leave them to the recovery sweep and mark the broker down."""
        if not items:
            return
        try:
            self.event_queue.send(items)
        except Exception as exc:
            log.warning("broker unavailable, %d events left for the recovery sweep: %s", len(items), type(exc).__name__)
            self.healthy = False
        else:
            with self._lock:
                self._sent.extend(pk for pk, _ in items)

    def probe(self) -> None:
        """While the broker is marked down, see whether it answers again."""
        if self.healthy:
            return
        try:
            self.event_queue.ping()
        except Exception:
            return
        log.info("broker answers again")
        self.healthy = True

    def take_sent(self) -> list[int]:
        """The ids sent since the last call, for the writer to mark ``queued``."""
        with self._lock:
            sent, self._sent = self._sent, []
        return sent

    def put_back(self, sent: list[int]) -> None:
        """Ids taken for a write that failed: a later one marks them."""
        if sent:
            with self._lock:
                self._sent[:0] = sent
