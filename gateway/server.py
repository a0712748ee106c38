"""How ``hookgate serve`` runs the intake under uvicorn, with limits a sender cannot stretch, and
how it stops.

uvicorn caps connections (``limit_concurrency``: over it, a new request is answered 503 at once)
and idle keep-alive, but not the time a client may take to send its headers nor their size: a
client trickling headers held its connection forever, and 20 MB of headers were read whole. The
protocol below adds both, so that a slow or bloated client costs a bounded amount of memory for a
bounded time. The body is bounded by the intake itself (``max_body_bytes`` and the body timeout).

On SIGTERM uvicorn closes its listening socket and every connection not in the middle of a
request, then waits for the requests being answered. Under load the event loop lags behind the
kernel, so a request a sender had already sent could be dropped unanswered: its connection still
in the kernel's accept queue (reset when the socket closes), or accepted with the request's bytes
not read yet (closed as idle). :class:`GracefulServer` and :meth:`GuardedHttpTools.shutdown`
answer those too.
"""

from __future__ import annotations

import asyncio
import fcntl
import math
import select
import socket
import struct
import sys
import termios
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .logs import uvicorn_log_config
from .settings import DEFAULT_LIMITS, ServerLimits

#: After refusing a request, how long the connection is kept half-closed while what the client
#: still sends is read and dropped: closing at once would make the kernel answer that data with a
#: reset, which can destroy the refusal before the client has read it.
LINGER_SECONDS = 2.0


def reply_and_close(transport: asyncio.Transport, status: bytes, message: bytes) -> None:
    """Answer a request the app never saw (``status`` such as ``b"408 Request Timeout"``), then
    close our side at once and the connection after :data:`LINGER_SECONDS`."""
    transport.write(
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: " + str(len(message)).encode() + b"\r\n\r\n" + message
    )
    if not transport.can_write_eof():
        transport.close()
        return
    transport.write_eof()
    asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)


HEADERS_TOO_LARGE = (b"431 Request Header Fields Too Large", b'{"error":"headers too large"}')
HEADERS_TOO_SLOW = (b"408 Request Timeout", b'{"error":"headers not received in time"}')

#: Scope key set (True) when the server had a request's whole body before the app asked for it:
#: reading it then cannot wait on the client, so the intake needs no body timeout for it.
BODY_RECEIVED = "hookgate.body_received"

#: Chunked framing a request may carry per body chunk (size line, extensions, CRLFs), beyond
#: ``max_header_bytes`` for its trailers: more than that is a client feeding bytes that are
#: neither headers nor body, which the parser would buffer without bound.
FRAMING_BYTES_PER_CHUNK = 64


class OneWritePerResponse:
    """A connection's transport as one request's cycle sees it: the status line and headers of
    the response are held back and sent with its first body bytes, in one write.

    uvicorn writes them separately, and on a busy loop each write is a system call that also
    does the loopback receiver's work and wakes it: two of them per response were the largest
    single item of the event loop's time. Headers still held when the loop comes round again (a
    response whose body comes later) are sent then, so nothing waits on the app.
    """

    __slots__ = ("_first", "_held", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held = b""
        self._first = True

    def write(self, data: bytes) -> None:
        if self._first:  # the status line and headers
            self._first = False
            self._held = data
            asyncio.get_running_loop().call_soon(self.flush)
            return
        if self._held:
            data, self._held = self._held + data, b""
        self._transport.write(data)

    def flush(self) -> None:
        if self._held:
            held, self._held = self._held, b""
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a deadline and a size cap on each request's headers.

    - The header clock starts at the first byte of a request (or of anything sent between
      requests, such as blank lines the parser skips) and stops when its headers are complete.
      While an earlier request on the connection is still being answered, the clock does not
      run out: reading is paused then, so the delay is ours, not the client's. Its timer is
      only armed when a read ends with headers still incomplete: a request whose headers come
      in one read (nearly all of them) costs no timer at all.
    - The size is counted twice: exactly, from the parser's callbacks, when the headers complete
      in one read; and as raw bytes read while they are incomplete, so that a client sending
      endless headers is stopped after the limit plus one read.
    - Trailers of a chunked body are dropped (the intake has no use for them) and, with the
      chunk framing, may not exceed ``max_header_bytes`` plus a little per chunk.
    - A refusal (408, 431) due while an earlier request is still being answered is sent after
      that answer, so that a pipelined client never reads it as the answer to another request.
    """

    limits: ServerLimits = DEFAULT_LIMITS

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        #: The server is stopping: the request being received is the connection's last.
        self._last_request = False
        self._refusal: tuple[bytes, bytes] | None = None
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_deadline = 0.0
        self._in_body = False
        self._messages = self._body_bytes = self._body_chunks = self._framing_bytes = 0
        self._drain_timer: asyncio.TimerHandle | None = None
        self._await_headers()
        self._arm_if_waiting()  # nothing is read yet: the clock runs from the connection's start

    def shutdown(self) -> None:
        """The server stops: a connection on which a request has begun to arrive (bytes read, or
        waiting unread in the kernel) gets that request answered and is then closed; uvicorn
        would close it at once, as if idle, and the sender would get no answer."""
        if self._busy() or not self._request_arriving():
            super().shutdown()
            return
        self._last_request = True

    def _request_arriving(self) -> bool:
        if self._reading_headers and self._raw_header_bytes:
            return True
        sock = self.transport.get_extra_info("socket")
        if sock is None or self.transport.is_closing():
            return False
        try:
            unread = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
        except OSError:
            return False
        return struct.unpack("i", unread)[0] > 0

    def _busy(self) -> bool:
        """Whether a request on this connection is still being answered (or waits its turn)."""
        return bool(self.pipeline) or (self.cycle is not None and not self.cycle.response_complete)

    def _await_headers(self) -> None:
        """Start the header clock (its timer is armed by :meth:`_arm_if_waiting`, if needed)."""
        self._header_bytes = 0
        self._raw_header_bytes = 0
        self._reading_headers = True
        self._header_deadline = self.loop.time() + self.limits.header_timeout_seconds

    def _arm_if_waiting(self) -> None:
        """At the end of a read: headers still incomplete get a timer at their deadline."""
        waiting = self._reading_headers and self._header_timer is None and self._refusal is None
        if waiting and not self.transport.is_closing():
            self._header_timer = self.loop.call_at(self._header_deadline, self._headers_too_slow)

    def _arm(self, delay: float) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(delay, self._headers_too_slow)

    def _headers_done(self) -> None:
        self._reading_headers = False
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self._reading_headers or self.transport.is_closing():
            return
        if self._busy():
            self._arm(self.limits.header_timeout_seconds)
            return
        self._refuse(*HEADERS_TOO_SLOW)

    def _refuse(self, status: bytes, message: bytes) -> None:
        """Answer ``status`` and close, now or once the request being answered is done; every
        byte the client sends from now on is dropped."""
        self._headers_done()
        self._refusal = (status, message)
        if not self._busy():
            reply_and_close(self.transport, status, message)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._refusal is not None and not self._busy() and not self.transport.is_closing():
            reply_and_close(self.transport, *self._refusal)
        elif self._in_body and self._drain_timer is None:
            # Answered before its body was read (404, 405, 415...): the rest of the body gets
            # the body timeout to arrive, else the connection is closed.
            self._drain_timer = self.loop.call_later(self.limits.body_timeout_seconds, self.transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_done()
        self._stop_draining()
        super().connection_lost(exc)

    def _stop_draining(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return
        if not self._reading_headers and not self._in_body and not self._busy():
            self._await_headers()  # the first byte of the next request, or of anything else
        if self._reading_headers:
            if self._raw_header_bytes > self.limits.max_header_bytes:
                self._refuse(*HEADERS_TOO_LARGE)
                return
            self._raw_header_bytes += len(data)
        message, body_before, in_body = self._messages, self._body_bytes, self._in_body
        super().data_received(data)
        if self._refusal is not None:
            return
        if self._reading_headers and self._header_bytes > self.limits.max_header_bytes:
            self._refuse(*HEADERS_TOO_LARGE)
            return
        self._arm_if_waiting()
        if in_body and self._in_body and message == self._messages:  # a read wholly inside one body
            self._framing_bytes += len(data) - (self._body_bytes - body_before)
            allowed = self.limits.max_header_bytes + FRAMING_BYTES_PER_CHUNK * self._body_chunks
            if self._framing_bytes > allowed:
                self._refusal = (b"", b"")
                self.transport.close()

    # -- parser callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if not self._reading_headers:  # a request that began in the same read as the last one
            self._await_headers()
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._reading_headers:
            return  # a trailer: counted as framing by data_received, never kept
        self._header_bytes += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._header_bytes > self.limits.max_header_bytes:
            self._refuse(*HEADERS_TOO_LARGE)
            return
        self._headers_done()
        self._messages += 1
        self._in_body = True
        self._body_bytes = self._body_chunks = self._framing_bytes = 0
        super().on_headers_complete()
        if self.cycle is not None and not self.expect_100_continue:  # "100 Continue" is not held
            self.cycle.transport = OneWritePerResponse(self.transport)  # type: ignore[assignment]
        if self._last_request and self.cycle is not None:
            self.cycle.keep_alive = False

    def on_body(self, body: bytes) -> None:
        if self._refusal is None:
            self._body_bytes += len(body)
            self._body_chunks += 1
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refusal is None:
            self._in_body = False
            self._stop_draining()
            self.scope[BODY_RECEIVED] = True  # type: ignore[literal-required]
            super().on_message_complete()


def uvicorn_config(
    app: Any, limits: ServerLimits, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"
) -> uvicorn.Config:
    """The uvicorn configuration ``serve`` and ``run`` use (and the tests' in-process server)."""
    protocol = type("Guarded", (GuardedHttpTools,), {"limits": limits})
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        # uvicorn counts the connection asking among the open ones: + 1 lets exactly N serve.
        limit_concurrency=limits.max_connections + 1,
        timeout_keep_alive=math.ceil(limits.keep_alive_seconds),
        ws="none",  # the intake speaks plain HTTP; an Upgrade is not handed to a WebSocket stack
        backlog=limits.backlog,
        log_level=log_level,
        log_config=uvicorn_log_config(),
        access_log=False,
    )


#: On SIGTERM, the longest the server keeps taking in connections the kernel has already queued.
ACCEPT_QUEUED_SECONDS = 1.0


class GracefulServer(uvicorn.Server):
    """uvicorn's server, which on SIGTERM first accepts the connections waiting in the kernel's
    queue (closing the listening socket would reset them, requests and all), then stops as
    uvicorn does: no new connections, every request begun answered, then the app's shutdown
    (the intake's last commit and broker hand-off)."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        listeners = select.poll()
        for server in self.servers:
            for sock in server.sockets:
                listeners.register(sock.fileno(), select.POLLIN)
        deadline = asyncio.get_running_loop().time() + ACCEPT_QUEUED_SECONDS
        while listeners.poll(0) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)  # the loop accepts them meanwhile
        await asyncio.sleep(0)  # and makes their connections, which shutdown() then sees
        await super().shutdown(sockets)


#: The GIL switch interval of a serving process, in seconds (CPython's default is 5 ms).
SWITCH_INTERVAL = 0.0005


def serve(app: Any, limits: ServerLimits, host: str, port: int) -> None:
    """Serve ``app`` until SIGTERM.

    The group commit runs in its own thread, which gives up the GIL for every SQLite step,
    fsync or PostgreSQL round trip and then has to win it back from the event loop. A busy loop
    only lets go of it every switch interval, so with CPython's 5 ms each batch waited several
    times that for the GIL alone, and every request waiting for that batch with it. At 0.5 ms
    the committer gets it back quickly; the loop pays a few more switches, far less than the
    latency saved (see bench/README.md, "Intake").
    """
    sys.setswitchinterval(SWITCH_INTERVAL)
    GracefulServer(uvicorn_config(app, limits, host=host, port=port)).run()
