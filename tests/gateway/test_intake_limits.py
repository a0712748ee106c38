"""What a slow, bloated or overwhelming client can hold of ``serve``: connections, time, memory.

Each test runs the real intake under uvicorn with the protocol and limits ``serve`` uses, made
small so that a limit is reached in a second or two, and talks to it over raw sockets.
"""

from __future__ import annotations

import concurrent.futures
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
import stripe

from gateway.database import create_store_engine
from gateway.errors import ConfigError
from gateway.intake import create_app
from gateway.queue import EventQueue, create_broker
from gateway.settings import ServerLimits
from tests.conftest import STRIPE_SECRET, Hookgate
from tests.support.raw_http import hold_commits, raw_request
from tests.support.servers import ServerThread, wait_for

TIGHT = ServerLimits(
    max_connections=8,
    header_timeout_seconds=1.0,
    body_timeout_seconds=1.0,
    max_header_bytes=4096,
    inbox_max_rows=10,
    inbox_max_bytes=200_000,
)


@pytest.fixture
def serve(hookgate: Hookgate) -> Iterator[Callable[[ServerLimits], ServerThread]]:
    servers: list[ServerThread] = []

    def start(limits: ServerLimits) -> ServerThread:
        engine = create_store_engine(hookgate.database_url)
        app = create_app(hookgate.config, engine, EventQueue(create_broker(hookgate.redis_url)), limits=limits)
        servers.append(ServerThread(app, limits).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def connect(server: ServerThread, send_buffer: int | None = None) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.socket()
    if send_buffer is not None:  # set before connecting, so the kernel never autotunes it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    sock.settimeout(15)
    sock.connect((host, int(port)))
    return sock


def answer_of(sock: socket.socket) -> tuple[int, bytes]:
    """Read until the server closes: the status and the body (fails if it never closes)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def signed_stripe(event_id: str, size: int = 0) -> tuple[bytes, list[tuple[str, str]]]:
    body = orjson.dumps(
        {"id": event_id, "object": "event", "type": "invoice.paid", "created": 1, "data": {"object": {"id": "in_1"}}}
    )
    body = body[:-1] + b',"pad":"' + b"x" * size + b'"}'
    signature = stripe.WebhookSignature.generate_signature_header(body.decode(), STRIPE_SECRET)
    return body, [("Stripe-Signature", signature), ("Content-Type", "application/json")]


def test_a_body_that_does_not_arrive_is_408_and_the_connection_closed(serve: Any) -> None:
    server = serve(TIGHT)
    trickling = []
    for _ in range(TIGHT.max_connections - 2):
        sock = connect(server)
        sock.sendall(b'POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"id":')
        trickling.append(sock)
    started = time.monotonic()
    for sock in trickling:
        status, body = answer_of(sock)
        assert status == 408
        assert b"body not received in time" in body
    assert time.monotonic() - started < 10  # every one was let go, not held until the client quit


def test_headers_that_do_not_arrive_are_408_and_the_connection_closed(serve: Any) -> None:
    server = serve(TIGHT)
    silent, trickling = connect(server), connect(server)
    trickling.sendall(b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\n")
    for sock in (silent, trickling):
        status, body = answer_of(sock)
        assert (status, body) == (408, b'{"error":"headers not received in time"}')


@pytest.mark.parametrize("pieces", [1, 16], ids=["at-once", "in-pieces"])
def test_headers_past_the_limit_are_431(serve: Any, pieces: int) -> None:
    server = serve(TIGHT)
    sock = connect(server)
    head = b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-Pad-%d: %s\r\n" % (i, b"a" * 500) for i in range(20)
    )
    step = len(head) // pieces + 1
    try:
        for start in range(0, len(head), step):
            sock.sendall(head[start : start + step])
        sock.sendall(b"Content-Length: 2\r\n\r\n{}")
    except OSError:
        pass  # closed while still sending: the answer is already waiting
    status, body = answer_of(sock)
    assert (status, body) == (431, b'{"error":"headers too large"}')


def test_headers_within_the_limit_with_the_body_in_the_same_read_are_accepted(serve: Any) -> None:
    server = serve(TIGHT)
    body, headers = signed_stripe("evt_padded", size=50_000)
    headers += [(f"X-Pad-{i}", "a" * 300) for i in range(10)]
    status, answer = raw_request(server.url, "POST", "/webhooks/stripe", headers, body)
    assert status == 200, answer


def test_connections_past_the_limit_are_answered_503_and_freed_ones_are_served(serve: Any) -> None:
    limits = ServerLimits(max_connections=4, header_timeout_seconds=30)
    server = serve(limits)
    idle = [connect(server) for _ in range(limits.max_connections)]
    for sock in idle:
        sock.sendall(b"POST /webhooks/stripe HTTP/1.1\r\n")  # holding a connection, headers unfinished
    body, headers = signed_stripe("evt_capped")
    wait_for(
        lambda: raw_request(server.url, "POST", "/webhooks/stripe", headers, body)[0] == 503,
        10,
        what="the connection cap to answer 503",
    )
    for sock in idle:
        sock.close()
    wait_for(
        lambda: raw_request(server.url, "POST", "/webhooks/stripe", headers, body)[0] == 200,
        10,
        what="a freed connection to be served",
    )


@pytest.mark.parametrize(
    ("limits", "size", "waiting"),
    [
        (ServerLimits(inbox_max_rows=10), 0, 10),
        (ServerLimits(inbox_max_bytes=200_000), 60_000, 3),
    ],
    ids=["rows", "bytes"],
)
def test_while_the_store_stalls_the_inbox_is_bounded_and_the_rest_is_503_at_once(
    serve: Any, monkeypatch: pytest.MonkeyPatch, limits: ServerLimits, size: int, waiting: int
) -> None:
    server = serve(limits)
    ingestor = server.app.intake.ingestor
    entered, release = hold_commits(ingestor, monkeypatch)

    def post(event_id: str) -> tuple[int, bytes]:
        body, headers = signed_stripe(event_id, size)
        return raw_request(server.url, "POST", "/webhooks/stripe", headers, body)

    try:
        with concurrent.futures.ThreadPoolExecutor(waiting + 2) as pool:
            first = pool.submit(post, "evt_first")
            assert entered.wait(15)
            queued = [pool.submit(post, f"evt_{i}") for i in range(waiting)]
            wait_for(lambda: ingestor.waiting_rows == waiting, 15, what="the inbox to fill")
            refused = [post(f"evt_over_{i}") for i in range(5)]  # answered while the commit is held
            assert {status for status, _ in refused} == {503}
            assert all(b"intake overloaded" in answer for _, answer in refused)
            assert ingestor.waiting_rows == waiting
            ready = httpx.get(f"{server.url}/readyz", timeout=10)  # a balancer sends traffic elsewhere
            assert (ready.status_code, ready.json()["problems"]) == (503, {"intake": "InboxFull"})
            release.set()
            assert first.result()[0] == 200
            assert [future.result()[0] for future in queued] == [200] * waiting
        assert (ingestor.waiting_rows, ingestor.waiting_bytes) == (0, 0)
        assert post("evt_after")[0] == 200
    finally:
        release.set()


def test_endless_chunked_trailers_are_cut_off(serve: Any) -> None:
    """Trailers come after the headers are done; they are dropped and, with the chunk framing,
    capped, where the parser would otherwise buffer all of them (1.3 GB in 4 s was seen)."""
    server = serve(TIGHT)
    # A fixed, small send buffer: what counts as sent is then what the server's side took in,
    # not what the client's kernel queued (its autotuned buffer reached 2.5 MB on a busy host).
    sock = connect(server, send_buffer=64 * 1024)
    sock.sendall(b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n")
    sent, closed = 0, False
    for index in range(10_000):  # 10 MB of trailers at most
        try:
            sent += sock.send(b"X-Trailer-%d: %s\r\n" % (index, b"a" * 1000))
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
    assert closed
    assert sent < 2 * 1024 * 1024


def test_blank_lines_between_requests_do_not_hold_a_connection(serve: Any) -> None:
    server = serve(TIGHT)
    sock = connect(server)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    sock.settimeout(0.2)
    started, answer = time.monotonic(), None
    while answer is None and time.monotonic() - started < 10:
        try:
            sock.sendall(b"\r\n")  # skipped by the parser: no request ever begins
            answer = sock.recv(65536)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            answer = b"reset"
    assert answer is not None
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("path", "method", "extra"),
    [
        ("/webhooks/nope", "POST", b""),
        ("/webhooks/stripe", "PUT", b""),
        ("/webhooks/stripe", "POST", b"Content-Encoding: gzip\r\n"),
        ("/healthz", "POST", b""),
    ],
    ids=["404", "405", "415", "not-read-by-starlette"],
)
def test_an_answer_before_the_body_does_not_leave_the_body_to_trickle(
    serve: Any, path: str, method: str, extra: bytes
) -> None:
    server = serve(TIGHT)
    sock = connect(server)
    sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n".encode() + extra + b"\r\n{")
    started = time.monotonic()
    status, _ = answer_of(sock)  # read until the server closes
    assert status in (404, 405, 415)
    assert time.monotonic() - started < 5


def test_a_pipelined_request_is_never_answered_in_place_of_a_slow_one(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first request waits for its commit longer than the header timeout, while the second,
    pipelined behind it, is incomplete: the first gets its own 200, then the second its 408."""
    server = serve(TIGHT)
    entered, release = hold_commits(server.app.intake.ingestor, monkeypatch)
    body, headers = signed_stripe("evt_pipelined")
    first = b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\n" + b"".join(
        f"{name}: {value}\r\n".encode() for name, value in headers
    )
    first += f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    sock = connect(server)
    sock.sendall(first + b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\n")
    assert entered.wait(15)
    time.sleep(TIGHT.header_timeout_seconds * 2)  # a clock that must not run out: this is the point
    release.set()
    answers = b""
    while chunk := sock.recv(65536):
        answers += chunk
    assert answers.startswith(b"HTTP/1.1 200")
    assert b'"status":"accepted"' in answers
    assert answers.count(b"HTTP/1.1 408") == 1
    assert answers.index(b"HTTP/1.1 408") > answers.index(b'"status":"accepted"')


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0", "ten"])
def test_a_limit_that_is_not_a_positive_finite_number_is_refused_by_name(value: str) -> None:
    with pytest.raises(ConfigError, match="HOOKGATE_BODY_TIMEOUT_SECONDS"):
        ServerLimits.from_env({"HOOKGATE_BODY_TIMEOUT_SECONDS": value})


def test_an_inbox_smaller_than_one_body_is_refused_at_start(hookgate: Hookgate) -> None:
    limits = ServerLimits(inbox_max_bytes=1000)  # the test configuration allows 64 KiB bodies
    engine = create_store_engine(hookgate.database_url)
    with pytest.raises(ConfigError, match="HOOKGATE_INBOX_MAX_BYTES"):
        create_app(hookgate.config, engine, EventQueue(create_broker(hookgate.redis_url)), limits=limits)


def test_a_batch_larger_than_the_inbox_is_413_not_an_endless_503(hookgate: Hookgate, serve: Any) -> None:
    """A request whose events could never all wait for one commit would be answered 503 on every
    retry, part of it stored each time: it is refused as too large instead."""
    hookgate.configure_provider("graph", type="msgraph", secrets=["graph-client-state"])
    server = serve(ServerLimits(inbox_max_rows=2))
    changes = [
        {"changeType": "updated", "resource": f"Users/u/Messages/m{i}", "clientState": "graph-client-state"}
        for i in range(3)
    ]
    status, answer = raw_request(
        server.url, "POST", "/webhooks/graph", [("Host", "hooks.example.com")], orjson.dumps({"value": changes})
    )
    assert (status, orjson.loads(answer)) == (413, {"error": "more than 2 events in one request"})
    status, _ = raw_request(
        server.url, "POST", "/webhooks/graph", [("Host", "hooks.example.com")], orjson.dumps({"value": changes[:2]})
    )
    assert status == 200
