"""Group commit of accepted deliveries, then one batched hand-off to the broker.

Requests do not each pay a database round trip and a Redis round trip: they put their row on a
queue and await a future. The committer thread takes everything waiting, has it inserted in one
transaction (``ON CONFLICT DO NOTHING`` on (provider, event id) is the dedupe) and resolves the
futures. The writing itself is :mod:`gateway.store_writer`'s, on the committer thread or, under
``hookgate serve``, in a process of its own (:mod:`gateway.writer_process`). The relay thread
(:mod:`gateway.relay`) then enqueues the new events, again everything waiting in one pipeline;
requests never wait for it, so commits and enqueues overlap. (Under ``serve`` the writer child
enqueues them itself once it has answered a batch, and the next batch waits for that:
:mod:`gateway.child_commit`.) A 2xx therefore always follows a commit; an
event whose enqueue is lost (crash, broker down) is sent again by the workers' recovery sweep
(it stays ``received``, or, with Redis, where events sent at once are written ``queued``, it is
set back to ``received`` when the enqueue fails, and stays ``queued`` after a crash: the sweep
asks Redis about both).

When deliveries follow each other closely but not all at once (a steady few hundred a second),
the committer waits a moment for more before it writes a small batch, so that a commit and a
broker message serve a few (see :mod:`gateway.linger`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from . import tracing
from .batch_insert import Key
from .checkpoints import Checkpointer
from .errors import InboxFull, StoreUnavailable
from .linger import Linger
from .metrics import IntakeMetrics
from .queue import EventQueue, share_tokens
from .relay import Item, Relay, relayable
from .store_writer import BatchWriter, log_failure, refused_for_content

log = logging.getLogger("hookgate.intake")

ACCEPTED, DUPLICATE = "accepted", "duplicate"


@dataclass(slots=True)
class _Pending:
    row: dict[str, Any]
    future: asyncio.Future[str]
    loop: asyncio.AbstractEventLoop
    size: int
    #: The loop's time when it was handed over (for a committer that expires waits itself).
    since: float = 0.0


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
        idle_after: how long the committer waits for requests before it marks what the relay
            sent ``queued`` and gives its connection back (see
            :meth:`gateway.store_writer.BatchWriter._connection`).
        linger: when the committer waits for more rows before it writes a small batch (default:
            :class:`gateway.linger.Linger`'s; ``Linger(seconds=0)``: never).
        writer: writes the batches on the committer thread (default: a
            :class:`~gateway.store_writer.BatchWriter` of ``engine``). :class:`gateway.child_commit.
            ChildIngestor` has them written in a process of its own instead.
        max_waiting_rows, max_waiting_bytes: the most rows (and body bytes) waiting to be
            written. A request answered 503 after ``commit_timeout`` leaves its row waiting (the
            commit may still land), so while the store stalls the inbox would grow with every
            retry; past either bound a new row is refused at once instead.
    """

    #: Whether the committer answers waits past ``commit_timeout`` itself (else each request
    #: arms a timer of its own).
    expires_waits = False

    def __init__(
        self,
        engine: Engine,
        event_queue: EventQueue,
        *,
        max_batch: int = 512,
        commit_timeout: float = 8.0,
        max_waiting_rows: int = 10_000,
        max_waiting_bytes: int = 64 * 1024 * 1024,
        metrics: IntakeMetrics | None = None,
        idle_after: float = 0.5,
        linger: Linger | None = None,
        writer: BatchWriter | None = None,
    ) -> None:
        self.engine = engine
        self.metrics = metrics or IntakeMetrics(CollectorRegistry())
        self.max_waiting_rows, self.max_waiting_bytes = max_waiting_rows, max_waiting_bytes
        #: Rows put on the inbox and not yet taken by the committer, and their body bytes.
        self.waiting_rows = self.waiting_bytes = 0
        self._waiting_lock = threading.Lock()
        self.commit_timeout = commit_timeout
        self.event_queue = event_queue
        self.max_batch = max_batch
        self.idle_after = idle_after
        self.linger = linger or Linger()
        self._inbox: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue[list[Item] | None] = queue.SimpleQueue()
        #: Enqueues new events and keeps what the committer records of that. Under a
        #: :class:`~gateway.child_commit.ChildIngestor` the child enqueues, and this one only
        #: decides which rows are written ``queued`` and keeps what the child last said of the
        #: broker.
        self.relay = Relay(event_queue)
        self._committer: threading.Thread | None = None
        self._relay_thread: threading.Thread | None = None
        #: Writes each batch: on the committer thread, or in a process of its own (``writer``).
        self.writer = writer or BatchWriter(engine)
        #: SQLite: the WAL is copied by a thread of its own, never in a commit requests wait for.
        self.checkpointer = Checkpointer(engine) if engine.dialect.name == "sqlite" else None

    @property
    def sync_failed(self) -> str | None:
        """Why a sync of SQLite's WAL failed, if one did: from then on this process stores and
        acknowledges nothing (see :meth:`gateway.store_writer.BatchWriter._sync_wal`)."""
        return self.writer.sync_failed

    @property
    def broker_healthy(self) -> bool:
        """False after an enqueue failed, until the broker answers again; the intake then says 503."""
        return self.relay.healthy

    def start(self) -> None:
        self._committer = threading.Thread(target=self._run, name="hookgate-commit", daemon=True)
        self._committer.start()
        self._start_relay()
        self._start_checkpointer()

    def stop(self) -> None:
        """Commit and enqueue what is waiting, then stop both threads: the committer, the relay
        once it has enqueued what the last batch left, and the writer once what the relay
        recorded of that (RabbitMQ's ``queued`` marks, failed enqueues set back) is committed."""
        committer = self._committer
        if committer is not None:
            self._inbox.put(None)
            committer.join(timeout=30)
            self._committer = None
        self._stop_relay()
        if committer is not None:
            try:
                self._commit([])
            except Exception:  # the recovery sweep finds them: they are only left as they were written
                log.warning("store unavailable while recording the relay's last sends", exc_info=True)
            self.writer.stop()
        self._stop_checkpointer()

    def _start_relay(self) -> None:
        self._relay_thread = threading.Thread(target=self._relay, name="hookgate-relay", daemon=True)
        self._relay_thread.start()

    def _stop_relay(self) -> None:
        """Enqueue what the committer left, then stop the relay."""
        if self._relay_thread is not None:
            self._outbox.put(None)
            self._relay_thread.join(timeout=30)
            self._relay_thread = None

    def _start_checkpointer(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.start()

    def _stop_checkpointer(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.stop()

    def inbox_full(self, adding: int = 0) -> bool:
        """Whether a row of ``adding`` body bytes would pass either bound of the inbox."""
        return self.waiting_rows >= self.max_waiting_rows or self.waiting_bytes + adding > self.max_waiting_bytes

    async def submit(self, row: dict[str, Any]) -> str:
        """Store ``row`` (unless its event id is known); returns ``accepted`` or ``duplicate``.

        Raises:
            InboxFull: too many rows or bytes already wait to be written.
            StoreUnavailable: the batch holding this row was not committed, or not within
                ``commit_timeout`` seconds (senders give up after 5 to 30 s).
        """
        if self.sync_failed is not None:
            raise StoreUnavailable(self.sync_failed)
        size = len(row["body"])
        with self._waiting_lock:
            if self.inbox_full(size):
                raise InboxFull("too many deliveries wait for the store")
            self.waiting_rows += 1
            self.waiting_bytes += size
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        self._hand_over(_Pending(row, future, loop, size, loop.time()))
        if self.expires_waits:
            return await future
        # One timer on the loop rather than ``asyncio.wait_for``, whose own future and callbacks
        # per request were a measurable share of the intake's CPU (bench/README.md, Intake).
        timer = loop.call_later(self.commit_timeout, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    def _hand_over(self, pending: _Pending) -> None:
        """Give a delivery to the committer."""
        self._inbox.put(pending)

    async def open(self) -> None:
        """Start, from the event loop that will submit (the application's lifespan)."""
        self.start()

    async def close(self) -> None:
        """Stop, from the event loop (the application's lifespan): see :meth:`stop`."""
        await asyncio.to_thread(self.stop)

    # -- committer thread -----------------------------------------------------------------

    def _run(self) -> None:
        self._consume(
            self._inbox, self._write, self._idle, limit=self.max_batch, idle_after=self.idle_after, linger=self.linger
        )
        self._idle()

    @staticmethod
    def _consume(
        source: queue.SimpleQueue[Any],
        handle: Callable[[list[Any]], None],
        idle: Callable[[], None],
        limit: int = 1 << 30,
        idle_after: float = 0.5,
        linger: Linger | None = None,
    ) -> None:
        """Hand everything waiting on ``source`` (up to ``limit`` items) to ``handle`` at once.

        Runs until a ``None`` arrives; calls ``idle`` whenever nothing came for ``idle_after``
        seconds. With a ``linger``, a small batch may first wait for more (see :mod:`gateway.linger`).
        """
        stopping = False
        handled_at, last_batch = -math.inf, 0
        while not stopping:
            try:
                item = source.get(timeout=idle_after)
            except queue.Empty:
                idle()
                continue
            if item is None:
                break
            since_last = time.monotonic() - handled_at
            taken: list[Any] = [item]
            stopping = _take_more(source, taken, limit)
            if (
                linger is not None
                and not stopping
                and (wait := linger.wait_for(since_last, len(taken), last_batch=last_batch))
            ):
                # A sleep, not a wait for each row: every row that woke the committer would take
                # the GIL from the event loop, which cost more than the batch saved.
                time.sleep(wait)
                before = len(taken)
                stopping = _take_more(source, taken, limit)
                linger.gained(len(taken) - before)
            try:
                handle(taken)
            except Exception:
                log.exception("unexpected error in the intake's writer; it carries on")
            handled_at, last_batch = time.monotonic(), len(taken)

    def _idle(self) -> None:
        """Between batches: record what the relay has enqueued."""
        try:
            self._commit([])
        except Exception:
            log.warning("store unavailable while marking events queued", exc_info=True)
        try:
            self.writer.release()
        except Exception:
            log.warning("the store writer could not give its connection back", exc_info=True)

    def _write(self, batch: list[_Pending]) -> None:
        first_of = self._taken(batch)
        started = time.perf_counter()
        traced = tracing.committing([p.row for p in batch], self.engine.dialect.name) if tracing.on else tracing.NOTHING
        with traced as note:
            inserted, refused = self._commit_batch(list(first_of.values()))
            note(inserted=len(inserted), refused=len(refused))
        self.metrics.committed(len(first_of), time.perf_counter() - started)
        outcomes: dict[asyncio.AbstractEventLoop, _Outcomes] = {}
        for pending, result in _results(batch, first_of, inserted, refused):
            outcomes.setdefault(pending.loop, _Outcomes()).results.append((pending.future, result))
        for loop, outcome in outcomes.items():
            _call_soon(loop, outcome.deliver)
        self._relay_new(first_of, inserted)

    def _taken(self, batch: list[_Pending]) -> dict[Key, _Pending]:
        """``batch`` leaves the inbox: the first delivery of each event in it, by key, whose rows
        are written (a broker token shared by many)."""
        self._left_inbox(batch)
        first_of: dict[Key, _Pending] = {}
        for pending in batch:
            first_of.setdefault((pending.row["provider"], pending.row["event_id"]), pending)
        rows = [pending.row for pending in first_of.values()]
        share_tokens(rows)  # a broker message for many
        self.relay.written_queued(rows)
        return first_of

    def _left_inbox(self, batch: list[_Pending]) -> None:
        """``batch`` no longer counts against the inbox's bounds."""
        with self._waiting_lock:
            self.waiting_rows -= len(batch)
            self.waiting_bytes -= sum(pending.size for pending in batch)

    def _relay_new(self, first_of: dict[Key, _Pending], inserted: dict[Key, int]) -> None:
        """Hand the new events that are due at once to the relay (held ones go later)."""
        ready = relayable((pending.row for pending in first_of.values()), inserted)
        if ready:
            self._outbox.put(ready)

    def _commit_batch(self, batch: list[_Pending]) -> tuple[dict[tuple[str, str], int], set[tuple[str, str]]]:
        """Insert one row per event; the new events' ids, and the keys of the rows not committed.

        When the store refuses the batch for its content rather than for being unreachable, the
        rows are tried one by one, so that a row the store will never take (whatever the intake's
        checks missed) fails alone instead of failing every delivery batched with it, on every
        retry of each.
        """
        keys = [(p.row["provider"], p.row["event_id"]) for p in batch]
        try:
            return self._commit([p.row for p in batch]), set()
        except Exception as exc:
            if not refused_for_content(exc) or len(batch) == 1:
                log_failure(exc, keys)
                return {}, set(keys)
        inserted: dict[tuple[str, str], int] = {}
        refused: set[tuple[str, str]] = set()
        for index, (pending, key) in enumerate(zip(batch, keys, strict=True)):
            try:
                inserted |= self._commit([pending.row])
            except Exception as exc:
                log_failure(exc, [key])
                refused.add(key)
                if not refused_for_content(exc):  # the store went away meanwhile: stop there
                    refused.update(keys[index + 1 :])
                    break
        return inserted, refused

    def _commit(self, rows: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
        self.relay.set_back_unsent(self.writer)
        sent = self.relay.take_sent()
        if not rows and not sent:
            return {}
        try:
            return self._insert_rows(rows, sent)
        except Exception:
            self.relay.put_back(sent)  # marked by a later commit
            raise

    def _insert_rows(self, rows: list[dict[str, Any]], sent: list[int]) -> dict[tuple[str, str], int]:
        """One batch, written by :attr:`writer` (see :mod:`gateway.store_writer`)."""
        return self.writer.write(rows, sent)

    # -- relay thread ---------------------------------------------------------------------

    def _relay(self) -> None:
        relay = self.relay
        self._consume(self._outbox, lambda batches: relay.send([i for b in batches for i in b]), relay.probe)


def _results(
    batch: list[_Pending], first_of: dict[Key, _Pending], inserted: dict[Key, int], refused: set[Key]
) -> Iterator[tuple[_Pending, str | BaseException]]:
    """Each delivery's answer: ``accepted`` for the first of a new event, ``duplicate`` for the
    others, and an error for those whose row was not committed."""
    error = StoreUnavailable("the store did not commit")
    for pending in batch:
        key = (pending.row["provider"], pending.row["event_id"])
        if key in refused:
            yield pending, error
        else:
            yield pending, ACCEPTED if key in inserted and first_of[key] is pending else DUPLICATE


def _take_more(source: queue.SimpleQueue[Any], taken: list[Any], limit: int) -> bool:
    """Move the items waiting on ``source`` to ``taken`` until it holds ``limit``; whether the
    stop (``None``) came."""
    while len(taken) < limit:
        try:
            item = source.get_nowait()
        except queue.Empty:
            return False
        if item is None:
            return True
        taken.append(item)
    return False


def _expire(future: asyncio.Future[str]) -> None:
    """The commit did not come in time. It may still land; then the sender's retry is answered
    ``duplicate`` (the committer leaves a future that is done alone)."""
    if not future.done():
        future.set_exception(StoreUnavailable("the store did not commit in time"))


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed while the batch was being written
        loop.call_soon_threadsafe(callback)
