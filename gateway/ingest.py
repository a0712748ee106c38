"""Group commit of accepted deliveries, then one batched hand-off to the broker.

Requests do not each pay a database round trip and a Redis round trip: they put their row on a
queue and await a future. The committer thread takes everything waiting, inserts it in one
transaction (``ON CONFLICT DO NOTHING`` on (provider, event id) is the dedupe) and resolves the
futures. The relay thread then enqueues the new events, again everything waiting in one
pipeline; requests never wait for it, so commits and enqueues overlap. A 2xx therefore always
follows a commit; an event whose enqueue is lost (crash, broker down) stays ``received`` in the
store and the workers' recovery sweep sends it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, update
from sqlalchemy.exc import SQLAlchemyError

from .errors import StoreUnavailable
from .models import QUEUED, RECEIVED, events
from .queue import EventQueue

log = logging.getLogger("hookgate.intake")

ACCEPTED, DUPLICATE = "accepted", "duplicate"

#: The columns the intake writes; every other column starts at its default.
INSERT_COLUMNS = (
    "provider",
    "event_id",
    "event_type",
    "resource_id",
    "sequence",
    "body",
    "headers",
    "received_at",
    "status",
    "attempts",
    "message_id",
    "sweep_after",
    "updated_at",
)


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
        commit_timeout: how long a request waits for its commit before answering 503.
    """

    def __init__(
        self, engine: Engine, event_queue: EventQueue, *, max_batch: int = 512, commit_timeout: float = 8.0
    ) -> None:
        self.engine = engine
        self.commit_timeout = commit_timeout
        self.event_queue = event_queue
        self.max_batch = max_batch
        #: False after an enqueue failed, until the broker answers again; the intake then says 503.
        self.broker_healthy = True
        self._inbox: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue[list[tuple[int, str]] | None] = queue.SimpleQueue()
        #: Events the relay has enqueued; the committer marks them ``queued``.
        self._sent: list[int] = []
        self._sent_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._marker = "?" if engine.dialect.paramstyle == "qmark" else "%s"

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._run, name="hookgate-commit", daemon=True),
            threading.Thread(target=self._relay, name="hookgate-relay", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Commit and enqueue what is waiting, then stop both threads."""
        if self._threads:
            committer, relay = self._threads
            self._inbox.put(None)
            committer.join(timeout=30)
            self._outbox.put(None)
            relay.join(timeout=30)
            self._threads = []

    async def submit(self, row: dict[str, Any]) -> str:
        """Store ``row`` (unless its event id is known); returns ``accepted`` or ``duplicate``.

        Raises:
            StoreUnavailable: the batch holding this row was not committed, or not within
                ``commit_timeout`` seconds (senders give up after 5 to 30 s).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        self._inbox.put(_Pending(row, future, loop))
        try:
            return await asyncio.wait_for(future, self.commit_timeout)
        except TimeoutError:
            # The commit may still land; then the sender's retry is answered "duplicate".
            raise StoreUnavailable("the store did not commit in time") from None

    # -- committer thread -----------------------------------------------------------------

    def _run(self) -> None:
        self._consume(self._inbox, self._write, self._idle, limit=self.max_batch)
        self._idle()

    @staticmethod
    def _consume(
        source: queue.SimpleQueue[Any],
        handle: Callable[[list[Any]], None],
        idle: Callable[[], None],
        limit: int = 1 << 30,
    ) -> None:
        """Hand everything waiting on ``source`` (up to ``limit`` items) to ``handle`` at once.

        Runs until a ``None`` arrives; calls ``idle`` whenever nothing came for half a second.
        """
        stopping = False
        while not stopping:
            try:
                item = source.get(timeout=0.5)
            except queue.Empty:
                idle()
                continue
            taken: list[Any] = []
            while True:
                if item is None:
                    stopping = True
                    break
                taken.append(item)
                if len(taken) >= limit:
                    break
                try:
                    item = source.get_nowait()
                except queue.Empty:
                    break
            if taken:
                try:
                    handle(taken)
                except Exception:
                    log.exception("unexpected error in the intake's writer; it carries on")

    def _idle(self) -> None:
        """Between batches: record what the relay has enqueued."""
        try:
            self._commit([])
        except Exception:
            log.warning("store unavailable while marking events queued", exc_info=True)

    def _take_sent(self) -> list[int]:
        with self._sent_lock:
            sent, self._sent = self._sent, []
        return sent

    def _write(self, batch: list[_Pending]) -> None:
        first_of: dict[tuple[str, str], _Pending] = {}
        for pending in batch:
            first_of.setdefault((pending.row["provider"], pending.row["event_id"]), pending)
        outcomes: dict[asyncio.AbstractEventLoop, _Outcomes] = {}

        def answer(pending: _Pending, result: str | BaseException) -> None:
            outcomes.setdefault(pending.loop, _Outcomes()).results.append((pending.future, result))

        inserted: dict[tuple[str, str], int] = {}
        try:
            inserted = self._commit([p.row for p in first_of.values()])
        except Exception as exc:
            # SQLAlchemy's errors are the expected ones; anything else must not leave requests waiting.
            logger = log.warning if isinstance(exc, SQLAlchemyError) else log.exception
            logger("store unavailable: %s", type(exc).__name__)
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
        ready = [(pk, first_of[key].row["message_id"]) for key, pk in inserted.items()]
        ready = [(pk, token) for pk, token in ready if token is not None]  # held ones go later
        if ready:
            self._outbox.put(ready)

    def _commit(self, rows: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
        sent = self._take_sent()
        if not rows and not sent:
            return {}
        try:
            return self._insert_rows(rows, sent)
        except Exception:
            with self._sent_lock:  # mark them on a later commit
                self._sent[:0] = sent
            raise

    def _insert_rows(self, rows: list[dict[str, Any]], sent: list[int]) -> dict[tuple[str, str], int]:
        with self.engine.begin() as conn:
            if sent:
                conn.execute(
                    update(events).where(events.c.id.in_(sent), events.c.status == RECEIVED).values(status=QUEUED)
                )
            if not rows:
                return {}
            params = [row[column] for row in rows for column in INSERT_COLUMNS]
            result = conn.exec_driver_sql(_insert_sql(len(rows), self._marker), tuple(params))
            return {(provider, event_id): pk for pk, provider, event_id in result}

    # -- relay thread ---------------------------------------------------------------------

    def _relay(self) -> None:
        self._consume(self._outbox, lambda batches: self._enqueue([i for b in batches for i in b]), self._probe_broker)

    def _enqueue(self, items: list[tuple[int, str]]) -> None:
        try:
            self.event_queue.send(items)
        except Exception as exc:
            log.warning("broker unavailable, %d events left for the recovery sweep: %s", len(items), type(exc).__name__)
            self.broker_healthy = False
        else:
            with self._sent_lock:
                self._sent.extend(pk for pk, _ in items)

    def _probe_broker(self) -> None:
        """While the broker is marked down, see whether it answers again."""
        if self.broker_healthy:
            return
        try:
            self.event_queue.ping()
        except Exception:
            return
        log.info("broker answers again")
        self.broker_healthy = True


@functools.cache
def _insert_sql(count: int, marker: str) -> str:
    """One multi-row INSERT that skips known (provider, event id) pairs and returns the new rows.

    Built as text and handed to the driver in one call: under load, per-row parameter handling
    in Python competes with the event loop for the GIL and was most of the writer's time.
    """
    row = "(" + ", ".join([marker] * len(INSERT_COLUMNS)) + ")"
    # Only constant identifiers and placeholders are interpolated; values travel as parameters.
    columns, rows = ", ".join(INSERT_COLUMNS), ", ".join([row] * count)
    return (
        f"INSERT INTO {events.name} ({columns}) VALUES {rows} "  # noqa: S608
        "ON CONFLICT (provider, event_id) DO NOTHING RETURNING id, provider, event_id"
    )


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed while the batch was being written
        loop.call_soon_threadsafe(callback)
