"""The intake's hand-off of committed events to the broker, and what the writer records of it.

A 2xx follows a commit, never an enqueue: the relay enqueues events that are already stored. An
enqueue that fails leaves its events ``received``, for the workers' recovery sweep to send, and
marks the broker down: the intake then answers 503 until a probe finds the broker answering
again.

What ``queued`` costs depends on the broker. RabbitMQ cannot be asked whether it holds a message,
so there ``queued`` means RabbitMQ confirmed it, and the recovery sweep relies on that: the relay
remembers the ids it sent, and the store writer marks them ``queued`` with its next batch (or its
next idle pass). Redis can be asked, and the sweep asks it for ``received`` and ``queued`` events
alike, so there the intake writes the events it is about to send ``queued`` in the same INSERT
(:func:`written_queued`), and the writer sets those whose enqueue failed back to ``received``.
On PostgreSQL the mark was an UPDATE of every new row, with all its index entries (the status is
in several indexes): as much of the server's CPU as the INSERT (bench/README.md, Intake).

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
from typing import TYPE_CHECKING, Any

from .batch_insert import Key
from .models import QUEUED
from .queue import EventQueue

if TYPE_CHECKING:
    from .store_writer import BatchWriter

log = logging.getLogger("hookgate.intake")

#: A work item for the broker: an event's id and its message's token.
Item = tuple[int, str]


def relayable(rows: Iterable[Mapping[str, Any]], inserted: Mapping[Key, int]) -> list[Item]:
    """The new events among ``rows`` that go to the broker at once: those with a token (a row
    held for its ordering window has none; the workers' sweep sends it when the window ends)."""
    tokens = {(row["provider"], row["event_id"]): row["message_id"] for row in rows}
    return [(pk, token) for key, pk in inserted.items() if (token := tokens[key]) is not None]


class Relay:
    """Sends work items to the broker and keeps what the writer must record of it: the ids sent
    (RabbitMQ), or the items whose enqueue failed (Redis), until the writer takes them.

    Safe to share between a thread that sends and one that takes (:class:`gateway.ingest.Ingestor`).
    """

    def __init__(self, event_queue: EventQueue) -> None:
        self.event_queue = event_queue
        #: Whether events are written ``queued`` before they are sent (see the module's text).
        self.writes_queued = event_queue.tracks_messages
        #: False after an enqueue failed, until :meth:`probe` finds the broker answering again.
        self.healthy = True
        self._sent: list[int] = []
        self._unsent: list[Item] = []
        self._lock = threading.Lock()

    def written_queued(self, rows: Iterable[dict[str, Any]]) -> None:
        """With Redis, the rows about to be sent at once are written ``queued``."""
        if self.writes_queued:
            for row in rows:
                if row["message_id"] is not None:
                    row["status"] = QUEUED

    def send(self, items: list[Item]) -> None:
        """Enqueue ``items``; on failure leave them to the recovery sweep and mark the broker down."""
        if not items:
            return
        try:
            self.event_queue.send(items)
        except Exception as exc:
            self.healthy = False
            self.not_sent(items, type(exc).__name__)
        else:
            if not self.writes_queued:
                with self._lock:
                    self._sent.extend(pk for pk, _ in items)

    def not_sent(self, items: list[Item], why: str) -> None:
        """``items`` were not enqueued: they are left to the recovery sweep, and those written
        ``queued`` are set back to ``received`` by the writer's next batch. (An enqueue that timed
        out may still have reached Redis: such an event is then ``received`` with its message
        waiting, and runs all the same.)"""
        log.warning("broker unavailable, %d events left for the recovery sweep: %s", len(items), why)
        if self.writes_queued:
            with self._lock:
                self._unsent.extend(items)

    def set_back_unsent(self, writer: BatchWriter) -> None:
        """Have ``writer`` set the events written ``queued`` whose enqueue failed back to
        ``received``. Only the label is at stake (the sweep asks Redis about both): if the
        store is unavailable, they keep it."""
        if not self._unsent:  # every batch asks; nearly always nothing
            return
        with self._lock:
            unsent, self._unsent = self._unsent, []
        try:
            writer.set_back(unsent)
        except Exception as exc:
            log.warning("%d events whose enqueue failed stay queued: %s", len(unsent), type(exc).__name__)

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
