"""The intake's fast path under ``serve`` (gateway.server, gateway.intake): what it skips for an
ordinary request (a header timer, a body timer, a second write) must not change what a slow,
split or ``Expect: 100-continue`` request is answered."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import stripe

from gateway.database import create_store_engine
from gateway.intake import create_app
from gateway.queue import EventQueue, create_broker
from gateway.server import OneWritePerResponse
from gateway.settings import ServerLimits
from tests.conftest import STRIPE_SECRET, Hookgate
from tests.support.servers import ServerThread

TIGHT = ServerLimits(max_connections=8, header_timeout_seconds=1.0, body_timeout_seconds=1.0)


@pytest.fixture
def server(hookgate: Hookgate) -> Iterator[ServerThread]:
    engine = create_store_engine(hookgate.database_url)
    app = create_app(hookgate.config, engine, EventQueue(create_broker(hookgate.redis_url)), limits=TIGHT)
    running = ServerThread(app, TIGHT).start()
    yield running
    running.stop()


def connect(server: ServerThread) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=15)


def read_answer(sock: socket.socket) -> tuple[int, bytes]:
    """One answer with a Content-Length: its status and body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split(b" ", 2)[1]), body


def stripe_request(event_id: str, extra: str = "") -> tuple[bytes, bytes]:
    """The head (request line and headers) and the body of a signed Stripe delivery."""
    body = orjson.dumps(
        {"id": event_id, "object": "event", "type": "invoice.paid", "created": 1, "data": {"object": {"id": "in_1"}}}
    )
    signature = stripe.WebhookSignature.generate_signature_header(body.decode(), STRIPE_SECRET)
    head = (
        "POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Stripe-Signature: {signature}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode(), body


def test_requests_on_one_connection_each_get_their_whole_answer(server: ServerThread) -> None:
    sock = connect(server)
    for number in range(5):
        head, body = stripe_request(f"evt_fast_{number}")
        sock.sendall(head + body)
        status, answer = read_answer(sock)
        assert (status, orjson.loads(answer)) == (200, {"status": "accepted", "id": f"evt_fast_{number}"})


def test_headers_split_over_reads_keep_their_clock_from_the_first_byte(server: ServerThread) -> None:
    """The header timer is armed only once a read ends with headers incomplete; it still runs out
    at the first byte plus the timeout, not later for each new read."""
    sock = connect(server)
    head, _ = stripe_request("evt_split_headers")
    started = time.monotonic()
    lines = head.split(b"\r\n")
    answer = b""
    sock.settimeout(0.1)
    for line in lines[:4]:  # never the blank line that ends them
        try:
            sock.sendall(line + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            break
        try:
            answer += sock.recv(65536)
            break
        except TimeoutError:
            time.sleep(0.4)
    sock.settimeout(15)
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started < 1.0 + 0.4 + 1.0  # the first byte's deadline, one read late at most


def test_a_body_split_over_reads_within_the_timeout_is_accepted(server: ServerThread) -> None:
    sock = connect(server)
    head, body = stripe_request("evt_split_body")
    sock.sendall(head + body[:10])
    time.sleep(0.3)
    sock.sendall(body[10:])
    status, answer = read_answer(sock)
    assert (status, orjson.loads(answer)["status"]) == (200, "accepted")


def test_a_body_that_stops_half_way_is_still_408(server: ServerThread) -> None:
    sock = connect(server)
    head, body = stripe_request("evt_half_body")
    sock.sendall(head + body[:10])
    started = time.monotonic()
    status, answer = read_answer(sock)
    assert (status, answer) == (408, b'{"error":"body not received in time"}')
    assert time.monotonic() - started < 5


def test_expect_100_continue_is_answered_before_the_body_is_sent(server: ServerThread) -> None:
    """The interim answer is not held back with the response's headers: the client waits for it."""
    sock = connect(server)
    head, body = stripe_request("evt_continue", extra="Expect: 100-continue\r\n")
    sock.sendall(head)
    interim = b""
    while b"\r\n\r\n" not in interim:
        interim += sock.recv(65536)
    assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    rest = interim.partition(b"\r\n\r\n")[2]
    assert rest == b""
    sock.sendall(body)
    status, answer = read_answer(sock)
    assert (status, orjson.loads(answer)["status"]) == (200, "accepted")


class Recorder:
    """A transport that records each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def wrapped() -> tuple[Recorder, Any]:
    recorder = Recorder()
    return recorder, OneWritePerResponse(recorder)  # type: ignore[arg-type]


def run(body: Callable[[], Any]) -> None:
    async def main() -> None:
        await body()

    asyncio.run(main())


def test_the_head_and_the_body_of_a_response_go_out_in_one_write() -> None:
    async def check() -> None:
        recorder, transport = wrapped()
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        transport.write(b"{}")
        assert recorder.writes == [b"HTTP/1.1 200 OK\r\n\r\n{}"]
        await asyncio.sleep(0)
        assert recorder.writes == [b"HTTP/1.1 200 OK\r\n\r\n{}"]  # nothing sent twice
        transport.write(b"more")
        assert recorder.writes[-1] == b"more"

    run(check)


def test_a_head_whose_body_is_late_is_sent_when_the_loop_comes_round() -> None:
    async def check() -> None:
        recorder, transport = wrapped()
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        assert recorder.writes == []
        await asyncio.sleep(0)
        assert recorder.writes == [b"HTTP/1.1 200 OK\r\n\r\n"]
        transport.write(b"{}")
        assert recorder.writes == [b"HTTP/1.1 200 OK\r\n\r\n", b"{}"]

    run(check)


def test_closing_sends_a_head_still_held_first() -> None:
    async def check() -> None:
        recorder, transport = wrapped()
        transport.write(b"HTTP/1.1 500 Internal Server Error\r\n\r\n")
        transport.close()
        assert recorder.writes == [b"HTTP/1.1 500 Internal Server Error\r\n\r\n"]
        assert recorder.closed
        assert transport.is_closing()  # the rest is the real transport's

    run(check)
