"""Group commit of accepted deliveries, then one batched hand-off to the broker.

Requests do not each pay a database round trip and a Redis round trip: they put their row on a
queue and await a future. One writer thread takes everything waiting, inserts it in one
transaction (``ON CONFLICT DO NOTHING`` on (provider, event id) is the dedupe), resolves the
futures, and only then enqueues the new events in one pipeline. A 2xx therefore always follows
a commit; an event whose enqueue is lost (crash, broker down) stays ``received`` in the store
and the workers' recovery sweep sends it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from .errors import StoreUnavailable
from .models import QUEUED, RECEIVED, events
from .queue import EventQueue

log = logging.getLogger("hookgate.intake")

ACCEPTED, DUPLICATE = "accepted", "duplicate"


@dataclass(slots=True)
class _Pending:
    row: dict[str, Any]
    future: asyncio.Future[str]
    loop: asyncio.AbstractEventLoop


@dataclass(slots=True)
class _Outcomes:
    """What one batch decided, handed back to the event loop in a single callback."""

    results: list[tuple[asyncio.Future[str], str | BaseException]] = field(default_factory=list)

    def deliver(self) -> None:
        for future, result in self.results:
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)


class Ingestor:
    """Writes deliveries in batches and hands new ones to the broker.

    Args:
        engine: the store.
        event_queue: the broker hand-off.
        max_batch: the most rows in one transaction.
    """

    def __init__(self, engine: Engine, event_queue: EventQueue, *, max_batch: int = 512) -> None:
        self.engine = engine
        self.event_queue = event_queue
        self.max_batch = max_batch
        #: False after an enqueue failed, until the broker answers again; the intake then says 503.
        self.broker_healthy = True
        self._inbox: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._sent: list[int] = []
        self._thread: threading.Thread | None = None
        dialect = engine.dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        self._insert = (
            insert(events)
            .on_conflict_do_nothing(index_elements=["provider", "event_id"])
            .returning(events.c.id, events.c.provider, events.c.event_id)
        )

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hookgate-ingest", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish what is waiting, then stop the writer thread."""
        if self._thread is not None:
            self._inbox.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    async def submit(self, row: dict[str, Any]) -> str:
        """Store ``row`` (unless its event id is known); returns ``accepted`` or ``duplicate``.

        Raises:
            StoreUnavailable: the batch holding this row was not committed.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        self._inbox.put(_Pending(row, future, loop))
        return await future

    # -- writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            try:
                first = self._inbox.get(timeout=0.5)
            except queue.Empty:
                self._idle()
                continue
            batch: list[_Pending] = []
            item: _Pending | None = first
            while True:
                if item is None:
                    stopping = True
                else:
                    batch.append(item)
                if len(batch) >= self.max_batch:
                    break
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write(batch)
        self._idle()

    def _idle(self) -> None:
        """Between batches: record what was enqueued, and see whether a failed broker is back."""
        if self._sent:
            try:
                self._commit([], self._sent)
                self._sent = []
            except SQLAlchemyError:
                log.warning("store unavailable while marking events queued", exc_info=True)
        if not self.broker_healthy:
            try:
                self.event_queue.ping()
            except Exception:
                return
            log.info("broker answers again")
            self.broker_healthy = True

    def _write(self, batch: list[_Pending]) -> None:
        first_of: dict[tuple[str, str], _Pending] = {}
        for pending in batch:
            first_of.setdefault((pending.row["provider"], pending.row["event_id"]), pending)
        outcomes: dict[asyncio.AbstractEventLoop, _Outcomes] = {}

        def answer(pending: _Pending, result: str | BaseException) -> None:
            outcomes.setdefault(pending.loop, _Outcomes()).results.append((pending.future, result))

        inserted: dict[tuple[str, str], int] = {}
        try:
            inserted = self._commit([p.row for p in first_of.values()], self._sent)
            self._sent = []
        except SQLAlchemyError as exc:
            log.warning("store unavailable: %s", type(exc).__name__)
            error = StoreUnavailable("the store did not commit")
            for pending in batch:
                answer(pending, error)
        else:
            for pending in batch:
                key = (pending.row["provider"], pending.row["event_id"])
                new = key in inserted and first_of[key] is pending
                answer(pending, ACCEPTED if new else DUPLICATE)
        for loop, result in outcomes.items():
            _call_soon(loop, result.deliver)
        if inserted:
            self._enqueue([(pk, first_of[key].row["message_id"]) for key, pk in inserted.items()])

    def _commit(self, rows: list[dict[str, Any]], sent: list[int]) -> dict[tuple[str, str], int]:
        with self.engine.begin() as conn:
            if sent:
                conn.execute(
                    update(events).where(events.c.id.in_(sent), events.c.status == RECEIVED).values(status=QUEUED)
                )
            if not rows:
                return {}
            result = conn.execute(self._insert, rows)
            return {(provider, event_id): pk for pk, provider, event_id in result}

    def _enqueue(self, items: list[tuple[int, str]]) -> None:
        try:
            self.event_queue.send(items)
        except Exception as exc:
            log.warning("broker unavailable, %d events left for the recovery sweep: %s", len(items), type(exc).__name__)
            self.broker_healthy = False
        else:
            self._sent.extend(pk for pk, _ in items)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed while the batch was being written
        loop.call_soon_threadsafe(callback)
