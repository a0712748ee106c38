"""Traces (OpenTelemetry, optional): one trace shows an event from its POST to each handler.

With the ``otel`` extra installed (``pip install 'hookgate[otel]'``) and the environment asking
for traces (see :func:`requested`), each process exports these spans:

* ``POST /webhooks/{provider}`` (SERVER), one per request, after OTel's HTTP conventions, with
  two kinds of child: ``verify`` (the signature check) and ``commit`` (one per event: the wait
  for the group commit of the batch that holds it);
* ``INSERT hookgate_events`` (CLIENT, a database span), one per group commit on the committer
  thread: a trace of its own, linked to the span of every request it commits;
* ``process hookgate`` (CONSUMER), one per event a worker processes, after OTel's messaging
  conventions, whose parent is the span of the request that stored the event;
* ``GET`` (CLIENT), the reconciliation fetch, and ``handler NAME`` (INTERNAL), one per handler
  call, both children of the event's ``process`` span.

The trace context travels in the store, not in the broker message: the intake writes the request
span's W3C ``traceparent`` and ``tracestate`` into the event's row and the worker reads them back.
A message re-sent by the recovery sweep, or a retry, is the same row: it stays in the same trace.

Nothing of an event's body or headers, no signature and no secret becomes an attribute; URLs are
recorded without their query (an API key may sit there), fragment or credentials; an exception
is recorded as an event (type, message, traceback) only on handler spans, elsewhere as its type.

Off, the intake pays nothing: this module imports nothing of OpenTelemetry, :data:`on` stays
false, and the intake's call sites test it before doing anything (or were wired at start-up
without tracing). Nothing is written to the new columns then (NULL). On, a request the sampler
leaves out gets no child spans; its context is stored all the same, marked unsampled, so that the
workers leave the event out too (their default sampler follows the parent's decision).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .logs import log_context

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, SpanContext, Tracer
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("hookgate.tracing")

#: Whether this process traces. Read at every intake call site, so that with tracing off a request
#: pays an attribute lookup and nothing else.
on = False
_tracer: Tracer | None = None
_provider: TracerProvider | None = None

#: Either of these set (to a collector's URL) turns traces on, exported with OTLP.
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
#: The ``OTEL_TRACES_EXPORTER`` values Hookgate understands (``none`` turns traces off).
EXPORTERS = ("otlp", "console", "none")
ROUTE = "/webhooks/{provider}"
MESSAGING_SYSTEM = "dramatiq"
#: The queue every event message goes to (``gateway.queue.QUEUE_NAME``, not imported: the broker
#: modules are not needed to trace).
DESTINATION = "hookgate"
EVENTS_TABLE = "hookgate_events"
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})

#: What a tracing block hands its body: a call that records a result on its span.
Note = Callable[..., None]


def _ignore(*args: object, **kwargs: object) -> None:
    """The note of a block that traces nothing."""


#: A block that traces nothing, for call sites where tracing is off.
NOTHING: contextlib.nullcontext[Note] = contextlib.nullcontext(_ignore)


# -- turning it on ----------------------------------------------------------------------------


def requested(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces: ``OTEL_TRACES_EXPORTER`` set to anything but
    ``none``, or an OTLP endpoint set (:data:`ENDPOINT_VARIABLES`); never with
    ``OTEL_SDK_DISABLED=true``."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    names = _exporter_names(environ)
    if names:
        return any(name != "none" for name in names)
    return any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def configure(service: str, *, exporter: SpanExporter | None = None) -> bool:
    """Turn traces on in this process if the environment asks for them; whether they are on.

    ``service`` is the ``service.name`` unless ``OTEL_SERVICE_NAME`` (or ``OTEL_RESOURCE_ATTRIBUTES``)
    gives one. The OTel SDK reads its other variables itself (sampler, batch delays, the OTLP
    endpoint, headers and timeout). ``exporter`` (for tests) gets every span as it ends, whatever
    the environment says, and the process-wide tracer provider is left alone.

    Raises:
        ConfigError: ``OTEL_TRACES_EXPORTER`` names an exporter Hookgate does not ship, or OTLP
            over gRPC is asked for.
    """
    global on, _tracer, _provider
    if exporter is None and not requested():
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        processors = [SimpleSpanProcessor(exporter)] if exporter else [BatchSpanProcessor(e) for e in _exporters()]
    except ImportError as exc:
        asking = "OTEL_TRACES_EXPORTER" if _exporter_names(os.environ) else "the OTLP endpoint"
        log.warning(
            "%s asks for traces, but %s is not installed: pip install 'hookgate[otel]'; tracing stays off",
            asking,
            exc.name,
        )
        return False
    provider = TracerProvider(resource=_resource(service))
    for processor in processors:
        provider.add_span_processor(processor)
    if exporter is None:  # handlers' own spans (trace.get_tracer) then nest under theirs
        trace.set_tracer_provider(provider)
    _provider, _tracer, on = provider, provider.get_tracer("hookgate"), True
    return True


def shutdown() -> None:
    """Export the spans still waiting, and turn traces off (a process's end, or a test's)."""
    global on, _tracer, _provider
    provider, _provider, _tracer, on = _provider, None, None, False
    if provider is not None:
        provider.shutdown()


def _exporter_names(environ: Mapping[str, str]) -> list[str]:
    return [name.strip() for name in environ.get("OTEL_TRACES_EXPORTER", "").lower().split(",") if name.strip()]


def _exporters() -> list[SpanExporter]:
    names = _exporter_names(os.environ) or ["otlp"]
    unknown = [name for name in names if name not in EXPORTERS]
    if unknown:
        raise ConfigError([f"OTEL_TRACES_EXPORTER={','.join(names)!r}: use otlp, console or none"])
    exporters: list[SpanExporter] = []
    if "otlp" in names:
        protocols = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
        variable = next((name for name in protocols if os.environ.get(name)), None)
        if variable is not None and os.environ[variable].strip() != "http/protobuf":
            raise ConfigError(
                [
                    f"{variable}={os.environ[variable]!r}: Hookgate exports OTLP over HTTP (http/protobuf) "
                    "only; point OTEL_EXPORTER_OTLP_ENDPOINT at the collector's HTTP port (4318)"
                ]
            )
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporters.append(OTLPSpanExporter())
    if "console" in names:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        exporters.append(ConsoleSpanExporter())
    return exporters


def _resource(service: str) -> Any:
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    configured = Resource.create()
    if str(configured.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        return Resource.create({SERVICE_NAME: service})
    return configured


# -- spans ------------------------------------------------------------------------------------


def _active() -> Tracer:
    assert _tracer is not None, "tracing is off: configure() it first"
    return _tracer


@contextlib.contextmanager
def _span(
    name: str,
    kind: str = "INTERNAL",
    attributes: Mapping[str, Any] | None = None,
    *,
    context: Context | None = None,
    exception_event: bool = False,
) -> Iterator[Span]:
    """A current span that, when its block raises (``BaseException`` too: a handler's time limit
    is one), gets ``error.type`` and an error status; the exception's text only as an event, and
    only when ``exception_event``. OTel's own handling would put the text in the status."""
    from opentelemetry.trace import SpanKind

    with _active().start_as_current_span(
        name,
        context=context,
        kind=SpanKind[kind],
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as exc:
            if exception_event:
                span.record_exception(exc)
            _failed(span, type(exc).__qualname__)
            raise


def _failed(span: Span, error_type: str | None, description: str | None = None) -> None:
    from opentelemetry.trace import Status, StatusCode

    if error_type is not None:
        span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, description))


def _trace_id(span: Span) -> str | None:
    context = span.get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def _stored_context(traceparent: str | None, tracestate: str | None) -> Context | None:
    """The context a stored event's ``traceparent``/``tracestate`` describe; ``None`` if none."""
    if not traceparent:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": traceparent, "tracestate": tracestate or ""})


# -- the intake ---------------------------------------------------------------------------------


def traced_webhooks(app: ASGIApp, providers: Collection[str]) -> ASGIApp:
    """The webhook endpoint ``app`` with a SERVER span around each request.

    Named and described as OTel's HTTP server conventions say, from the request line and the
    connection only: no header but ``User-Agent``, never the query. A sender's own ``traceparent``
    is not followed (senders are outside parties); each request starts a trace. A 5xx answer or
    an exception is an error. The intake's log lines in the request carry its ``trace_id``.
    """
    from opentelemetry.trace import SpanKind

    tracer = _active()

    async def webhooks(scope: Scope, receive: Receive, send: Send) -> None:
        answered = 0

        async def noting(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = message["status"]
            await send(message)

        method = scope["method"] if scope["method"] in HTTP_METHODS else "_OTHER"
        with (
            tracer.start_as_current_span(
                f"{'HTTP' if method == '_OTHER' else method} {ROUTE}",
                kind=SpanKind.SERVER,
                attributes=_server_attributes(scope, method, providers),
                record_exception=False,
                set_status_on_exception=False,
            ) as span,
            log_context(trace_id=_trace_id(span)),
        ):
            try:
                await app(scope, receive, noting)
            except Exception as exc:
                _failed(span, type(exc).__qualname__)
                raise
            span.set_attribute("http.response.status_code", answered)
            if answered >= 500:
                _failed(span, str(answered))

    return webhooks


def _server_attributes(scope: Scope, method: str, providers: Collection[str]) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "http.route": ROUTE,
        "url.scheme": scope.get("scheme", "http"),
        "url.path": scope["path"],
        "network.protocol.version": scope.get("http_version", "1.1"),
    }
    if server := scope.get("server"):
        attributes["server.address"], attributes["server.port"] = server[0], server[1]
    if client := scope.get("client"):
        attributes["client.address"], attributes["client.port"] = client[0], client[1]
    for name, value in scope["headers"]:
        if name == b"user-agent":
            attributes["user_agent.original"] = value.decode("latin-1")
            break
    provider = scope["path"][len("/webhooks/") :].removesuffix("/")
    if provider in providers:
        attributes["hookgate.provider"] = provider
    return attributes


def verifying(provider: str) -> contextlib.AbstractContextManager[Any]:
    """The ``verify`` span around a provider's signature check; a refusal is an error. None in a
    request the sampler left out."""
    if not _request_recorded():
        return NOTHING
    return _span("verify", attributes={"hookgate.provider": provider})


def _request_recorded() -> bool:
    """Whether the current span (the request's) is recorded: the children of one the sampler left
    out would not be, and they cost about as much to make as recorded ones."""
    from opentelemetry import trace

    return trace.get_current_span().is_recording()


def commit_waits(submit: Callable[[dict[str, Any]], Awaitable[str]]) -> Callable[[dict[str, Any]], Awaitable[str]]:
    """``submit`` (the intake's hand-off of one event's row to the group commit), which first
    writes the request span's context into the row, for the worker, then waits for the commit
    in a ``commit`` span that records ``accepted`` or ``duplicate``."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    propagator = TraceContextTextMapPropagator()

    async def traced(row: dict[str, Any]) -> str:
        carrier: dict[str, str] = {}
        propagator.inject(carrier)
        row["traceparent"], row["tracestate"] = carrier.get("traceparent"), carrier.get("tracestate")
        if not _request_recorded():  # stored all the same: the worker then leaves its spans out too
            return await submit(row)
        attributes = {"hookgate.provider": row["provider"], "hookgate.event.id": row["event_id"]}
        with _span("commit", attributes=attributes) as span:
            outcome = await submit(row)
            span.set_attribute("hookgate.outcome", outcome)
            return outcome

    return traced


@contextlib.contextmanager
def committing(rows: Sequence[Mapping[str, Any]], db_system: str) -> Iterator[Note]:
    """The span of one group commit (on the committer thread), linked to the request of each row.

    Its note takes ``inserted`` and ``refused`` counts; a refused row makes it an error.
    """
    with _span(f"INSERT {EVENTS_TABLE}", "CLIENT", _commit_attributes(rows, db_system)) as span:
        if span.is_recording():
            for request in _requests(rows):
                span.add_link(request)
        yield functools.partial(_note_commit, span)


def start_committing(rows: Sequence[Mapping[str, Any]], db_system: str) -> Note:
    """The same span for a batch whose answer comes in another callback of the event loop
    (gateway.child_commit): it is never the current span, and calling its note ends it."""
    from opentelemetry.context import Context
    from opentelemetry.trace import Link, SpanKind

    links = [Link(request) for request in _requests(rows)]
    span = _active().start_span(
        f"INSERT {EVENTS_TABLE}",
        context=Context(),  # a trace of its own, whichever request's callback sends the batch
        kind=SpanKind.CLIENT,
        attributes=_commit_attributes(rows, db_system),
        links=links,
    )

    def note(*, inserted: int, refused: int) -> None:
        _note_commit(span, inserted=inserted, refused=refused)
        span.end()

    return note


def _commit_attributes(rows: Sequence[Mapping[str, Any]], db_system: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "db.system.name": db_system,
        "db.operation.name": "INSERT",
        "db.collection.name": EVENTS_TABLE,
    }
    if len(rows) > 1:
        attributes["db.operation.batch.size"] = len(rows)
    return attributes


def _requests(rows: Sequence[Mapping[str, Any]]) -> Iterator[SpanContext]:
    """The sampled request span of each row, to link the commit to."""
    for row in rows:
        if (request := _sampled_request(row["traceparent"])) is not None:
            yield request


def _note_commit(span: Span, *, inserted: int, refused: int) -> None:
    span.set_attribute("hookgate.rows.inserted", inserted)
    if refused:
        span.set_attribute("hookgate.rows.refused", refused)
        _failed(span, "refused")


def _sampled_request(traceparent: str | None) -> SpanContext | None:
    """The request span a ``traceparent`` written by :func:`commit_waits` names, if it is sampled.

    Read by hand (it is always version ``00``, written here): the propagator's parser cost about
    ten microseconds a row, on every row of every batch.
    """
    if not traceparent:
        return None
    from opentelemetry.trace import SpanContext, TraceFlags

    _, trace_id, span_id, flags = traceparent.split("-")
    trace_flags = TraceFlags(int(flags, 16))
    if not trace_flags.sampled:
        return None
    return SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=trace_flags)


# -- the workers --------------------------------------------------------------------------------


@contextlib.contextmanager
def processing(row: Any, message_id: str | None) -> Iterator[Note]:
    """The ``process`` span of one stored event (a row of ``events``), child of the span of the
    request that stored it; ``message_id`` is the broker message that claimed it, if one did
    (a resource pass claims the resource's events itself). Log lines in it carry its ``trace_id``.
    """
    if not on:
        yield _ignore
        return
    attributes: dict[str, Any] = {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": DESTINATION,
        "hookgate.provider": row.provider,
        "hookgate.event.id": row.event_id,
        "hookgate.event.type": row.event_type,
        "hookgate.attempt": row.attempts,
    }
    if message_id is not None:
        attributes["messaging.message.id"] = message_id
    if row.resource_id is not None:
        attributes["hookgate.resource.id"] = row.resource_id
    parent = _stored_context(row.traceparent, row.tracestate)
    with (
        _span(f"process {DESTINATION}", "CONSUMER", attributes, context=parent) as span,
        log_context(trace_id=_trace_id(span)),
    ):
        yield _ignore


def settled(status: str, *, failed: bool = False) -> None:
    """Record what this try left of the event (its new status) on the current ``process`` span;
    a failed try (retried or not) is an error."""
    if not on:
        return
    from opentelemetry import trace

    span = trace.get_current_span()
    span.set_attribute("hookgate.event.status", status)
    if failed:
        _failed(span, None, "the try failed; retried later" if status != "failed" else "failed for good")


def handler_call(name: str) -> contextlib.AbstractContextManager[Any]:
    """The span of one handler call; a raise (or its time limit) is an error with an exception event."""
    if not on:
        return NOTHING
    return _span(f"handler {name}", attributes={"hookgate.handler": name}, exception_event=True)


@contextlib.contextmanager
def fetching(url: str) -> Iterator[Note]:
    """The CLIENT span of a reconciliation ``GET url``; its note takes the answer's status code.

    ``url.full`` is the URL without its query, fragment and credentials: an API key may be in the
    query. The request carries no trace header: the API is an outside party.
    """
    if not on:
        yield _ignore
        return
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    attributes = {
        "http.request.method": "GET",
        "url.full": f"{parts.scheme}://{host}{parts.path}",
        "server.address": parts.hostname or "",
        "server.port": parts.port or (443 if parts.scheme == "https" else 80),
    }
    with _span("GET", "CLIENT", attributes) as span:

        def answered(status: int) -> None:
            span.set_attribute("http.response.status_code", status)
            if status >= 400:
                _failed(span, str(status))

        yield answered
