"""The HTTP intake: ``POST /webhooks/{provider}`` and the health, readiness and metrics routes.

Checks run cheapest first (route, method, encoding, size, signature, parse) and each refusal has
one answer, mapped here and nowhere else. Nothing is acknowledged before it is committed: the
200 comes back from :class:`~gateway.ingest.Ingestor` after the batch holding the event commits.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from providers import DeliveryRejected

from .config import Config, ProviderEntry
from .database import create_schema, ping
from .errors import StoreUnavailable
from .ingest import Ingestor
from .models import RECEIVED
from .queue import EventQueue, new_token

log = logging.getLogger("hookgate.intake")

#: Seconds a sender is asked to wait before retrying after a 503.
RETRY_AFTER = "5"
MAX_ID_LENGTH = 255


def answer(status_code: int, content: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status_code, headers, media_type="application/json")


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (without reading further) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class Intake:
    """The webhook endpoint's state: providers, store writer and metrics."""

    def __init__(self, config: Config, engine: Engine, event_queue: EventQueue) -> None:
        self.config = config
        self.engine = engine
        self.event_queue = event_queue
        self.ingestor = Ingestor(engine, event_queue)
        self.metric_registry = CollectorRegistry()
        self.deliveries = Counter(
            "hookgate_deliveries",
            "Webhook requests by provider and outcome.",
            ["provider", "outcome"],
            registry=self.metric_registry,
        )
        self.requeue_after = config.workers.requeue_after_seconds

    def count(self, provider: str, outcome: str) -> None:
        self.deliveries.labels(provider, outcome).inc()

    async def webhook(self, request: Request) -> Response:
        name = request.path_params["provider"]
        entry = self.config.providers.get(name)
        if entry is None:
            return answer(404, {"error": "unknown provider"})
        if request.method != "POST":
            return answer(405, {"error": "method not allowed"}, {"Allow": "POST"})
        if request.headers.get("content-encoding", "identity").lower() not in ("identity", ""):
            self.count(name, "unsupported_encoding")
            return answer(415, {"error": "compressed bodies are not accepted"})
        try:
            body = await _read_body(request, entry.max_body_bytes)
        except _TooLarge:
            self.count(name, "too_large")
            return answer(413, {"error": "body too large"}, {"Connection": "close"})
        try:
            delivery = entry.provider.verify(body, request.headers)
        except DeliveryRejected as exc:
            self.count(name, "rejected_signature" if exc.status_code == 401 else "rejected_payload")
            log.info("rejected provider=%s status=%d reason=%s", name, exc.status_code, exc.reason)
            return answer(exc.status_code, {"error": exc.reason})
        if delivery.handshake is not None:
            self.count(name, "handshake")
            shake = delivery.handshake
            return Response(shake.body, shake.status_code, media_type=shake.media_type)
        if max(len(delivery.event_id), len(delivery.event_type), len(delivery.resource_id or "")) > MAX_ID_LENGTH:
            self.count(name, "rejected_payload")
            return answer(400, {"error": f"event id, type or resource id longer than {MAX_ID_LENGTH}"})
        if not self.ingestor.broker_healthy:
            self.count(name, "unavailable")
            return answer(503, {"error": "broker unavailable"}, {"Retry-After": RETRY_AFTER})
        try:
            outcome = await self.ingestor.submit(self._row(name, entry, delivery, body, request))
        except StoreUnavailable:
            self.count(name, "unavailable")
            return answer(503, {"error": "store unavailable"}, {"Retry-After": RETRY_AFTER})
        self.count(name, outcome)
        return answer(200, {"status": outcome, "id": delivery.event_id})

    def _row(self, name: str, entry: ProviderEntry, delivery: Any, body: bytes, request: Request) -> dict[str, Any]:
        kept = entry.provider.stored_headers()
        now = time.time()
        return {
            "provider": name,
            "event_id": delivery.event_id,
            "event_type": delivery.event_type,
            "resource_id": delivery.resource_id,
            "sequence": delivery.sequence,
            "body": body,
            "headers": orjson.dumps({k: v for k, v in request.headers.items() if k in kept}).decode(),
            "received_at": now,
            "status": RECEIVED,
            "attempts": 0,
            "message_id": new_token(),
            "sweep_after": now + self.requeue_after,
            "updated_at": now,
        }

    async def healthz(self, request: Request) -> Response:
        return answer(200, {"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        problems = {}
        for part, check in (("store", lambda: ping(self.engine)), ("broker", self.event_queue.ping)):
            try:
                await run_in_threadpool(check)
            except Exception as exc:
                problems[part] = type(exc).__name__
        if problems:
            return answer(503, {"status": "unavailable", "problems": problems}, {"Retry-After": RETRY_AFTER})
        return answer(200, {"status": "ready"})

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.metric_registry), media_type=CONTENT_TYPE_LATEST)


def create_app(config: Config, engine: Engine, event_queue: EventQueue, *, create_tables: bool = True) -> Starlette:
    """The intake application; its lifespan starts and stops the batch writer."""
    intake = Intake(config, engine, event_queue)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if create_tables:
            await run_in_threadpool(create_schema, engine)
        # The start-up heap (SQLAlchemy, SQLModel, pydantic: hundreds of thousands of objects)
        # never becomes garbage; a full collection walking it paused the loop for ~100 ms under
        # load. Freezing it keeps those passes to a few milliseconds.
        gc.collect()
        gc.freeze()
        intake.ingestor.start()
        try:
            yield
        finally:
            await run_in_threadpool(intake.ingestor.stop)

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    app = Starlette(
        routes=[
            Route("/webhooks/{provider}", intake.webhook, methods=methods),
            Route("/healthz", intake.healthz),
            Route("/readyz", intake.readyz),
            Route("/metrics", intake.metrics),
        ],
        lifespan=lifespan,
    )
    app.state.intake = intake
    return app
