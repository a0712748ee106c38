"""The record of one try of an event: what its attempt row says, and the failure group it joins.

A try starts when a worker claims the event and ends in the transaction that records its
outcome (see :mod:`workers.lifecycle`): the attempt row is written there, after the fence has
held, so a try whose lease was lost leaves no row, and a recorded outcome always has one.
Nothing here touches the store; :class:`Try` only gathers what the row will hold.

An error names the handler (``module.function``, or the stage that failed before any handler
ran: ``decode``, ``reconcile``, ``commit``), the exception's class, its message and the last frame
of its traceback, which is where to look first. The failure group of a failed try is the first
error's ``<handler>:<ExceptionClass>``: the message is left out, since it varies (ids, amounts)
between events that fail for one reason.
"""

from __future__ import annotations

import os
import socket
import traceback
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.models import FAILED, QUEUED

from .calls import HandlerTimeout, WorkerStopping, error_text

#: ``attempts.outcome`` of a failed try that is retried, and of a try cut short by the worker's stop.
RETRY, DEFERRED = "retry", "deferred"

#: An error message keeps at most this many characters.
MAX_MESSAGE = 1000


def qualified_name(kind: type[BaseException]) -> str:
    """``module.Class`` (``ValueError`` alone for a built-in), as the operator would import it."""
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def last_frame(exc: BaseException) -> str | None:
    """``file.py:LINE in function`` of the frame that raised, or ``None`` without a traceback."""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    if not frames:
        return None
    last = frames[-1]
    return f"{os.path.basename(last.filename)}:{last.lineno} in {last.name}"


def describe_error(handler: str, exc: BaseException) -> dict[str, Any]:
    """One entry of an attempt's ``errors``."""
    if isinstance(exc, WorkerStopping):
        message = "did not finish before the worker stopped (stop_timeout_seconds)"
    elif isinstance(exc, HandlerTimeout):
        message = "exceeded the handler time limit"
    else:
        message = error_text(exc)[:MAX_MESSAGE]
    return {"handler": handler, "type": qualified_name(type(exc)), "message": message, "frame": last_frame(exc)}


def worker_name() -> str:
    """``host:pid`` of this process (asked each time: Dramatiq forks its worker processes)."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(slots=True)
class Try:
    """One try of a claimed event, filled in as it goes."""

    event_pk: int
    attempt: int
    round: int
    trigger: str
    #: When the event was claimed (the claim writes ``updated_at``).
    started_at: float
    errors: list[dict[str, Any]] = field(default_factory=list)
    #: Every error was the worker's stop interrupting a handler, not a failure of the handler's own.
    stopped: bool = False
    reconcile_status: int | None = None
    reconcile_error: str | None = None

    @classmethod
    def of(cls, row: Any) -> Try:
        """The try a claimed event row (see :meth:`workers.leases.EventLeases.claim`) starts."""
        return cls(row.id, row.attempts, row.round, row.next_trigger, row.updated_at)

    def failed(self, failures: list[tuple[str, BaseException]]) -> None:
        """Record the errors of the handlers (or stages) that raised (those of the try so far)."""
        self.errors = [describe_error(name, exc) for name, exc in failures]
        self.stopped = bool(failures) and all(isinstance(exc, WorkerStopping) for _, exc in failures)

    def also_failed(self, name: str, exc: BaseException) -> None:
        """Add an error after the try's own (recording its outcome failed): a try the worker's
        stop cut short stays one (see :meth:`outcome`)."""
        self.errors.append(describe_error(name, exc))

    def outcome(self, status: str) -> str:
        """The attempt's outcome, from the event's status after it."""
        if status == QUEUED:
            return DEFERRED if self.stopped else RETRY
        return status

    def group(self, status: str) -> str | None:
        """The failure group the event joins with this try: none once it settles, nor when the
        worker's stop alone cut the try short (it is retried; nothing failed)."""
        if status not in (FAILED, QUEUED) or not self.errors or self.outcome(status) == DEFERRED:
            return None
        first = self.errors[0]
        return f"{first['handler']}:{first['type'].rsplit('.', 1)[-1]}"[:255]

    def row(self, status: str, finished_at: float) -> dict[str, Any]:
        """The attempt row for a try that left the event ``status``."""
        return {
            "event_pk": self.event_pk,
            "attempt": self.attempt,
            "round": self.round,
            "started_at": self.started_at,
            "finished_at": finished_at,
            "outcome": self.outcome(status),
            "trigger": self.trigger,
            "errors": orjson.dumps(self.errors).decode() if self.errors else None,
            "reconcile_status": self.reconcile_status,
            "reconcile_error": self.reconcile_error,
            "worker": worker_name(),
        }


#: The columns of :meth:`Try.row`, in its order.
ATTEMPT_COLUMNS: tuple[str, ...] = ("event_pk", "attempt", "round", "started_at", "finished_at", "outcome")
ATTEMPT_COLUMNS += ("trigger", "errors", "reconcile_status", "reconcile_error", "worker")


def given_up(row: Any, message: str, finished_at: float) -> dict[str, Any]:
    """The attempt row of the last try of an event the recovery sweep gives up on: its worker
    stopped (killed, stalled) on every try without recording an outcome, so this row is written
    by the sweep, with the outcome ``failed``; which worker ran the try is not known."""
    tried = Try(row.id, row.attempts, row.round, row.next_trigger, row.updated_at)
    tried.errors = [{"handler": "worker", "type": "LeaseExpired", "message": message, "frame": None}]
    return {**tried.row(FAILED, finished_at), "worker": "unknown: its lease expired"}
