"""Calling handlers: a time limit per call, a session inside a savepoint, failures described.

The time limit applies to each handler call, not to a broker message: a message may carry a
reconciliation fetch and several handlers of several events. When a call overruns,
:class:`TimeLimiter` raises :class:`HandlerTimeout` in the handler's thread (as Dramatiq's own
time limit does, with ``PyThreadState_SetAsyncExc``). Such an exception is only seen when the
thread runs Python code again; a thread blocked in a system call is dealt with by the leases
(see :mod:`workers.leases`), which stop being renewed after the limit and a grace.
"""

from __future__ import annotations

import ctypes
import math
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Connection
from sqlalchemy.exc import StatementError
from sqlmodel import Session

from .event import Event
from .leases import RENEWAL_GRACE_SECONDS
from .registry import Handler


class HandlerTimeout(BaseException):
    """Raised inside a handler's thread when the call runs past ``handler_time_limit_seconds``.

    A ``BaseException``, so that a handler's ``except Exception`` does not swallow it.
    """


class WorkerStopping(HandlerTimeout):
    """Raised inside a handler's thread when the worker is stopping and the call runs past
    ``stop_timeout_seconds`` after SIGTERM, or instead of a call that would start after it."""


def _raise_in_thread(thread_id: int, exc: type[BaseException] | None) -> None:
    """Have ``thread_id`` raise ``exc`` at its next bytecode; ``None`` clears a pending one."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else None)


class TimeLimiter:
    """One watchdog thread per process that interrupts handler calls past their deadline.

    A call that has not come back ``grace`` seconds after it was interrupted is *stuck* (blocked
    where the exception cannot reach it). When every one of the process's ``threads`` is stuck,
    the process can do no more work, and its prefetched messages would wait behind them for ever:
    ``on_all_stuck`` is called (the worker exits, to be restarted, see :mod:`workers.app`).

    When the worker stops, :meth:`stop_by` sets a deadline for every call, running or to come:
    past it a call is interrupted with :class:`WorkerStopping` (or not started). A stopping
    process exits on its own schedule (see :mod:`workers.shutdown`), so ``on_all_stuck`` is no
    longer called then.
    """

    def __init__(
        self,
        seconds: float,
        *,
        grace: float = RENEWAL_GRACE_SECONDS,
        threads: int = 0,
        on_all_stuck: Callable[[int], None] | None = None,
    ) -> None:
        self.seconds = seconds
        self.grace = grace
        self.threads = threads
        self.on_all_stuck = on_all_stuck
        self._deadlines: dict[int, float] = {}
        #: When the worker stops (monotonic seconds), no call may run past this.
        self._stop_by: float | None = None
        #: Thread → when its call was interrupted, while the call has not come back.
        self._fired: dict[int, float] = {}
        self._changed = threading.Condition()
        self._watchdog: threading.Thread | None = None
        #: When the watchdog wakes up next (monotonic; infinity while it waits for a call). A new
        #: call is due later than the calls before it (one limit for all), so it wakes the
        #: watchdog only when that is sooner: one wake-up per call was a thread switch per call.
        self._wake_at = math.inf

    @contextmanager
    def limit(self) -> Iterator[None]:
        """Run the block under the time limit in the current thread."""
        thread_id = threading.get_ident()
        with self._changed:
            if self._stop_by is not None and time.monotonic() >= self._stop_by:
                raise WorkerStopping
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, name="hookgate-time-limit", daemon=True)
                self._watchdog.start()
            self._fired.pop(thread_id, None)
            deadline = self._deadlines[thread_id] = time.monotonic() + self.seconds
            if deadline < self._wake_at:
                self._changed.notify()
        try:
            yield
        finally:
            with self._changed:
                self._deadlines.pop(thread_id, None)
                if self._fired.pop(thread_id, None) is not None:
                    # The call ended as the watchdog fired: drop an exception not raised yet, so
                    # that it cannot surface later in the bookkeeping.
                    _raise_in_thread(thread_id, None)

    def stop_by(self, deadline: float) -> None:
        """Interrupt every call still running at ``deadline`` (monotonic seconds), and start none
        after it."""
        with self._changed:
            self._stop_by = deadline
            self._wake_at = -math.inf  # the next call wakes it up too, should this find it between waits
            self._changed.notify()  # no watchdog yet: no call has started, and limit() checks

    def _watch(self) -> None:
        with self._changed:
            while True:
                now = time.monotonic()
                stop_by = math.inf if self._stop_by is None else self._stop_by
                for thread_id, deadline in self._deadlines.items():
                    if min(deadline, stop_by) <= now and thread_id not in self._fired:
                        self._fired[thread_id] = now
                        _raise_in_thread(thread_id, HandlerTimeout if deadline <= stop_by else WorkerStopping)
                stuck = sum(now - fired >= self.grace for fired in self._fired.values())
                if self.threads and stuck >= self.threads and self.on_all_stuck is not None and self._stop_by is None:
                    self.on_all_stuck(stuck)
                upcoming = [min(d, stop_by) for t, d in self._deadlines.items() if t not in self._fired]
                upcoming += [fired + self.grace for fired in self._fired.values() if now - fired < self.grace]
                self._wake_at = min(upcoming) if upcoming else math.inf
                self._changed.wait(timeout=self._wake_at - now if upcoming else None)


def call_handler(handler: Handler, event: Event, conn: Connection) -> None:
    """Run one handler; a handler with a ``session`` writes inside a savepoint of ``conn``.

    ``conn`` must already be in a transaction: a session bound to a connection that is not
    begins (and commits) a transaction of its own.
    """
    if not handler.takes_session:
        handler(event)
        return
    with Session(bind=conn, join_transaction_mode="create_savepoint") as session:
        try:
            handler(event, session)
            session.commit()  # releases the savepoint: the writes commit with the event
        except BaseException:
            session.rollback()
            raise


def error_text(exc: BaseException) -> str:
    """The error's message; for a statement's error, its cause's first line only (SQLAlchemy's
    own text lists the statement's parameters: resource states, rows of handler sessions)."""
    if isinstance(exc, StatementError) and exc.orig is not None:
        lines = str(exc.orig).strip().splitlines()
        return lines[0][:200] if lines else ""
    return str(exc)


def driver_message(exc: BaseException) -> str:
    """``OperationalError: database is locked``: the class and :func:`error_text`."""
    return f"{type(exc).__name__}: {error_text(exc)}"


def describe_failures(failures: list[tuple[str, BaseException]]) -> str:
    """One line per failed handler: its name, the error and where it was raised."""
    parts = []
    for name, exc in failures:
        last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        where = f" at {last[0].filename}:{last[0].lineno}" if last else ""
        if isinstance(exc, WorkerStopping):
            parts.append(f"{name} did not finish before the worker stopped (stop_timeout_seconds){where}")
            continue
        if isinstance(exc, HandlerTimeout):
            parts.append(f"{name} exceeded the handler time limit{where}")
            continue
        parts.append(f"{name} raised {driver_message(exc)}{where}")
    return "\n".join(parts)
