"""The HTTP client of the reconciliation fetches: keep-alive HTTP/1.1 GETs on plain sockets.

A resource pass makes one GET to the provider's API. With httpx, that GET was 41% of a
worker's CPU when passes applied one event each (py-spy ``--gil``, bench/README.md): about
330 µs of client code a request on a loopback API. ``http.client`` then took 110-160 µs, much
of it reading the answer's headers through the ``email`` package; this client about 45 µs
(bench/README.md, steps 9 and 19). What a fetch needs from a client is small, and is all here:

* a pool of idle keep-alive connections per API, used by one thread at a time;
* a connect timeout and a read timeout (per socket operation, as httpx's);
* TLS verified against the system's certificate authorities;
* no proxy from the environment, no redirect followed, no compression asked for;
* the body by its ``Content-Length``, in chunks (``Transfer-Encoding: chunked``) or up to the
  end of the connection, never more than a limit, so an endless answer costs at most the limit;
* one retry on a new connection when a kept-alive one turns out closed by the server before
  it answered (the server may close an idle connection at any time; a GET is idempotent).

Errors are raised as :class:`FetchTimeout` and :class:`FetchFailed` (whose ``kind`` names the
phase in httpx's words, ``ConnectError``, ``ReadError``, ``RemoteProtocolError``, which
operators already see in ``last_error``).
"""

from __future__ import annotations

import io
import re
import select
import socket
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

#: Bytes read from the socket at a time.
CHUNK = 65536
#: Idle connections kept per API; more are closed when given back.
MAX_IDLE = 16
#: The longest status, header or chunk-size line read, and the most header (or trailer) lines
#: and interim (1xx) answers, as ``http.client``'s limits; a chunk's framing counts toward the
#: body's limit, so that a stream of tiny chunks cannot run on for ever.
MAX_LINE = 65536
MAX_HEADERS = 100
MAX_INTERIM = 5

#: What may not appear in a request target: controls and spaces (as ``http.client`` refuses).
_NOT_IN_TARGET = re.compile("[\x00-\x20\x7f]")
_NOT_IN_VALUE = re.compile("[\x00\r\n]")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_BLANK = (b"\r\n", b"\n")


class FetchTimeout(Exception):
    """No connection, or no answer, in time."""


class FetchFailed(Exception):
    """The connection failed or the answer was not HTTP; ``kind`` names how."""

    def __init__(self, kind: str, cause: BaseException | str) -> None:
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
    #: Header names in lower case; a repeated header keeps its values joined by ", ".
    headers: Mapping[str, str]
    body: bytes


class _Closed(Exception):
    """The server closed the connection before it answered."""


def _protocol_error(message: str) -> FetchFailed:
    return FetchFailed("RemoteProtocolError", message)


class ApiClient:
    """GETs to one API (its scheme, host and port), on pooled keep-alive connections."""

    def __init__(
        self, base_url: str, headers: Mapping[str, str], *, connect_timeout: float, read_timeout: float
    ) -> None:
        parts = urlsplit(base_url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        default_port = 443 if self.https else 80
        self.port = parts.port or default_port
        host = self.host.encode("idna").decode("ascii") if not self.host.isascii() else self.host
        host = f"[{host}]" if ":" in host else host
        if self.port != default_port:
            host += f":{self.port}"
        given = {name.lower() for name in headers}  # a header given overrides a default one, in any case
        defaults = {"Host": host, "Accept": "*/*", "Accept-Encoding": "identity"}
        fields = {**{name: value for name, value in defaults.items() if name.lower() not in given}, **headers}
        for name, value in fields.items():
            if not _TOKEN.fullmatch(name) or _NOT_IN_VALUE.search(value):
                raise ValueError(f"invalid header {name!r}")
        self._head = "".join(f"{name}: {value}\r\n" for name, value in fields.items()).encode("latin-1")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._tls = ssl.create_default_context() if self.https else None
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()

    def get(self, url: str, limit: int) -> Answer:
        """GET ``url`` (on this client's API: the caller checked it) and read at most ``limit``
        bytes of its answer.

        Raises:
            FetchTimeout, FetchFailed, TooLarge.
        """
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if _NOT_IN_TARGET.search(target) or not target.isascii():  # the query may hold a key: not shown
            raise _protocol_error("the URL's path or query holds a space, a control or a non-ASCII character")
        request = b"GET " + target.encode("ascii") + b" HTTP/1.1\r\n" + self._head + b"\r\n"
        sock, reused = self._take()
        try:
            try:
                answer, keep = self._exchange(sock, request, limit)
            except _Closed:
                if not reused:
                    raise
                sock.close()
                sock = self._new()
                answer, keep = self._exchange(sock, request, limit)
        except _Closed as exc:
            sock.close()
            raise FetchFailed(
                "ReadError", exc.__cause__ or "the server closed the connection without answering"
            ) from None
        except BaseException:
            sock.close()
            raise
        self._give_back(sock, keep)
        return answer

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()

    def _exchange(self, sock: socket.socket, request: bytes, limit: int) -> tuple[Answer, bool]:
        """Send ``request`` and read its answer; whether the connection may carry another.

        The answer is read through a reader of its own, as ``http.client`` does: bytes a server
        sent past the end of an answer are never read as the next one's.
        """
        reader = sock.makefile("rb")
        try:
            try:
                sock.sendall(request)
                first = reader.peek(1)
            except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as exc:
                raise _Closed from exc
            if not first:
                raise _Closed
            status, version = _status(_line(reader))
            interim = 0
            while status < 200:  # an interim answer (100 Continue, 103 Early Hints)
                interim += 1
                if interim > MAX_INTERIM:
                    raise _protocol_error(f"more than {MAX_INTERIM} interim answers")
                _headers(reader)
                status, version = _status(_line(reader))
            headers = _headers(reader)
            body, framed = _body(reader, status, version, headers, limit)
        except TimeoutError:
            raise FetchTimeout("read timed out") from None
        except OSError as exc:
            raise FetchFailed("ReadError", exc) from None
        finally:
            reader.close()  # the socket stays open
        connection = headers.get("connection", "").lower()
        keep = framed and ("close" not in connection if version >= 11 else "keep-alive" in connection)
        return Answer(status, headers, body), keep

    def _take(self) -> tuple[socket.socket, bool]:
        """An idle connection, unless the server has closed it or written to it since (a ``408``
        on an idle connection, bytes past an answer): those are dropped; else a new one."""
        while True:
            with self._lock:
                if not self._idle:
                    break
                sock = self._idle.pop()
            if not _readable(sock):
                return sock, True
            sock.close()
        return self._new(), False

    def _new(self) -> socket.socket:
        """A connection, TLS handshake included, within the connect timeout."""
        sock: socket.socket | None = None
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except OSError as exc:  # a failed TLS handshake too (ssl.SSLError is an OSError)
            if sock is not None:
                sock.close()
            if isinstance(exc, TimeoutError):
                raise FetchTimeout("connect timed out") from None
            raise FetchFailed("ConnectError", exc) from None
        sock.settimeout(self.read_timeout)  # connected: from now on, each read waits at most this
        return sock

    def _give_back(self, sock: socket.socket, keep: bool) -> None:
        if keep:
            with self._lock:
                if len(self._idle) < MAX_IDLE:
                    self._idle.append(sock)
                    return
        sock.close()


def _readable(sock: socket.socket) -> bool:
    """Whether an idle connection has something to read (an end, or bytes nobody asked for)."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    try:
        poller = select.poll()  # not select(): it fails on descriptors past 1024
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):  # closed under us
        return True


def _line(reader: io.BufferedReader) -> bytes:
    line = reader.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise _protocol_error("a line of the answer is too long")
    if not line:
        raise _protocol_error("the connection closed in the middle of the answer")
    return line


def _status(line: bytes) -> tuple[int, int]:
    """The status and HTTP version (10 or 11) of a status line ``HTTP/1.x 200 OK``."""
    version, _, rest = line.partition(b" ")
    code = rest[:3]
    if (
        version not in (b"HTTP/1.1", b"HTTP/1.0")
        or not (code.isdigit() and code[:1] != b"0")
        or rest[3:4] not in (b" ", b"\r", b"\n")
    ):
        raise _protocol_error(f"not an HTTP/1 status line: {line[:60]!r}")
    return int(code), 11 if version == b"HTTP/1.1" else 10


def _headers(reader: io.BufferedReader) -> dict[str, str]:
    """The header (or trailer) lines up to the blank line, names in lower case."""
    headers: dict[str, str] = {}
    last = ""
    for _ in range(MAX_HEADERS + 1):
        line = _line(reader)
        if line in _BLANK:
            return headers
        text = line.decode("latin-1").rstrip("\r\n")
        if text[:1] in (" ", "\t") and last:  # a folded line continues the header before
            headers[last] += " " + text.strip(" \t")
            continue
        name, colon, value = text.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise _protocol_error(f"not a header line: {text[:60]!r}")
        last = name.lower()
        value = value.strip(" \t")
        headers[last] = f"{headers[last]}, {value}" if last in headers else value
    raise _protocol_error(f"more than {MAX_HEADERS} header lines")


def _body(
    reader: io.BufferedReader, status: int, version: int, headers: Mapping[str, str], limit: int
) -> tuple[bytes, bool]:
    """The answer's body, and whether its end was framed (a length, or chunks), so that the
    connection can carry another answer."""
    if status in (204, 304):
        return b"", True
    encoding = headers.get("transfer-encoding")
    if encoding is not None:
        if encoding.lower().split(",")[-1].strip(" \t") != "chunked":
            return _to_the_end(reader, status, limit), False
        body = _chunked(reader, status, limit)
        # A length beside the chunks, or chunks in HTTP/1.0, is ambiguous: never reuse that one.
        return body, "content-length" not in headers and version >= 11
    declared = headers.get("content-length")
    if declared is None:
        return _to_the_end(reader, status, limit), False
    if not (declared.isascii() and declared.isdigit() and len(declared) <= 18):
        raise _protocol_error(f"invalid Content-Length {declared[:20]!r}")
    if int(declared) > limit:
        raise TooLarge(status)
    return _exactly(reader, int(declared)), True


def _to_the_end(reader: io.BufferedReader, status: int, limit: int) -> bytes:
    chunks, size = [], 0
    while chunk := reader.read1(CHUNK):
        size += len(chunk)
        if size > limit:
            raise TooLarge(status)
        chunks.append(chunk)
    return b"".join(chunks)


def _chunked(reader: io.BufferedReader, status: int, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        line = _line(reader)
        size += len(line)  # the framing counts too: tiny chunks with long extensions must end
        field = line.split(b";", 1)[0].strip(b" \t\r\n")
        if not _CHUNK_SIZE.fullmatch(field):
            raise _protocol_error(f"invalid chunk size {field[:20]!r}")
        length = int(field, 16)
        if length == 0:
            break
        size += length
        if size > limit:
            raise TooLarge(status)
        chunks.append(_exactly(reader, length))
        if _line(reader) not in _BLANK:
            raise _protocol_error("a chunk is longer than its size says")
    for _ in range(MAX_HEADERS + 1):  # trailer fields, unused
        if reader.readline(MAX_LINE + 1) in (*_BLANK, b""):
            return b"".join(chunks)
    raise _protocol_error(f"more than {MAX_HEADERS} trailer lines")


def _exactly(reader: io.BufferedReader, length: int) -> bytes:
    data = reader.read(length)
    if len(data) < length:
        raise _protocol_error(f"the answer ended after {len(data)} of {length} bytes")
    return data
