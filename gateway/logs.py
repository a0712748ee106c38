"""How Hookgate's processes write their logs: text (the default) or one JSON object per line.

``HOOKGATE_LOG_FORMAT=json`` makes every line that ``hookgate run``, ``serve`` and ``worker``
write a JSON object: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, ``pid``,
``thread``, then ``provider``, ``event_id``, ``event_type``, ``attempt`` and ``trace_id`` where
known, and ``error`` (the traceback, as text) when the line carries an exception. Those event
fields come from :func:`log_context`, which a worker holds while it processes an event, so that
the lines of its handlers and of the reconciliation carry them too; a tracer sets ``trace_id``
the same way. A single line may also pass them as ``extra``.

Three kinds of process are configured here, each before it writes anything:

- the ``hookgate`` command (:func:`configure_logging`, from :func:`gateway.cli.main`), whose
  ``serve`` and ``run`` hand uvicorn :func:`uvicorn_log_config`;
- Dramatiq's parent process (:func:`configure_dramatiq_parent`, from :mod:`workers.cli`);
- each Dramatiq worker process (:func:`configure_worker_process`, from :mod:`workers.main`).

The text format is left exactly as it was: Hookgate's ``basicConfig`` line format in the
command, uvicorn's own, and Dramatiq's in the workers.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType, TracebackType
from typing import Any, TextIO, cast

from .errors import ConfigError

VARIABLE = "HOOKGATE_LOG_FORMAT"
TEXT, JSON = "text", "json"
FORMATS = (TEXT, JSON)

#: The ``hookgate`` command's text lines (Dramatiq and uvicorn have their own).
TEXT_LINE = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Fields a line carries when they are known: set by :func:`log_context` or ``extra``.
CONTEXT_FIELDS = ("provider", "event_id", "event_type", "attempt", "trace_id")

#: Loggers of the HTTP client that reconciliation and ``hookgate send`` use.
HTTP_CLIENT_LOGGERS = ("httpx", "httpcore")

_context: ContextVar[Mapping[str, object]] = ContextVar("hookgate_log_context", default=MappingProxyType({}))


def log_format(environ: Mapping[str, str] = os.environ) -> str:
    """``text`` or ``json``, from ``HOOKGATE_LOG_FORMAT`` (unset or empty: ``text``).

    Raises:
        ConfigError: any other value.
    """
    value = (environ.get(VARIABLE) or TEXT).strip().lower()
    if value not in FORMATS:
        raise ConfigError([f"{VARIABLE}={environ[VARIABLE]!r} is not a log format: use text or json"])
    return value


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Add ``fields`` (names from :data:`CONTEXT_FIELDS`) to every JSON line logged in this block,
    in this thread or task; nested blocks add to the outer one's."""
    if unknown := set(fields) - set(CONTEXT_FIELDS):
        raise TypeError(f"not log context fields: {sorted(unknown)}")
    token = _context.set(MappingProxyType({**_context.get(), **fields}))
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> Mapping[str, object]:
    """The :func:`log_context` fields in force here, to log with again later (a worker logs a
    round's outcomes after its commit, outside each event's block)."""
    return _context.get()


def event_context(row: Any) -> AbstractContextManager[None]:
    """:func:`log_context` with the fields of a stored event (a row of ``events``)."""
    return log_context(provider=row.provider, event_id=row.event_id, event_type=row.event_type, attempt=row.attempts)


class ContextFilter(logging.Filter):
    """Puts the :func:`log_context` fields on each record, unless the call gave them as ``extra``.

    A filter of the handler, so that it runs in the thread that logs, where the context is.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """A record as one JSON object on one line.

    The exception, if any, is text in ``error`` (newlines escaped), never a traceback that breaks
    the line. The output is ASCII, so that every line is valid JSON whatever the stream's encoding.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
            "thread": record.threadName,
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


def json_handler(stream: TextIO) -> logging.Handler:
    """A handler writing :class:`JsonFormatter` lines, with the :func:`log_context` fields, to ``stream``."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    return handler


def quiet_http_client_logs() -> None:
    """Keep the HTTP client's per-request lines out of the log.

    httpx logs every request's full URL at INFO, and an API credential may sit in its query
    (``api.resource_path: /v1/x/{resource}?key=...``); httpcore's DEBUG lines follow the
    connection. Failures are logged by Hookgate itself, with the URL cut before its query.
    """
    for name in HTTP_CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _use_json(stream: TextIO, level: int | None) -> None:
    """Make the JSON handler the root logger's only one; Python's warnings and uncaught
    exceptions go through it too."""
    logging.basicConfig(handlers=[json_handler(stream)], force=True)
    if level is not None:
        logging.getLogger().setLevel(level)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("hookgate").critical("uncaught %s", kind.__name__, exc_info=(kind, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread else "?"
    logging.getLogger("hookgate").error(
        "uncaught %s in thread %s",
        args.exc_type.__name__,
        name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def configure_logging(environ: Mapping[str, str] = os.environ) -> str:
    """Set up the ``hookgate`` command's logging at INFO, in the configured format; returns it.

    Raises:
        ConfigError: ``HOOKGATE_LOG_FORMAT`` is neither ``text`` nor ``json``.
    """
    chosen = log_format(environ)
    if chosen == JSON:
        _use_json(sys.stderr, logging.INFO)
    else:
        logging.basicConfig(level=logging.INFO, format=TEXT_LINE)
    quiet_http_client_logs()
    return chosen


def uvicorn_log_config(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """uvicorn's ``log_config``: its own in text; in JSON, its loggers hand every line to the root
    logger's JSON handler instead of printing them in their own format."""
    if log_format(environ) == TEXT:
        from uvicorn.config import LOGGING_CONFIG  # imported here: most commands never serve

        return LOGGING_CONFIG
    through_root = {"handlers": [], "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {"uvicorn": {**through_root, "level": "INFO"}, "uvicorn.access": through_root},
    }


def configure_dramatiq_parent(environ: Mapping[str, str] = os.environ) -> None:
    """In JSON, install the JSON handler in Dramatiq's parent process before its CLI runs.

    Its ``logging.basicConfig`` then changes nothing (the root logger has a handler), so its own
    lines (booting, signals, a worker that died) are JSON. In text, Dramatiq sets up its format.
    """
    if log_format(environ) == JSON:
        _use_json(sys.stderr, logging.INFO)


def configure_worker_process(environ: Mapping[str, str] = os.environ) -> None:
    """In JSON, install the JSON handler in a Dramatiq worker process (from :mod:`workers.main`).

    Dramatiq's CLI has set up its text format there, on ``sys.stderr``, which it made a pipe to
    its parent that writes out what comes through it (as it does the child's ``sys.stdout``). The
    handler takes that pipe, at the level Dramatiq chose, and anything else printed there (a
    handler's ``print``, a library's stray output) becomes a line of the log too.
    """
    if log_format(environ) != JSON:
        return
    pipe = sys.stderr
    _use_json(pipe, None)
    sys.stdout = cast(TextIO, LinesToLog(logging.getLogger("stdout"), logging.INFO, pipe))
    sys.stderr = cast(TextIO, LinesToLog(logging.getLogger("stderr"), logging.WARNING, pipe))


class LinesToLog(io.TextIOBase):
    """A text stream whose each line becomes a log record of ``logger`` at ``level``.

    Lines are gathered per thread, so that two threads printing at once do not mix theirs. What
    logging itself writes while it handles a line (its report of a failing handler) goes straight
    to ``fallback``, not round again.
    """

    def __init__(self, logger: logging.Logger, level: int, fallback: TextIO) -> None:
        self.logger = logger
        self.level = level
        self.fallback = fallback
        self._local = threading.local()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def fileno(self) -> int:
        """The stream's own descriptor, for code that needs one (``faulthandler``): what is written
        there directly is not a log line."""
        return self.fallback.fileno()

    def write(self, text: str) -> int:
        if getattr(self._local, "busy", False):
            return self.fallback.write(text)
        *lines, self._local.pending = (getattr(self._local, "pending", "") + text).split("\n")
        self._local.busy = True
        try:
            for line in lines:
                if line.strip():
                    self.logger.log(self.level, line)
        finally:
            self._local.busy = False
        return len(text)
