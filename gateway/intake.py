"""The HTTP intake: ``POST /webhooks/{provider}``, plus health, readiness and metrics.

Checks run cheapest first (route, method, encoding, size, signature, parse) and each refusal has
one answer, decided here and nowhere else. Nothing is acknowledged before it is committed: the
200 comes back from :class:`~gateway.ingest.Ingestor` after the batch holding the event commits.

Webhook requests are served by plain ASGI code rather than through Starlette's routing,
request and response objects: this is the one path that carries the load, and the framework's
per-request work measured larger than everything Hookgate itself does there. Every other path
is an ordinary Starlette application.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from providers import Delivery, DeliveryRejected, Inbound
from providers.base import COMMON_HEADERS

from . import tracing
from .child_commit import ChildIngestor
from .config import Config, ProviderEntry
from .database import ping
from .errors import ConfigError, InboxFull, StoreUnavailable
from .heap import freeze_startup_heap
from .ingest import ACCEPTED, DUPLICATE, Ingestor
from .metrics import IntakeMetrics
from .models import RECEIVED
from .queue import UNSENT, EventQueue
from .rejections import (
    BAD_REQUEST,
    GENERIC_HEADERS,
    MAX_NAME,
    TOO_LARGE,
    UNKNOWN,
    UNKNOWN_PROVIDER,
    Body,
    RejectionLog,
    cause_of,
    kept_headers,
    printable,
    signature_headers,
)
from .schema import prepare_store
from .server import BODY_RECEIVED
from .settings import DEFAULT_LIMITS, ServerLimits
from .writer_process import WriterProcess

log = logging.getLogger("hookgate.intake")

PREFIX = "/webhooks/"
#: Seconds a sender is asked to wait before retrying after a 503.
RETRY_AFTER = "5"
MAX_ID_LENGTH = 255
#: Sent with an answer given before the body was read: the connection is not reused, so that the
#: rest of the body is not left for the client to trickle on it.
UNREAD = {"Connection": "close"}
#: The headers a refusal keeps for a provider name that is not configured: with their value, by name.
GENERIC_REFUSAL_HEADERS = (frozenset(h.encode() for h in GENERIC_HEADERS), frozenset[bytes]())
#: The largest body size a refusal records (a declared length can be any number of digits).
MAX_RECORDED_SIZE = 2**63 - 1


class Reply(Exception):
    """Raised inside the webhook handler to answer at once with ``status`` and a JSON body."""

    def __init__(
        self,
        status: int,
        content: dict[str, Any],
        headers: dict[str, str] | None = None,
        outcome: str | None = None,
        cause: str = BAD_REQUEST,
    ) -> None:
        super().__init__(status)
        self.status, self.content, self.headers, self.outcome = status, content, headers or {}, outcome
        #: For the rejection log (gateway.rejections): the cause word, and what was read of the body
        #: (None: nothing was, its declared length is recorded).
        self.cause = cause
        self.body: Body | None = None


JSON = b"application/json"


async def send_response(
    send: Send, status: int, body: bytes, headers: dict[str, str], media_type: bytes = JSON
) -> None:
    # A 204 carries no body, so neither length nor type (Discord's webhook events want one).
    raw = [] if status == 204 else [(b"content-type", media_type), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def json_response(status_code: int, content: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status_code, headers, media_type="application/json")


class Intake:
    """The webhook endpoint: providers, the batch writer and the delivery metrics."""

    def __init__(
        self,
        config: Config,
        engine: Engine,
        event_queue: EventQueue,
        limits: ServerLimits = DEFAULT_LIMITS,
        writer: WriterProcess | None = None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.event_queue = event_queue
        self.body_timeout = limits.body_timeout_seconds
        self.largest_body = max((entry.max_body_bytes for entry in config.providers.values()), default=0)
        too_large = [name for name, entry in config.providers.items() if entry.max_body_bytes > limits.inbox_max_bytes]
        if too_large:
            raise ConfigError(
                [f"max_body_bytes of {', '.join(too_large)} is larger than HOOKGATE_INBOX_MAX_BYTES: raise the latter"]
            )
        self.metric_registry = CollectorRegistry()
        self.intake_metrics = IntakeMetrics(self.metric_registry)
        bounds: dict[str, Any] = {
            "max_waiting_rows": limits.inbox_max_rows,
            "max_waiting_bytes": limits.inbox_max_bytes,
            "metrics": self.intake_metrics,
        }
        self.ingestor = (
            ChildIngestor(engine, event_queue, process=writer, **bounds)
            if writer is not None
            else Ingestor(engine, event_queue, **bounds)
        )
        #: Hands a row to the group commit; when tracing, also writes the trace context into it.
        self.submit = tracing.commit_waits(self.ingestor.submit) if tracing.on else self.ingestor.submit
        self._counters: dict[tuple[str, str], Any] = {}
        #: Per provider: the headers stored with its events, and those of them that must not
        #: repeat (the ones it verifies or reads an id, a type or a time from), as bytes.
        self._kept_headers: dict[str, frozenset[bytes]] = {}
        self._single_headers: dict[str, frozenset[bytes]] = {}
        for name, entry in config.providers.items():
            kept = entry.provider.stored_headers()
            self._kept_headers[name] = frozenset(h.encode() for h in kept)
            self._single_headers[name] = frozenset(h.encode() for h in kept - COMMON_HEADERS)
        self.requeue_after = config.workers.requeue_after_seconds
        self.rejection_log = RejectionLog(
            engine,
            per_provider=limits.rejections_per_provider,
            max_waiting=limits.rejections_max_waiting,
            metrics=self.intake_metrics,
        )
        #: Per provider: the headers a refusal keeps with their value, and those it keeps by name
        #: only (see gateway.rejections).
        self._refusal_headers = {
            name: (
                frozenset(h.encode() for h in GENERIC_HEADERS | entry.provider.stored_headers()),
                signature_headers(entry.provider),
            )
            for name, entry in config.providers.items()
        }

    def count(self, provider: str, outcome: str) -> None:
        counter = self._counters.get((provider, outcome))
        if counter is None:
            counter = self._counters[(provider, outcome)] = self.intake_metrics.deliveries.labels(provider, outcome)
        counter.inc()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry for ``/webhooks/...``."""
        name = scope["path"][len(PREFIX) :].removesuffix("/")
        try:
            status, body, media_type = await self.handle(name, scope, receive)
        except Reply as reply:
            if reply.outcome:
                self.count(name, reply.outcome)
            if 400 <= reply.status < 500:
                self.note_refusal(name, scope, reply)
            await send_response(send, reply.status, orjson.dumps(reply.content), reply.headers)
            return
        await send_response(send, status, body, {}, media_type)

    def note_refusal(self, name: str, scope: Scope, reply: Reply) -> None:
        """Queue a 4xx refusal for the rejection log (no I/O here). Names that are not configured
        share the :data:`~gateway.rejections.UNKNOWN` bucket, the name itself in ``detail``."""
        policy = self._refusal_headers.get(name)
        if policy is None:
            provider, detail, policy = UNKNOWN, f"provider {printable(name, MAX_NAME)!r}", GENERIC_REFUSAL_HEADERS
        else:
            provider, detail = name, str(reply.content.get("error", ""))
        client = scope.get("client")
        body = reply.body or Body(declared_length(scope["headers"]))
        headers = kept_headers(scope["headers"], *policy)
        self.rejection_log.record(
            provider, reply.status, reply.cause, detail, headers, body, client[0] if client else None
        )

    async def handle(self, name: str, scope: Scope, receive: Receive) -> tuple[int, bytes, bytes]:
        """The answer to a webhook request: status, body and media type (refusals raise Reply)."""
        entry = self.config.providers.get(name)
        if entry is None:
            raise Reply(404, {"error": "unknown provider"}, UNREAD, cause=UNKNOWN_PROVIDER)
        method = scope["method"]
        if method != "POST" and not (method == "GET" and entry.provider.accepts_get):
            allowed = "GET, POST" if entry.provider.accepts_get else "POST"
            raise Reply(405, {"error": "method not allowed"}, {"Allow": allowed, **UNREAD})
        headers = Headers(scope=scope)
        if headers.get("content-encoding", "identity").lower() not in ("identity", ""):
            raise Reply(415, {"error": "compressed bodies are not accepted"}, UNREAD, outcome="unsupported_encoding")
        stored = self.stored_headers(name, scope["headers"])
        received = scope.get(BODY_RECEIVED, False)
        body = await self.read_body(headers, receive, entry.max_body_bytes, self.body_timeout, received)
        try:
            return await self.handle_body(name, entry, scope, headers, stored, body)
        except Reply as reply:
            if reply.status < 500:  # a refusal: the rejection log keeps the body's size and hash
                reply.body = Body.of(body)
            raise

    async def handle_body(
        self, name: str, entry: ProviderEntry, scope: Scope, headers: Headers, stored: str, body: bytes
    ) -> tuple[int, bytes, bytes]:
        """The answer once the body is read: verified, parsed, then stored (refusals raise Reply)."""
        method = scope["method"]
        try:
            url = request_url(scope, headers) if entry.provider.reads_url else ""
            with tracing.verifying(name) if tracing.on else tracing.NOTHING:
                delivery = entry.provider.verify_request(Inbound(body, headers, url, method))
        except DeliveryRejected as exc:
            log.info(
                "rejected provider=%s status=%d reason=%s", name, exc.status_code, exc.reason, extra={"provider": name}
            )
            outcome = "rejected_signature" if exc.status_code == 401 else "rejected_payload"
            raise Reply(exc.status_code, {"error": exc.reason}, outcome=outcome, cause=cause_of(exc)) from None
        if delivery.handshake is not None:  # answered as the provider expects, never stored
            self.count(name, "handshake")
            shake = delivery.handshake
            return shake.status_code, shake.body, shake.media_type.encode()
        parts = delivery.batch or (delivery,)
        if len(parts) > self.ingestor.max_waiting_rows:  # could never be stored whole: not worth a retry
            raise Reply(
                413,
                {"error": f"more than {self.ingestor.max_waiting_rows} events in one request"},
                outcome="too_large",
                cause=TOO_LARGE,
            )
        # A control character or a sequence past 64 bits would fail the whole group commit; every
        # type refuses them already (providers.payload), as the property test asserts for each.
        for part in parts:
            if max(len(part.event_id), len(part.event_type), len(part.resource_id or "")) > MAX_ID_LENGTH:
                raise Reply(
                    400,
                    {"error": f"event id, type or resource id longer than {MAX_ID_LENGTH}"},
                    outcome="rejected_payload",
                )
        if not self.ingestor.broker_healthy:
            raise Reply(503, {"error": "broker unavailable"}, {"Retry-After": RETRY_AFTER}, outcome="unavailable")
        try:
            # A batch's events are committed each on its own; if any is not, the 503 makes the
            # sender post the batch again, and the ones already stored are then duplicates.
            submits = [self.submit(self.row(name, entry, part, part.body or body, stored)) for part in parts]
            outcomes = [await submits[0]] if len(submits) == 1 else await asyncio.gather(*submits)
        except InboxFull:
            raise Reply(
                503, {"error": "intake overloaded"}, {"Retry-After": RETRY_AFTER}, outcome="overloaded"
            ) from None
        except StoreUnavailable:
            raise Reply(
                503, {"error": "store unavailable"}, {"Retry-After": RETRY_AFTER}, outcome="unavailable"
            ) from None
        for outcome in outcomes:
            self.count(name, outcome)
        if delivery.reply is not None:
            return delivery.reply.status_code, delivery.reply.body, delivery.reply.media_type.encode()
        if not delivery.batch:
            return 200, orjson.dumps({"status": outcomes[0], "id": delivery.event_id}), JSON
        answer = {
            "status": ACCEPTED if ACCEPTED in outcomes else DUPLICATE,
            "id": delivery.event_id,
            "events": [{"id": part.event_id, "status": outcome} for part, outcome in zip(parts, outcomes, strict=True)],
        }
        return 200, orjson.dumps(answer), JSON

    def stored_headers(self, name: str, raw: list[tuple[bytes, bytes]]) -> str:
        """The allowlisted headers as stored (JSON), exactly as the provider type reads them.

        A type reads the first value of a header. A second ``X-GitHub-Event`` or signature would
        otherwise be stored beside a verified first one, and handlers reading the stored headers
        would trust the forgery: such a request is refused instead.

        Raises:
            Reply: 400, a header the type verifies or reads appears more than once.
        """
        kept, single = self._kept_headers[name], self._single_headers[name]
        stored: dict[str, str] = {}
        for key, value in raw:
            if key in kept:
                text = key.decode("latin-1")
                if text not in stored:
                    stored[text] = value.decode("latin-1")
                elif key in single:
                    raise Reply(
                        400, {"error": f"header {text} appears more than once"}, UNREAD, outcome="rejected_payload"
                    )
        return orjson.dumps(stored).decode()

    @staticmethod
    async def read_body(
        headers: Headers, receive: Receive, limit: int, timeout: float, received: bool = False
    ) -> bytes:
        """The body, refused (without reading further) as soon as it passes ``limit`` bytes, or
        when it has not all arrived ``timeout`` seconds after the headers (a client trickling it
        would otherwise hold its connection and its buffers for as long as it likes).

        ``received``: the server already holds the whole body (gateway.server's
        ``BODY_RECEIVED``), so reading it cannot wait and needs no clock; a timer per request
        was a measurable share of the event loop's time under load.
        """
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise body_too_large(None)
        chunks: list[bytes] = []
        try:
            if received:
                await read_chunks(receive, limit, chunks)
            else:
                async with asyncio.timeout(timeout):
                    await read_chunks(receive, limit, chunks)
        except TimeoutError:
            late = Reply(408, {"error": "body not received in time"}, {"Connection": "close"}, outcome="body_timeout")
            late.body = Body(sum(map(len, chunks)))
            raise late from None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def row(self, name: str, entry: ProviderEntry, delivery: Delivery, body: bytes, headers: str) -> dict[str, Any]:
        """The stored row of one event; ``headers`` is its allowlisted headers as JSON."""
        now = time.time()
        # An event of a resource waits out its provider's ordering window before it is sent, so
        # that a straggler with a lower sequence is applied first: no message yet, and the
        # recovery sweep sends it when ``sweep_after`` comes (see workers/ordering.py).
        window = entry.window_seconds if delivery.resource_id else 0.0
        held = window > 0
        return {
            "provider": name,
            "event_id": delivery.event_id,
            "event_type": delivery.event_type,
            "resource_id": delivery.resource_id,
            "sequence": delivery.sequence,
            "body": body,
            "headers": headers,
            "received_at": now,
            "status": RECEIVED,
            "attempts": 0,
            "message_id": None if held else UNSENT,  # its token comes with its commit (share_tokens)
            "sweep_after": now + (window if held else self.requeue_after),
            "updated_at": now,
            "traceparent": None,
            "tracestate": None,
        }

    async def healthz(self, request: Request) -> Response:
        failed = self.ingestor.sync_failed
        if failed is not None:  # this process will never acknowledge again: restart it
            return json_response(503, {"status": "failed", "reason": failed})
        return json_response(200, {"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        problems = {}
        if self.ingestor.inbox_full(self.largest_body):  # the writer is stuck or far behind
            problems["intake"] = "InboxFull"
        if self.ingestor.sync_failed is not None:
            problems["intake"] = "SyncFailed"
        for part, check in (("store", lambda: ping(self.engine)), ("broker", self.event_queue.ping)):
            try:
                await run_in_threadpool(check)
            except Exception as exc:
                problems[part] = type(exc).__name__
        if problems:
            return json_response(503, {"status": "unavailable", "problems": problems}, {"Retry-After": RETRY_AFTER})
        return json_response(200, {"status": "ready"})

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.metric_registry), media_type=CONTENT_TYPE_LATEST)


def body_too_large(size: int | None) -> Reply:
    """The 413 for a body past its provider's limit; ``size``: the bytes read (None: none were)."""
    reply = Reply(413, {"error": "body too large"}, UNREAD, outcome="too_large", cause=TOO_LARGE)
    if size is not None:
        reply.body = Body(size)
    return reply


async def read_chunks(receive: Receive, limit: int, chunks: list[bytes]) -> None:
    """Append the request's body chunks to ``chunks`` until the last (see :meth:`Intake.read_body`)."""
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone = Reply(400, {"error": "client disconnected"})
            gone.body = Body(size)
            raise gone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise body_too_large(size)
        chunks.append(chunk)
        more = message.get("more_body", False)


def declared_length(raw: list[tuple[bytes, bytes]]) -> int:
    """The request's ``Content-Length`` (0 when absent or not a number), capped for the store."""
    for key, value in raw:
        if key == b"content-length":
            return min(int(value), MAX_RECORDED_SIZE) if value.isdigit() else 0
    return 0


def request_url(scope: Scope, headers: Headers) -> str:
    """The URL the sender addressed, for types that read it: a proxy's ``X-Forwarded-Proto`` and
    ``X-Forwarded-Host`` (their first value) win over the request's own scheme and ``Host``.

    Raises:
        Reply: 400, the host (or the scheme) does not make a URL: ``[``, a port past 65535...
    """
    scheme = headers.get("x-forwarded-proto", "").split(",")[0].strip() or scope.get("scheme", "http")
    host = headers.get("x-forwarded-host", "").split(",")[0].strip() or headers.get("host", "")
    query = scope.get("query_string", b"").decode("latin-1")
    path = scope.get("raw_path", scope["path"].encode()).decode("latin-1").partition("?")[0]
    url = f"{scheme}://{host}{path}" + (f"?{query}" if query else "")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (validates the port)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise Reply(
            400, {"error": "malformed Host, X-Forwarded-Host or X-Forwarded-Proto header"}, outcome="rejected_payload"
        )
    return url


class HookgateApp:
    """The ASGI application: webhook paths to :class:`Intake`, everything else to Starlette."""

    def __init__(self, intake: Intake, other: Starlette) -> None:
        self.intake = intake
        self.other = other
        self.webhooks: ASGIApp = tracing.traced_webhooks(intake, intake.config.providers) if tracing.on else intake

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            await self.other(scope, receive, send)
            return
        try:
            await self.webhooks(scope, receive, send)
        except Exception:
            # Never a 2xx for something that may not be stored; the sender will retry.
            log.exception("unexpected error in the intake")
            await send_response(send, 500, b'{"error":"internal error"}', {})


def create_app(
    config: Config,
    engine: Engine,
    event_queue: EventQueue,
    *,
    prepare_schema: bool = True,
    limits: ServerLimits = DEFAULT_LIMITS,
    admin_token: str | None = None,
    writer: WriterProcess | None = None,
) -> HookgateApp:
    """The intake application; its lifespan starts and stops the batch writer. With
    ``admin_token``, it also serves the operations console under ``/admin`` (see gateway.admin).
    With ``writer``, batches are written in that process rather than on the committer thread."""
    intake = Intake(config, engine, event_queue, limits, writer)
    admin: list[BaseRoute] = []
    if admin_token:
        from .admin import admin_routes

        admin = admin_routes(config, engine, admin_token)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if prepare_schema:  # an empty store is created; one that is behind stops the start
            await run_in_threadpool(prepare_store, engine, upgrade=False)
        freeze_startup_heap()  # full collections paused the loop ~100 ms under load
        await intake.ingestor.open()
        intake.rejection_log.start()
        try:
            yield
        finally:
            await intake.ingestor.close()
            await run_in_threadpool(intake.rejection_log.stop)

    other = Starlette(
        routes=[
            Route("/healthz", intake.healthz),
            Route("/readyz", intake.readyz),
            Route("/metrics", intake.metrics),
            *admin,
        ],
        lifespan=lifespan,
    )
    return HookgateApp(intake, other)
