"""How ``hookgate serve`` runs the intake under uvicorn, with limits a sender cannot stretch.

uvicorn caps connections (``limit_concurrency``: over it, a new request is answered 503 at once)
and idle keep-alive, but not the time a client may take to send its headers nor their size: a
client trickling headers held its connection forever, and 20 MB of headers were read whole. The
protocol below adds both, so that a slow or bloated client costs a bounded amount of memory for a
bounded time. The body is bounded by the intake itself (``max_body_bytes`` and the body timeout).
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .settings import DEFAULT_LIMITS, ServerLimits


def reply_and_close(transport: asyncio.Transport, status: bytes, message: bytes) -> None:
    """Answer a request the app never saw (``status`` such as ``b"408 Request Timeout"``)."""
    transport.write(
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: " + str(len(message)).encode() + b"\r\n\r\n" + message
    )
    transport.close()


class GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a deadline and a size cap on each request's headers.

    The size is counted twice: exactly, from the parser's callbacks, when the headers complete in
    one read; and as raw bytes read while the headers are still incomplete, so that a client
    sending endless headers is stopped after the limit plus one read, not when it stops.
    """

    limits: ServerLimits = DEFAULT_LIMITS

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._refused = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._await_headers()

    def _await_headers(self) -> None:
        self._header_bytes = 0
        self._raw_header_bytes = 0
        self._reading_headers = True
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.limits.header_timeout_seconds, self._headers_too_slow)

    def _headers_done(self) -> None:
        self._reading_headers = False
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._reading_headers and not self.transport.is_closing():
            reply_and_close(self.transport, b"408 Request Timeout", b'{"error":"headers not received in time"}')

    def _refuse_headers(self) -> None:
        self._headers_done()
        self._refused = True
        reply_and_close(self.transport, b"431 Request Header Fields Too Large", b'{"error":"headers too large"}')

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_done()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._reading_headers:
            if self._raw_header_bytes > self.limits.max_header_bytes:
                self._refuse_headers()
                return
            self._raw_header_bytes += len(data)
        super().data_received(data)
        if self._reading_headers and self._header_bytes > self.limits.max_header_bytes:
            self._refuse_headers()

    # -- parser callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if not self._reading_headers:  # the next request on a kept-alive connection
            self._await_headers()
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._header_bytes > self.limits.max_header_bytes:
            self._refused = True  # answered by data_received once the parser returns
            return
        self._headers_done()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
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
        limit_concurrency=limits.max_connections,
        timeout_keep_alive=int(limits.keep_alive_seconds),
        backlog=limits.backlog,
        log_level=log_level,
        access_log=False,
    )


def serve(app: Any, limits: ServerLimits, host: str, port: int) -> None:
    uvicorn.Server(uvicorn_config(app, limits, host=host, port=port)).run()
