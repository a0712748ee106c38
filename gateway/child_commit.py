"""The group commit run by the event loop itself, its batches written by a child process.

:class:`~gateway.ingest.Ingestor` gives every delivery to a committer thread, which writes it and
hands the answers back to the loop. Under load both hand-offs are waits for the GIL: the thread
must win it back from the busy loop after every step of the driver, and again to answer. Here
the loop keeps the waiting deliveries itself and sends each batch to a child process
(:mod:`gateway.writer_process`) over a socket it watches like any other; the child's answer
comes back as one more readable socket, and the loop answers the batch's requests in the same
pass. The loop does the bookkeeping the committer thread did (a batch's keys, its broker
tokens, the answers), plus one ``marshal`` of the rows; the store's work is all in the child.
At saturation (bench/intake.py, SQLite) ``serve`` handled about a sixth more requests a second
than with the committer thread talking to the same child, and a third more than with the
committer thread writing itself.

Everything the thread guaranteed holds: one batch in flight at a time; a 2xx only after the
child has committed (and on SQLite synced) the row; a batch refused for its content retried key
by key, so that one row the store will never take fails alone; a small batch lingers for
company at a steady rate (:mod:`gateway.linger`); a batch's new events are enqueued after its
requests are answered, and what the child must record of that (RabbitMQ's confirms, Redis's
failed enqueues) goes with the next batch, or after ``idle_after`` seconds without one, when the
child also gives its connection back; a failed sync stops
acknowledging for good. A child that exits costs the batch it was writing (503), is logged and
counted, and a new one is started at once; one that holds a message past its deadline is
killed, and goes the same way.

The relay is the child's too (:mod:`gateway.relay`): it enqueues what it has just committed, once
it has answered, so no thread of ``serve``'s process spends its CPU, or takes the event loop's
GIL, on the broker. It says when the broker stops answering (the intake then answers 503, and
takes nothing) and when a probe, sent with each idle pass meanwhile, finds it again; a child
started meanwhile is told the broker is down, and probes it too. With the ordering window at 0
(every event relayed), that moved the intake on SQLite from 0.49 to 0.65 of the bare endpoint,
and its CPU a request from 189 to 157 µs (bench/README.md, Intake).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from . import tracing
from .batch_insert import Key
from .errors import StoreUnavailable
from .ingest import Ingestor, _expire, _Pending, _results
from .queue import EventQueue
from .store_writer import WriteFailed, log_failure
from .writer_process import START_SECONDS, STOP_SECONDS, WriterConnection, WriterProcess, reap

log = logging.getLogger("hookgate.intake")

#: Seconds before a child that could not be started is tried again.
RESTART_DELAY = 1.0
#: How long a child whose socket closed may take to exit before it is killed.
EXIT_SECONDS = 5.0
#: The least time a child may take to answer a batch or an idle pass before it is killed (see
#: :meth:`ChildIngestor._end_overdue_flight`); four times ``commit_timeout`` when that is longer.
FLIGHT_SECONDS = 30.0


@dataclass(slots=True)
class _Flight:
    """The one message the child is working on."""

    kind: str  # "open", "write" or "idle"
    batch: list[_Pending] = field(default_factory=list)
    first_of: dict[Key, _Pending] = field(default_factory=dict)
    #: A retry of one key of a batch the store refused for its content.
    alone: bool = False
    #: When it was sent (``time.perf_counter()``).
    started: float = 0.0
    #: Ends the batch's span (gateway.tracing.start_committing), when tracing.
    trace: tracing.Note | None = None


class ChildIngestor(Ingestor):
    """An :class:`~gateway.ingest.Ingestor` whose committer is the event loop and whose writer is
    a child process (see the module's text). :meth:`open` and :meth:`close` run on that loop.

    Args:
        process: starts and reaps the child.
        **options: as :class:`~gateway.ingest.Ingestor`'s.
    """

    #: A timer per request cost the loop about 4 µs (uvloop arms a libuv timer for each); the idle
    #: pass, every ``idle_after`` seconds, answers the waits past ``commit_timeout`` instead.
    expires_waits = True

    def __init__(self, engine: Engine, event_queue: EventQueue, *, process: WriterProcess, **options: Any) -> None:
        super().__init__(engine, event_queue, **options)
        self.process = process
        #: Seconds a child may take to answer a batch or an idle pass, and to say it is ready,
        #: before it is killed and another started (:meth:`_end_overdue_flight`).
        self.flight_timeout = max(FLIGHT_SECONDS, 4 * self.commit_timeout)
        self.start_timeout = START_SECONDS
        self._sync_failed: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connection: WriterConnection | None = None
        #: The child answered its ``open``: batches may go.
        self._ready = False
        self._flight: _Flight | None = None
        self._pending: list[_Pending] = []
        #: The keys of a batch refused for its content, each to be tried alone (before any other).
        self._alone: deque[list[_Pending]] = deque()
        self._flush_handle: asyncio.Handle | asyncio.TimerHandle | None = None
        #: Deliveries waiting when a linger began (None: not lingering).
        self._lingering: int | None = None
        self._handled_at, self._last_batch = -float("inf"), 0
        #: Whether the child holds a connection (an idle pass then gives it back).
        self._holding = False
        #: Whether the child may hold enqueues it has not recorded (an idle pass records them).
        self._marks_waiting = False
        self._idle_timer: asyncio.TimerHandle | None = None
        self._closing = False
        #: ``close`` has returned: no child is started any more.
        self._closed = False
        #: Set whenever nothing waits and nothing is in flight (what :meth:`close` waits for).
        self._settled = asyncio.Event()
        self._opened: asyncio.Future[None] | None = None
        #: The task starting a child, kept so that it is not collected mid-way.
        self._starting: asyncio.Task[None] | None = None

    @property
    def sync_failed(self) -> str | None:
        return self._sync_failed

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        """Start the child, and wait until it is ready.

        Raises:
            StoreUnavailable: the first child did not start (``serve`` then does not either).
        """
        self._loop = asyncio.get_running_loop()
        self._start_checkpointer()
        self._opened = self._loop.create_future()
        await self._start_child()
        try:
            await asyncio.wait_for(self._opened, START_SECONDS)
        except BaseException:
            self._end_child()
            self._stop_checkpointer()
            raise
        self._idle_timer = self._loop.call_later(self.idle_after, self._idle_pass)

    async def close(self) -> None:
        """Write what waits, have the child mark what it enqueued and give its connection back,
        then stop it."""
        self._closing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wait_settled(), STOP_SECONDS)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._ready and self._flight is None:
            self._send_idle()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wait_settled(), STOP_SECONDS)
        self._closed = True
        if self._starting is not None:  # a child being started: let it start, then stop it
            await self._starting
        flight, self._flight = self._flight, None
        self._refuse_waiting(
            "the intake stopped before these rows were written", [flight.batch] if flight is not None else []
        )
        connection, self._connection, self._ready = self._connection, None, False
        if connection is not None:
            connection.close()
        await asyncio.to_thread(self.process.reap, STOP_SECONDS)
        self._stop_checkpointer()

    async def _wait_settled(self) -> None:
        while self._pending or self._alone or self._flight is not None:
            self._settled.clear()
            await self._settled.wait()

    async def _start_child(self) -> None:
        """Start a child and send it its ``open``; its answer makes it ready. A failure to start
        is logged and tried again after :data:`RESTART_DELAY`."""
        assert self._loop is not None
        sock = None
        try:
            sock = self.process.spawn()
            _, connection = await self._loop.create_unix_connection(
                lambda: WriterConnection(self._answered, self._lost), sock=sock
            )
        except Exception as exc:
            log.error("the intake's store writer process did not start: %s", exc)
            if sock is not None:
                sock.close()
            self.process.reap()
            self._start_failed(f"the store writer did not start: {exc}")
            return
        self._connection = connection
        self._flight = _Flight("open", started=time.perf_counter())
        connection.send(self.process.opening(self.relay.healthy))
        log.info("the intake's store writer runs in process %s", self.process.pid)

    def _start_failed(self, reason: str, *, at_once: bool = False) -> None:
        """No child: fail :meth:`open` if it is waiting, else start another (after
        :data:`RESTART_DELAY`, unless the last one ran and died: then ``at_once``)."""
        if self._opened is not None and not self._opened.done():
            self._opened.set_exception(StoreUnavailable(reason))
        elif at_once:
            self._restart()
        else:
            assert self._loop is not None
            self._loop.call_later(RESTART_DELAY, self._restart)

    def _restart(self) -> None:
        """Start a new child, unless one is there or starting, or ``close`` has nothing left for it."""
        wanted = not self._closed and (not self._closing or self._pending or self._alone)
        if wanted and self._connection is None and (self._starting is None or self._starting.done()):
            assert self._loop is not None
            self._starting = self._loop.create_task(self._start_child())

    def _end_child(self) -> None:
        connection, self._connection, self._ready = self._connection, None, False
        if connection is not None:
            connection.close()
        self.process.reap()

    # -- requests ---------------------------------------------------------------------------

    def _hand_over(self, pending: _Pending) -> None:
        if self._closed:  # no child will come to write it
            self._left_inbox([pending])
            pending.future.set_exception(StoreUnavailable("the intake is stopping"))
            return
        self._pending.append(pending)
        self._settled.clear()
        if self._flight is None:
            self._schedule_flush()

    def _flush(self) -> None:
        """Send the next batch, unless one is in flight (its answer calls this again)."""
        self._flush_handle = None
        if self._flight is not None or not self._ready:
            self._settle()  # with nothing waiting, close() need not wait for a child to come
            return
        if self._sync_failed is not None:
            self._refuse_waiting(self._sync_failed)
        if self._alone:
            group = self._alone.popleft()
            # The keys of one batch share its broker tokens: the child holds their new events
            # until the last is written, and then sends them together (one message a token).
            self._send_batch(group, {_key(group[0]): group[0]}, alone=True, hold=bool(self._alone))
            return
        if not self._pending:
            self._settle()
            return
        if self._lingering is None and not self._closing:
            since_last = time.monotonic() - self._handled_at
            wait = self.linger.wait_for(since_last, len(self._pending), last_batch=self._last_batch)
            if wait:
                assert self._loop is not None
                self._lingering = len(self._pending)
                self._flush_handle = self._loop.call_later(wait, self._flush)
                return
        elif self._lingering is not None:
            self.linger.gained(len(self._pending) - self._lingering)
        self._lingering = None
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        self._send_batch(batch, self._taken(batch))

    def _send_batch(
        self, batch: list[_Pending], first_of: dict[Key, _Pending], *, alone: bool = False, hold: bool = False
    ) -> None:
        rows = [pending.row for pending in first_of.values()]
        trace = tracing.start_committing(rows, self.engine.dialect.name) if tracing.on else None
        flight = _Flight("write", batch, first_of, alone, time.perf_counter(), trace)
        self._send(flight, ("write", rows, hold))

    def _send_idle(self) -> None:
        self._send(_Flight("idle", started=time.perf_counter()), ("idle",))

    def _send(self, flight: _Flight, message: tuple[Any, ...]) -> None:
        """Send ``flight``'s message. One that cannot even be sent (a value ``marshal`` refuses)
        fails as a store that is unavailable would, and the next batch goes."""
        assert self._connection is not None
        self._flight = flight
        try:
            self._connection.send(message)
        except Exception as exc:
            log.exception("the intake could not send a batch to its store writer")
            self._flight = None
            if flight.kind == "write":
                self._written(flight, None, WriteFailed(f"not sent: {type(exc).__name__}", for_content=False))
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_handle is None:
            assert self._loop is not None
            self._flush_handle = self._loop.call_soon(self._flush)

    def _refuse_waiting(self, reason: str, more: Sequence[list[_Pending]] = ()) -> None:
        """Answer 503 to every delivery still waiting, and to ``more``: after a failed sync
        nothing more is written, by this child or a new one; after ``close`` nothing at all."""
        error = StoreUnavailable(reason)
        waiting, self._pending = self._pending, []
        self._left_inbox(waiting)
        for group in [waiting, *self._alone, *more]:
            for pending in group:
                if not pending.future.done():
                    pending.future.set_exception(error)
        self._alone.clear()

    def _settle(self) -> None:
        if not self._pending and not self._alone and self._flight is None:
            self._settled.set()

    # -- the child's answers ----------------------------------------------------------------

    def _answered(self, message: Any) -> None:
        if message[0] == "broker":  # not an answer: the child's relay found the broker down, or up
            self.relay.healthy = message[1]
            return
        try:
            self._take_answer(message)
        except Exception:  # a bug: logged, and the committer goes on with the next batch
            log.exception("unexpected error in the intake's committer")
        self._flush()

    def _take_answer(self, message: Any) -> None:
        flight, self._flight = self._flight, None
        assert flight is not None
        failure = None if message[0] == "ok" else self._failure(message)
        if flight.kind == "open":
            self._opening_answered(failure)
        elif flight.kind == "idle":
            self._holding = False
            self._marks_waiting = failure is not None
            if failure is not None:
                log.warning("store unavailable while marking events queued: %s", failure.reason)
        else:
            self._holding = failure is None
            self._written(flight, message[1] if failure is None else None, failure)

    def _opening_answered(self, failure: WriteFailed | None) -> None:
        if failure is None:
            self._ready = True
            if self._opened is not None and not self._opened.done():
                self._opened.set_result(None)
            return
        log.error("the intake's store writer could not open the store: %s", failure.reason)
        self._end_child()
        self._start_failed(f"the store writer did not start: {failure.reason}")

    def _written(self, flight: _Flight, inserted: dict[Key, int] | None, failure: WriteFailed | None) -> None:
        """Answer a batch's requests (the child enqueues its new events); or, when the store
        refused it for its content, queue its keys to be tried one by one."""
        self._handled_at, self._last_batch = time.monotonic(), len(flight.batch)
        keys = list(flight.first_of)
        refused: set[Key] = set()
        if failure is not None:
            if failure.for_content and len(keys) > 1:  # each key alone; none is answered yet
                groups: dict[Key, list[_Pending]] = {key: [] for key in keys}
                for pending in flight.batch:
                    groups[_key(pending)].append(pending)
                self._alone.extend(groups.values())
                self._end_trace(flight, 0, 0)
                return
            log_failure(failure, keys)
            refused = set(keys)
            if flight.alone and not failure.for_content:  # the store went away: stop there
                for group in self._alone:
                    flight.batch.extend(group)
                    refused.add(_key(group[0]))
                self._alone.clear()
        self._end_trace(flight, len(inserted or ()), len(refused))
        self.metrics.committed(len(keys), time.perf_counter() - flight.started)
        for pending, result in _results(flight.batch, flight.first_of, inserted or {}, refused):
            if not pending.future.done():
                if isinstance(result, BaseException):
                    pending.future.set_exception(result)
                else:
                    pending.future.set_result(result)
        if inserted:  # the child enqueues those due at once, and marks them with a later message
            self._marks_waiting = True

    @staticmethod
    def _end_trace(flight: _Flight, inserted: int, refused: int) -> None:
        if flight.trace is not None:
            flight.trace(inserted=inserted, refused=refused)

    def _failure(self, message: Any) -> WriteFailed:
        _, reason, for_content, details, sync_failed = message
        if sync_failed is not None:
            self._sync_failed = sync_failed
        return WriteFailed(reason, for_content=for_content, details=details)

    def _lost(self, connection: WriterConnection) -> None:
        """A child's end closed: asked to (``close`` and ``_end_child`` let go of the connection
        first), or it died; or it was killed for answering too late (:meth:`_end_overdue_flight`
        calls this at once)."""
        if connection is not self._connection:
            return
        flight, self._flight = self._flight, None
        self._connection, self._ready = None, False
        writing = flight is not None and flight.kind == "write"
        assert self._loop is not None
        self._loop.run_in_executor(None, _report_exit, self.process.detach(), writing)
        self.metrics.writer_exits.inc()
        self._holding = False
        if writing and flight is not None:
            self._written(flight, None, WriteFailed("the store writer process exited", for_content=False))
        # A child that ran is replaced at once; one that died opening, after a pause.
        self._start_failed(
            "the store writer process exited as it started", at_once=flight is None or flight.kind != "open"
        )
        self._settle()

    # -- between batches --------------------------------------------------------------------

    def _idle_pass(self) -> None:
        """Every ``idle_after`` seconds: expire overdue waits; when no batch came for that long,
        have the child mark what it enqueued and give its connection back (the committer
        thread's idle pass), and probe a broker it found down."""
        assert self._loop is not None
        self._idle_timer = self._loop.call_later(self.idle_after, self._idle_pass)
        self._expire_overdue()
        self._end_overdue_flight()
        quiet = time.monotonic() - self._handled_at >= self.idle_after
        if not quiet or self._flight is not None or self._pending or not self._ready:
            return
        # An idle pass also has the child probe a broker it found down.
        if self._marks_waiting or self._holding or not self.relay.healthy:
            self._send_idle()

    def _end_overdue_flight(self) -> None:
        """Kill a child that has held its message past ``flight_timeout`` (``start_timeout`` for
        its ``open``). Its requests have had their 503 since ``commit_timeout``, but every later
        one would wait behind it: a PostgreSQL server gone mid-statement (a failover, a
        connection dropped on the way) leaves the child reading a socket that the system may
        take many minutes, or hours, to give up on; a child can hang on a dead disk. Its death is
        then handled as any other, at once rather than when its socket closes (a process in a
        system call that cannot be interrupted dies only when the call returns): the batch is
        answered 503, and a new child is started. A batch it had committed stays committed, and
        its senders' retries are duplicates."""
        flight, connection = self._flight, self._connection
        if flight is None or connection is None:
            return
        limit = self.start_timeout if flight.kind == "open" else self.flight_timeout
        if time.perf_counter() - flight.started < limit:
            return
        log.error(
            "the intake's store writer process %s has not answered in %.0f s; it is killed and another started",
            self.process.pid,
            limit,
        )
        self.process.kill()
        self._lost(connection)
        connection.close()  # its end of the socket: nothing more is read from this child

    def _expire_overdue(self) -> None:
        """Answer 503 to every request that has waited ``commit_timeout`` seconds for its commit
        (its row is written all the same when its turn comes; a retry is then a duplicate)."""
        assert self._loop is not None
        overdue = self._loop.time() - self.commit_timeout
        waiting = [self._flight.batch if self._flight is not None else [], *self._alone, self._pending]
        for group in waiting:
            for pending in group:
                if pending.since <= overdue:
                    _expire(pending.future)


def _report_exit(process: subprocess.Popen[bytes] | None, writing: bool) -> None:
    """Reap a child whose socket closed (off the loop: it may still be exiting) and say so."""
    code = reap(process, EXIT_SECONDS)
    log.error(
        "the intake's store writer process exited (exit code %s): %s; a new one is started",
        code,
        "the batch it was writing is answered 503" if writing else "it was not writing",
    )


def _key(pending: _Pending) -> Key:
    return (pending.row["provider"], pending.row["event_id"])
