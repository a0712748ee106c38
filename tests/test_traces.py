"""Traces: one trace shows an event from its POST through the commit and a real worker process
to the reconciliation fetch and each handler; the sweep's re-sends and the retries stay in it; no
span carries a secret, a signature or a body; off, nothing is traced and nothing is imported.

The in-process intake's spans are collected by the SDK's in-memory exporter; worker and
``serve`` processes export theirs with OTLP/HTTP to a real receiver on 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
import redis
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway import tracing
from gateway.errors import ConfigError
from tests.conftest import Hookgate
from tests.support.fake_api import FakeApi
from tests.support.log_scenario import (
    API_TOKEN,
    QUERY_KEY,
    HookgateCommand,
    ServeProcess,
    configured_secrets,
    signature_digests,
)
from tests.support.otlp import OtlpReceiver, SpanRecord, from_sdk
from tests.support.servers import ROOT, wait_for

#: In every event body and in the API's answer: neither may reach a span.
BODY_MARKER = "body-marker-5e1f-not-for-traces"
API_MARKER = "api-marker-77c2-not-for-traces"
OTEL_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER")


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver().start()
    yield server
    server.stop()


@pytest.fixture
def intake_spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process (the in-process intake's), into memory."""
    exporter = InMemorySpanExporter()
    assert tracing.configure("hookgate-serve", exporter=exporter)
    yield exporter
    tracing.shutdown()


def untraced_env(hookgate: Hookgate) -> dict[str, str]:
    return {name: value for name, value in hookgate.env().items() if not name.startswith("OTEL_")}


@pytest.fixture
def traced_worker(hookgate: Hookgate, receiver: OtlpReceiver) -> Iterator[Callable[..., HookgateCommand]]:
    """Starts ``hookgate worker`` exporting to the receiver, with more variables if given."""
    started: list[HookgateCommand] = []

    def start(**extra: str) -> HookgateCommand:
        env = untraced_env(hookgate) | {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "50"}
        started.append(HookgateCommand(hookgate, "worker", "--threads", "4", env=env | extra))
        return started[-1]

    yield start
    for worker in started:
        worker.stop()


def one(spans: Iterable[SpanRecord]) -> SpanRecord:
    found = list(spans)
    assert len(found) == 1, found
    return found[0]


def children(spans: list[SpanRecord], parent: SpanRecord) -> list[SpanRecord]:
    return [span for span in spans if span.parent_id == parent.span_id and span.trace_id == parent.trace_id]


def stored_parent(hookgate: Hookgate, event_id: str) -> tuple[str, str]:
    """The trace and span id of the event's stored ``traceparent``, which must say "sampled"."""
    version, trace_id, span_id, flags = hookgate.event("acme", event_id).traceparent.split("-")
    assert version == "00"
    assert int(flags, 16) & 1
    return trace_id, span_id


def processed(spans: list[SpanRecord], event_id: str) -> list[SpanRecord]:
    """The ``process`` spans of an event, in the order of its tries."""
    found = [s for s in spans if s.name == "process hookgate" and s.attributes["hookgate.event.id"] == event_id]
    return sorted(found, key=lambda span: span.attributes["hookgate.attempt"])


@pytest.mark.parametrize("writer_process", [False, True], ids=["thread", "writer-process"])
def test_one_trace_spans_the_post_the_commit_the_worker_the_reconciliation_and_each_handler(
    writer_process: bool,
    hookgate: Hookgate,
    fake_api: FakeApi,
    receiver: OtlpReceiver,
    intake_spans: InMemorySpanExporter,
    traced_worker: Callable[..., HookgateCommand],
) -> None:
    hookgate.configure_provider(
        "acme",
        api={
            "base_url": fake_api.url,
            "token": API_TOKEN,
            "resource_path": "/v1/things/{resource}?api_key=" + QUERY_KEY,
        },
    )
    fake_api.states[f"/v1/things/t-1?api_key={QUERY_KEY}"] = {"id": "t-1", "version": 1, "note": API_MARKER}
    hookgate.start_intake(writer_process=writer_process)
    sent: list[tuple[bytes, dict[str, str]]] = []

    def post(event_type: str, event_id: str, data: dict[str, Any], *, secret: str | None = None) -> int:
        acme = hookgate.config.providers["acme"].provider
        body, headers = acme.signed_request(event_type, {**data, "note": BODY_MARKER}, event_id=event_id, secret=secret)
        sent.append((body, headers))
        return hookgate.post("acme", body, headers).status_code

    # An event whose broker message is lost before any worker runs: the sweep sends it again.
    assert post("plain.lost", "lost-1", {}) == 200
    first_token = hookgate.wait_status("acme", "lost-1", "queued").message_id
    client = redis.Redis.from_url(hookgate.redis_url)
    # With Redis an event is written queued as it is stored, before its message is sent.
    wait_for(lambda: client.hexists("hookgate:hookgate.msgs", first_token), what="its message in Redis")
    client.flushall()
    client.close()
    assert post("thing.updated", "ok-1", {"id": "t-1", "version": 1}) == 200  # reconciled, two handlers
    assert post("fail.always", "fail-1", {}) == 200  # one handler raises on each of its 3 tries
    assert post("thing.updated", "forged-1", {"id": "t-2"}, secret="not-the-secret") == 401

    worker = traced_worker(HOOKGATE_LOG_FORMAT="json")
    hookgate.wait_status("acme", "ok-1", "processed")
    assert hookgate.wait_status("acme", "fail-1", "failed").attempts == 3
    assert hookgate.wait_status("acme", "lost-1", "processed").message_id != first_token
    wait_for(
        lambda: [len(processed(receiver.spans(), event)) for event in ("ok-1", "fail-1", "lost-1")] == [1, 3, 1],
        what="the worker's spans",
    )
    assert worker.stop() == 0  # SIGTERM: what is left is exported on the way out
    intake = [from_sdk(span) for span in intake_spans.get_finished_spans()]
    worker_spans = receiver.spans()
    every = intake + worker_spans

    def request_of(event_id: str) -> SpanRecord:
        """The SERVER span of the request that stored the event (the parent of its commit wait)."""
        commit = one(s for s in intake if s.name == "commit" and s.attributes["hookgate.event.id"] == event_id)
        return one(s for s in intake if s.span_id == commit.parent_id)

    # The request: an HTTP server span with a verify and a commit child; its context is stored.
    request = request_of("ok-1")
    assert (request.name, request.kind, request.status, request.service) == (
        "POST /webhooks/{provider}",
        "SERVER",
        "UNSET",
        "hookgate-serve",
    )
    assert request.parent_id is None
    port = int(hookgate.url.rsplit(":", 1)[1])
    attributes = dict(request.attributes)
    assert isinstance(attributes.pop("client.port"), int)
    assert attributes.pop("user_agent.original").startswith("python-httpx/")
    assert attributes == {
        "http.request.method": "POST",
        "http.route": "/webhooks/{provider}",
        "url.scheme": "http",
        "url.path": "/webhooks/acme",
        "network.protocol.version": "1.1",
        "server.address": "127.0.0.1",
        "server.port": port,
        "client.address": "127.0.0.1",
        "hookgate.provider": "acme",
        "http.response.status_code": 200,
    }
    assert sorted((s.name, s.status) for s in children(intake, request)) == [("commit", "UNSET"), ("verify", "UNSET")]
    commit = one(s for s in children(intake, request) if s.name == "commit")
    assert commit.attributes == {
        "hookgate.provider": "acme",
        "hookgate.event.id": "ok-1",
        "hookgate.outcome": "accepted",
    }
    assert stored_parent(hookgate, "ok-1") == (request.trace_id, request.span_id)

    # The group commit: a database span of its own, linked to the requests it committed.
    batch = one(s for s in intake if (request.trace_id, request.span_id) in s.links)
    assert (batch.name, batch.kind, batch.status) == ("INSERT hookgate_events", "CLIENT", "UNSET")
    assert batch.parent_id is None
    assert batch.attributes["db.system.name"] == hookgate.engine.dialect.name
    assert batch.attributes["db.collection.name"] == "hookgate_events"
    assert batch.trace_id != request.trace_id

    # The worker: a consumer span whose parent is the request's, in another process.
    process = one(processed(worker_spans, "ok-1"))
    assert (process.trace_id, process.parent_id) == (request.trace_id, request.span_id)
    assert (process.kind, process.status, process.service) == ("CONSUMER", "UNSET", "hookgate-worker")
    assert process.attributes == {
        "messaging.system": "dramatiq",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "hookgate",
        "hookgate.provider": "acme",
        "hookgate.event.id": "ok-1",
        "hookgate.event.type": "thing.updated",
        "hookgate.resource.id": "t-1",
        "hookgate.attempt": 1,
        "hookgate.event.status": "processed",
    }  # claimed by its resource's pass, not by a message: no messaging.message.id
    # ... and under it, the reconciliation fetch (its URL without the query's key) and each handler.
    fetch, *handlers = sorted(children(worker_spans, process), key=lambda span: span.name)
    assert (fetch.name, fetch.kind, fetch.status) == ("GET", "CLIENT", "UNSET")
    assert fetch.attributes == {
        "http.request.method": "GET",
        "url.full": f"{fake_api.url}/v1/things/t-1",
        "server.address": "127.0.0.1",
        "server.port": fake_api.port,
        "http.response.status_code": 200,
    }
    assert [(h.name, h.kind, h.status, h.attributes["hookgate.handler"]) for h in handlers] == [
        (f"handler tests.support.handlers.{name}", "INTERNAL", "UNSET", f"tests.support.handlers.{name}")
        for name in ("acme_audit", "acme_handler")
    ]

    # A failing handler: each try is an error, in the same trace, its raise an exception event.
    failing = request_of("fail-1")
    tries = processed(worker_spans, "fail-1")
    assert {(t.trace_id, t.parent_id) for t in tries} == {(failing.trace_id, failing.span_id)}
    assert [(t.status, t.attributes["hookgate.event.status"]) for t in tries] == [
        ("ERROR", "queued"),
        ("ERROR", "queued"),
        ("ERROR", "failed"),
    ]
    # Each try came in a message of its own (the retries are sent by the sweep).
    assert len({t.attributes["messaging.message.id"] for t in tries}) == 3
    assert tries[-1].attributes["messaging.message.id"] == hookgate.event("acme", "fail-1").message_id
    raised = [h for t in tries for h in children(worker_spans, t) if h.name.endswith(".acme_handler")]
    assert [(h.status, h.attributes["error.type"]) for h in raised] == [("ERROR", "ValueError")] * 3
    assert [[(name, e["exception.type"]) for name, e in h.events] for h in raised] == [
        [("exception", "ValueError")]
    ] * 3
    sibling = [h for t in tries for h in children(worker_spans, t) if h.name.endswith(".acme_sibling")]
    assert [h.status for h in sibling] == ["UNSET"]  # succeeded on the first try, not run again

    # The event whose message was lost: the sweep's new message runs it in the original trace.
    lost = request_of("lost-1")
    resent = one(processed(worker_spans, "lost-1"))
    assert (resent.trace_id, resent.parent_id) == (lost.trace_id, lost.span_id)
    assert resent.attributes["messaging.message.id"] != first_token

    # A forged signature: a 401 (not a server error) whose verify child is the error.
    forged = one(s for s in intake if s.kind == "SERVER" and s.attributes["http.response.status_code"] == 401)
    assert forged.status == "UNSET"
    check = one(children(intake, forged))
    assert (check.name, check.status, check.attributes["error.type"]) == ("verify", "ERROR", "SignatureRejected")

    # The worker's JSON log lines carry the trace id of the span they were written in.
    def processed_line() -> dict[str, Any] | None:
        lines = [json.loads(line) for line in worker.log.read_text().splitlines() if line.startswith("{")]
        return next((e for e in lines if e["message"].startswith("processed provider=acme event=ok-1")), None)

    assert wait_for(processed_line, what="the processed line")["trace_id"] == request.trace_id

    # No secret, signature, body or API answer in any span.
    forbidden = configured_secrets(hookgate.config_path) | {BODY_MARKER, API_MARKER, QUERY_KEY, API_TOKEN}
    forbidden |= {digest for _, headers in sent for digest in signature_digests(headers)}
    forbidden |= {body.decode() for body, _ in sent}
    leaks = [(span.name, text) for span in every for text in span.texts() if any(f in text for f in forbidden)]
    assert not leaks


def test_a_request_the_sampler_leaves_out_stores_its_context_unsampled_and_makes_no_span(
    hookgate: Hookgate, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    exporter = InMemorySpanExporter()
    assert tracing.configure("hookgate-serve", exporter=exporter)
    try:
        hookgate.start_intake()
        body, headers = hookgate.signed("acme", "plain.unsampled", "unsampled-1", {})
        assert hookgate.post("acme", body, headers).status_code == 200
    finally:
        tracing.shutdown()
    assert exporter.get_finished_spans() == ()
    # The workers' default sampler follows the stored decision: they leave the event out too.
    flags = hookgate.event("acme", "unsampled-1").traceparent.rsplit("-", 1)[1]
    assert not int(flags, 16) & 1


OFF_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import httpx
    from gateway import tracing
    from gateway.config import load_config
    from gateway.database import create_store_engine
    from gateway.intake import create_app
    from gateway.queue import EventQueue, create_broker
    from tests.support.servers import ServerThread

    assert not tracing.configure("hookgate-serve")  # as `hookgate serve` does
    config = load_config(os.environ["HOOKGATE_CONFIG"])
    engine = create_store_engine(os.environ["HOOKGATE_DATABASE_URL"])
    app = create_app(config, engine, EventQueue(create_broker(os.environ["HOOKGATE_REDIS_URL"])))
    server = ServerThread(app).start()
    body, headers = config.providers["acme"].provider.signed_request("plain.off", {}, event_id="off-1")
    started = set(sys.modules)
    assert httpx.post(server.url + "/webhooks/acme", content=body, headers=headers).status_code == 200
    server.stop()
    print(json.dumps({
        "imported by the request": sorted(m for m in set(sys.modules) - started if m.startswith("opentelemetry")),
        "tracing SDK": "opentelemetry.sdk.trace" in sys.modules,
        "W3C propagator": "opentelemetry.trace.propagation.tracecontext" in sys.modules,
    }))
    """
)


def test_off_the_intake_imports_nothing_of_opentelemetry_and_stores_no_context_and_workers_export_nothing(
    hookgate: Hookgate, receiver: OtlpReceiver, traced_worker: Callable[..., HookgateCommand]
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", OFF_SCRIPT], env=untraced_env(hookgate), cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    # (redis-py imports OpenTelemetry's API at start-up when it is installed; the intake, nothing.)
    assert json.loads(done.stdout) == {"imported by the request": [], "tracing SDK": False, "W3C propagator": False}
    stored = hookgate.event("acme", "off-1")
    assert (stored.traceparent, stored.tracestate) == (None, None)

    # An endpoint is set, but the SDK is disabled: the worker traces nothing.
    worker = traced_worker(OTEL_SDK_DISABLED="true")
    hookgate.wait_status("acme", "off-1", "processed")
    assert worker.stop() == 0  # a tracing worker would export its spans on the way out
    assert receiver.spans() == []


def test_serve_traces_when_an_otlp_endpoint_is_set_and_exports_what_waits_when_it_stops(
    hookgate: Hookgate, receiver: OtlpReceiver
) -> None:
    env = untraced_env(hookgate) | {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_SERVICE_NAME": "intake-eu"}
    server = ServeProcess(hookgate, env=env)
    body, headers = hookgate.signed("acme", "plain.served", "served-1", {})
    assert server.post("acme", body, headers) == 200
    assert server.stop() == 0  # before the exporter's 5 s batch delay: the spans leave on SIGTERM
    request = one(span for span in receiver.spans() if span.kind == "SERVER")
    assert (request.service, request.attributes["http.response.status_code"]) == ("intake-eu", 200)
    assert stored_parent(hookgate, "served-1") == (request.trace_id, request.span_id)


@pytest.mark.parametrize(
    ("environ", "traced"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "hookgate"}, False),  # naming the service asks for nothing
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
    ],
)
def test_the_environment_decides_whether_to_trace(environ: dict[str, str], traced: bool) -> None:
    assert tracing.requested(environ) is traced


def test_asked_for_traces_without_the_extra_a_process_warns_and_runs_without_them(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # as if it were not installed
    assert not tracing.configure("hookgate-serve")
    assert not tracing.on
    assert "pip install 'hookgate[otel]'" in caplog.text


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("OTEL_TRACES_EXPORTER", "zipkin", "use otlp, console or none"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", "OTLP over HTTP (http/protobuf) only"),
    ],
)
def test_an_exporter_hookgate_does_not_ship_stops_the_start(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=re.escape(message)):
        tracing.configure("hookgate-serve")
    assert not tracing.on
