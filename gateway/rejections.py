"""The log of refused webhook requests: the latest N per provider, written off the request path.

A 401 used to be a counter and a log line, so nobody could see what was being refused when a
provider rotated its secret. The intake now hands each 4xx refusal to :class:`RejectionLog`:
the request only builds a small entry and appends it to a bounded queue (no I/O, no await); a
thread writes everything waiting in one transaction, then trims each provider it wrote to its
newest ``per_provider`` rows, so a flood of forgeries cannot fill the disk. When the queue is
full, or the store refuses a batch, entries are dropped and counted
(``hookgate_rejections_dropped_total``): the refusals themselves are answered as before.

What an entry keeps: time, provider, status, cause (:data:`CAUSES`), a short detail, the
allowlisted request headers, the body's size and SHA-256, the client's address. Never the body,
never a signature value (a signature header is kept by name, its value ``[redacted]``), never
``Authorization`` or ``Cookie``. Requests for a provider that is not configured share one bucket,
:data:`UNKNOWN`, with the requested name (truncated) in ``detail``: random names cannot add
buckets.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Engine, func, select, text

from providers import DeliveryRejected, SignatureRejected
from providers.base import BaseProvider

from .metrics import IntakeMetrics
from .models import rejections

log = logging.getLogger("hookgate.intake")

SIGNATURE_MISMATCH = "signature_mismatch"
STALE_TIMESTAMP = "stale_timestamp"
MISSING_HEADER = "missing_header"
UNPARSEABLE_BODY = "unparseable_body"
TOO_LARGE = "too_large"
UNKNOWN_PROVIDER = "unknown_provider"
BAD_REQUEST = "bad_request"
#: The stable cause words; ``bad_request`` is anything else refused (405, 415, 408, a repeated
#: header, an id too long, a malformed Host...).
CAUSES = (
    SIGNATURE_MISMATCH,
    STALE_TIMESTAMP,
    MISSING_HEADER,
    UNPARSEABLE_BODY,
    TOO_LARGE,
    UNKNOWN_PROVIDER,
    BAD_REQUEST,
)

#: The provider of every request to a name that is not configured (no provider name can be it).
UNKNOWN = "(unknown)"
REDACTED = "[redacted]"
#: Headers kept for every request, whatever its provider.
GENERIC_HEADERS = frozenset({"content-type", "content-length", "content-encoding", "user-agent", "x-forwarded-for"})
#: Never kept, not even by name.
NEVER_KEPT = frozenset({b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"})
#: Header names that may carry a signature or a secret: kept by name only, wherever they come from.
SECRET_NAME = re.compile(rb"sig|mac|token|secret|password|key|auth", re.IGNORECASE)
MAX_HEADER_VALUE = 256
#: Headers one refusal keeps, and the longest name of one kept only for its name: a request with
#: a thousand ``x-sig-…`` headers adds no more than that to the row.
MAX_HEADERS = 32
MAX_NAME = 64
MAX_DETAIL = 200


def cause_of(exc: DeliveryRejected) -> str:
    """The cause word of a provider type's refusal, from its class and its fixed reason text.

    Reasons are fixed phrases in ``providers`` (``missing X header``, ``timestamp outside the
    tolerance``, ``body is not valid JSON``...); a signature refusal that is none of the first two
    counts as a signature mismatch (a malformed signature header included), a payload refusal that
    does not name a header as an unparseable body.
    """
    reason = exc.reason
    if reason.startswith("missing ") and "header" in reason:
        return MISSING_HEADER
    if isinstance(exc, SignatureRejected):
        return STALE_TIMESTAMP if "tolerance" in reason else SIGNATURE_MISMATCH
    if reason.startswith("request URL"):
        return BAD_REQUEST
    return UNPARSEABLE_BODY


def signature_headers(provider: BaseProvider) -> frozenset[bytes]:
    """The signature header a provider's options name (``signature: {header: …}`` of the
    declarative ``hmac`` type), whatever it is called: kept by name only."""
    signature = provider.settings.options.get("signature")
    header = signature.get("header") if isinstance(signature, Mapping) else None
    return frozenset({header.lower().encode()}) if isinstance(header, str) else frozenset()


def kept_headers(
    raw: Iterable[tuple[bytes, bytes]], allowed: frozenset[bytes], redacted: frozenset[bytes] = frozenset()
) -> dict[str, str]:
    """The request's headers as a refusal keeps them: ``allowed`` ones with their (first, truncated)
    value; ``redacted`` ones and any whose name looks like a signature or a secret by name only."""
    kept: dict[str, str] = {}
    for key, value in raw:
        if key in NEVER_KEPT or len(key) > MAX_NAME:
            continue
        secret = key in redacted or SECRET_NAME.search(key) is not None
        if secret or key in allowed:
            name = key.decode("latin-1")
            if name not in kept:
                kept[name] = REDACTED if secret else value[:MAX_HEADER_VALUE].decode("latin-1")
                if len(kept) == MAX_HEADERS:
                    break
    return kept


def printable(value: str, limit: int) -> str:
    """``value`` cut to ``limit`` characters with anything unprintable replaced, for ``detail``."""
    return "".join(c if c.isprintable() else "?" for c in value[:limit])


@dataclass(frozen=True, slots=True)
class Body:
    """What a refusal knows of the body: its size (read so far, or declared) and, when it was read
    whole, its SHA-256."""

    size: int = 0
    sha256: str | None = None

    @classmethod
    def of(cls, data: bytes) -> Body:
        return cls(len(data), hashlib.sha256(data).hexdigest())


class RejectionLog:
    """A bounded queue of refusals and the thread that writes them in batches.

    Args:
        engine: the store.
        per_provider: rows kept per provider (the newest, by id).
        max_waiting: entries waiting to be written; past it new ones are dropped and counted.
        max_batch: the most entries in one transaction.
        pause: seconds the writer rests after a batch, so that refusals gather into larger ones.
        metrics: where drops are counted.
    """

    #: Seconds between two warnings about dropped entries.
    WARN_EVERY = 60.0

    def __init__(
        self,
        engine: Engine,
        *,
        per_provider: int = 1000,
        max_waiting: int = 10_000,
        max_batch: int = 500,
        pause: float = 0.2,
        metrics: IntakeMetrics | None = None,
    ) -> None:
        self.engine = engine
        self.per_provider = per_provider
        self.max_batch = max_batch
        self.pause = pause
        self.metrics = metrics
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=max_waiting)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        #: Entries dropped since the last warning, by reason; read and reset by the writer thread.
        self._dropped: dict[str, int] = {}
        self._dropped_lock = threading.Lock()
        self._warned_at = -self.WARN_EVERY
        self._last_error = ""
        #: Entries written so far (the writer thread's count; trimmed ones included).
        self.written = 0

    def record(
        self,
        provider: str,
        status: int,
        cause: str,
        detail: str,
        headers: dict[str, str],
        body: Body,
        source: str | None,
    ) -> None:
        """Queue one refusal; never blocks and never touches the store."""
        entry = {
            "at": time.time(),
            "provider": provider,
            "status": status,
            "cause": cause,
            "detail": printable(detail, MAX_DETAIL),
            "headers": orjson.dumps(headers).decode(),
            "body_bytes": body.size,
            "body_sha256": body.sha256,
            "source": source[:255] if source else None,
        }
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self._drop("queue_full", 1)

    def _drop(self, reason: str, count: int) -> None:
        with self._dropped_lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + count
        if self.metrics is not None:
            self.metrics.rejections_dropped.labels(reason).inc(count)

    # -- writer thread --------------------------------------------------------------------

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="hookgate-rejections", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is waiting (within ``timeout``), then stop the thread."""
        if self._thread is not None:
            self._stopping.set()
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch:
                self.write(batch)
                # Under a flood, fewer and larger transactions: on SQLite every one of them takes
                # the write lock the group commit of accepted events needs.
                self._stopping.wait(self.pause)
            self._warn()
            if not batch and self._stopping.is_set():
                return

    def _take(self) -> list[dict[str, Any]]:
        """Everything waiting, up to ``max_batch``; waits up to half a second for the first."""
        try:
            batch = [self._queue.get(timeout=0.5)]
        except queue.Empty:
            return []
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def write(self, batch: list[dict[str, Any]]) -> None:
        """Insert ``batch`` in one transaction, then trim each of its providers to its newest
        ``per_provider`` rows, one DELETE each.

        The trim runs after the insert has committed, so that with several writers (intake
        processes) the last trim to start sees every row inserted before it and leaves exactly
        the newest N; a trim that fails is done by the provider's next batch.
        """
        try:
            with self.engine.begin() as conn:
                conn.execute(rejections.insert(), batch)
        except Exception as exc:
            self._last_error = type(exc).__name__  # reported with the drops, once a minute at most
            self._drop("store_error", len(batch))
            return
        try:
            with self.engine.begin() as conn:
                for provider in sorted({entry["provider"] for entry in batch}):
                    conn.execute(_TRIM, {"provider": provider, "keep": self.per_provider})
        except Exception as exc:
            log.warning("refused requests not trimmed: store unavailable: %s", type(exc).__name__)
        finally:
            self.written += len(batch)

    def _warn(self) -> None:
        now = time.monotonic()
        if self._dropped and now - self._warned_at >= self.WARN_EVERY:
            with self._dropped_lock:
                dropped, self._dropped = self._dropped, {}
            self._warned_at = now
            counts = ", ".join(f"{count} ({reason})" for reason, count in sorted(dropped.items()))
            cause = f"; the store answered {self._last_error}" if "store_error" in dropped else ""
            log.warning("refused requests left out of the rejection log: %s%s", counts, cause)


#: Deletes a provider's rows older than its ``keep`` newest (nothing while it has fewer).
_TRIM = text(
    f"DELETE FROM {rejections.name} WHERE provider = :provider AND id <= ("  # noqa: S608
    f"SELECT id FROM {rejections.name} WHERE provider = :provider ORDER BY id DESC LIMIT 1 OFFSET :keep)"
)


def _as_dict(row: Any) -> dict[str, Any]:
    item = dict(row._mapping)
    item.pop("id")
    item["headers"] = orjson.loads(item["headers"])
    return item


def recent(engine: Engine, provider: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The latest refusals, newest first, of ``provider`` (``"(unknown)"`` for names not
    configured) or of every provider; ``headers`` is a dict."""
    query = select(rejections).order_by(rejections.c.id.desc()).limit(limit)
    if provider is not None:
        query = query.where(rejections.c.provider == provider)
    with engine.connect() as conn:
        return [_as_dict(row) for row in conn.execute(query)]


def count_since(engine: Engine, provider: str | None, cause: str, since: float) -> int:
    """Refusals for ``cause`` at or after ``since`` (Unix time), of ``provider`` or of all."""
    query = select(func.count()).select_from(rejections).where(rejections.c.cause == cause, rejections.c.at >= since)
    if provider is not None:
        query = query.where(rejections.c.provider == provider)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())
