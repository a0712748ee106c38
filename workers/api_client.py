"""The HTTP client of the reconciliation fetches: keep-alive GETs over ``http.client``.

A resource pass makes one GET to the provider's API. With httpx, that GET was 41% of a
worker's CPU when passes applied one event each (py-spy ``--gil``, bench/README.md): about
330 µs of client code a request on a loopback API, against about 40 µs for ``http.client``.
What a fetch needs from a client is small, and is all here:

* a pool of idle keep-alive connections per API, used by one thread at a time;
* a connect timeout and a read timeout (per socket operation, as httpx's);
* TLS verified against the system's certificate authorities;
* no proxy from the environment, no redirect followed, no compression asked for;
* the body read in chunks up to a limit, so an endless answer costs at most the limit;
* one retry on a new connection when a kept-alive one turns out closed by the server before
  it answered (the server may close an idle connection at any time; a GET is idempotent).

Errors are raised as :class:`FetchTimeout` and :class:`FetchFailed` (whose ``kind`` names the
phase in httpx's words, ``ConnectError``, ``ReadError``, ``RemoteProtocolError``, which
operators already see in ``last_error``).
"""

from __future__ import annotations

import http.client
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

#: Bytes read from the socket at a time.
CHUNK = 65536
#: Idle connections kept per API; more are closed when given back.
MAX_IDLE = 16


class FetchTimeout(Exception):
    """No connection, or no answer, in time."""


class FetchFailed(Exception):
    """The connection failed or the answer was not HTTP; ``kind`` names how."""

    def __init__(self, kind: str, cause: BaseException) -> None:
        super().__init__(str(cause) or type(cause).__name__)
        self.kind = kind


class TooLarge(Exception):
    """The answer is larger than the limit (declared, or read so far)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


#: The errors of a kept-alive connection that the server had closed.
_CLOSED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class ApiClient:
    """GETs to one API (its scheme, host and port), on pooled keep-alive connections."""

    def __init__(
        self, base_url: str, headers: Mapping[str, str], *, connect_timeout: float, read_timeout: float
    ) -> None:
        parts = urlsplit(base_url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port
        self.headers = {"Accept": "*/*", "Accept-Encoding": "identity", **headers}
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._tls = ssl.create_default_context() if self.https else None
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def get(self, url: str, limit: int) -> Answer:
        """GET ``url`` (on this client's API: the caller checked it) and read at most ``limit``
        bytes of its answer.

        Raises:
            FetchTimeout, FetchFailed, TooLarge.
        """
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn, reused = self._take()
        try:
            try:
                response = self._send(conn, target)
            except _CLOSED:
                if not reused:
                    raise
                conn.close()
                conn = self._new()
                response = self._send(conn, target)
            body = self._read(response, limit)
        except _CLOSED as exc:
            conn.close()
            raise FetchFailed("ReadError", exc) from None
        except BaseException:
            conn.close()
            raise
        self._give_back(conn, response)
        return Answer(response.status, response.headers, body)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _send(self, conn: http.client.HTTPConnection, target: str) -> http.client.HTTPResponse:
        if conn.sock is None:
            try:
                conn.connect()
            except TimeoutError:
                raise FetchTimeout("connect timed out") from None
            except OSError as exc:
                raise FetchFailed("ConnectError", exc) from None
            if conn.sock is not None:  # connected: from now on, each read waits at most this
                conn.sock.settimeout(self.read_timeout)
        try:
            conn.request("GET", target, headers=self.headers)
            return conn.getresponse()
        except TimeoutError:
            conn.close()
            raise FetchTimeout("read timed out") from None
        except _CLOSED:
            raise
        except http.client.HTTPException as exc:
            conn.close()
            raise FetchFailed("RemoteProtocolError", exc) from None
        except OSError as exc:
            conn.close()
            raise FetchFailed("ReadError", exc) from None

    def _read(self, response: http.client.HTTPResponse, limit: int) -> bytes:
        declared = response.getheader("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise TooLarge(response.status)
        chunks, size = [], 0
        try:
            while chunk := response.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise TooLarge(response.status)
                chunks.append(chunk)
        except TimeoutError:
            raise FetchTimeout("read timed out") from None
        except http.client.HTTPException as exc:
            raise FetchFailed("RemoteProtocolError", exc) from None
        except OSError as exc:
            raise FetchFailed("ReadError", exc) from None
        return b"".join(chunks)

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._new(), False

    def _new(self) -> http.client.HTTPConnection:
        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.connect_timeout, context=self._tls)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.connect_timeout)

    def _give_back(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        if response.will_close or conn.sock is None:
            conn.close()
            return
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()
