"""The reconciliation's HTTP client against a real server on 127.0.0.1 (workers/api_client.py):
kept-alive connections, a connection the server closed, timeouts, refused connections, and
answers larger than the limit, declared or not."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from workers.api_client import ApiClient, FetchFailed, FetchTimeout, TooLarge, _readable


class Api:
    """A server that records each request's connection (the client's port) and answers as the
    request's path says: ``/close`` answers and closes, ``/slow`` never answers, ``/big``
    declares 1 MB, ``/endless`` streams without a length until the client hangs up."""

    def __init__(self) -> None:
        self.connections: list[int] = []
        self.headers: list[dict[str, str]] = []
        self.release = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                api.connections.append(self.client_address[1])
                api.headers.append(dict(self.headers.items()))
                if self.path == "/slow":
                    api.release.wait(30)
                    return
                if self.path == "/endless":
                    self.send_response(200)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    try:
                        while not api.release.is_set():
                            self.wfile.write(b"x" * 65536)
                    except OSError:
                        pass
                    return
                body = b'{"ok": true}'
                self.send_response(200)
                self.send_header("Content-Length", str(1_000_000 if self.path == "/big" else len(body)))
                if self.path == "/close":
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                if self.path == "/close":
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Iterator[Api]:
    server = Api()
    yield server
    server.stop()


def client(api: Api, **timeouts: float) -> ApiClient:
    settings = {"connect_timeout": 5.0, "read_timeout": 5.0, **timeouts}
    return ApiClient(api.url, {"Authorization": "Bearer t0k3n"}, **settings)


def test_a_header_given_replaces_a_default_one_whatever_its_case(api: Api) -> None:
    given = {"accept": "application/json", "HOST": "api.example"}
    ApiClient(api.url, given, connect_timeout=5, read_timeout=5).get(f"{api.url}/a", 1000)
    sent = [(name.lower(), value) for name, value in api.headers[0].items()]
    overridden = [item for item in sent if item[0] in ("accept", "host")]
    assert overridden == [("accept", "application/json"), ("host", "api.example")]


def test_gets_share_one_kept_alive_connection(api: Api) -> None:
    fetching = client(api)
    answers = [fetching.get(f"{api.url}/things/{n}?expand=all", 1000) for n in range(5)]
    assert {(answer.status, answer.body) for answer in answers} == {(200, b'{"ok": true}')}
    assert len(set(api.connections)) == 1
    assert api.headers[0]["Authorization"] == "Bearer t0k3n"
    assert api.headers[0]["Accept-Encoding"] == "identity"  # nothing to decompress


def test_a_connection_the_server_closed_is_replaced(api: Api) -> None:
    fetching = client(api)
    assert fetching.get(f"{api.url}/close", 1000).status == 200
    assert fetching.get(f"{api.url}/after", 1000).status == 200
    assert fetching.get(f"{api.url}/again", 1000).status == 200
    assert len(set(api.connections)) == 2  # a new one after the close, kept for the third


def test_a_kept_alive_connection_closed_while_idle_is_replaced(api: Api) -> None:
    """The server may drop an idle connection without a word: the client sees the end before it
    sends the next GET there (or, if the end comes meanwhile, sends it again once), on a new one."""
    fetching = client(api)
    assert fetching.get(f"{api.url}/first", 1000).status == 200
    fetching._idle[0].shutdown(socket.SHUT_RDWR)  # as if the server's end had gone away
    assert fetching.get(f"{api.url}/second", 1000).status == 200
    assert len(set(api.connections)) == 2


def test_a_connection_the_server_ended_without_a_word_is_replaced(scripted: list[Scripted]) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    server, fetching = serve(scripted, (ok, True), (ok, False))  # closes after the first, unannounced
    assert fetching.get(f"{server.url}/a", 1000).body == b"ok"
    assert fetching.get(f"{server.url}/b", 1000).body == b"ok"
    assert server.connections == 2


def test_bytes_past_an_answer_are_never_read_as_the_next(scripted: list[Scripted]) -> None:
    stray = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray"
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    server, fetching = serve(scripted, (b"HTTP/1.1 204 No Content\r\n\r\n" + stray, False), (ok, False))
    assert fetching.get(f"{server.url}/a", 1000).status == 204  # with a stray answer behind it
    assert fetching.get(f"{server.url}/b", 1000).body == b"ok"


def test_an_idle_connection_with_something_to_read_is_not_used_again() -> None:
    """A server ends an idle connection, or writes to it (a ``408``): not a connection to send
    the next GET on."""
    quiet, peer = socket.socketpair()
    with quiet, peer:
        assert not _readable(quiet)
        peer.sendall(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        assert _readable(quiet)
    ended, peer = socket.socketpair()
    with ended:
        peer.close()
        assert _readable(ended)


def test_no_answer_in_time_is_a_timeout(api: Api) -> None:
    with pytest.raises(FetchTimeout):
        client(api, read_timeout=0.3).get(f"{api.url}/slow", 1000)


def test_a_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    fetching = ApiClient(f"http://127.0.0.1:{port}", {}, connect_timeout=2, read_timeout=2)
    with pytest.raises(FetchFailed) as failed:
        fetching.get(f"http://127.0.0.1:{port}/x", 1000)
    assert failed.value.kind == "ConnectError"


@pytest.mark.parametrize("path", ["/big", "/endless"])
def test_an_answer_larger_than_the_limit_is_refused(api: Api, path: str) -> None:
    fetching = client(api)
    with pytest.raises(TooLarge) as refused:
        fetching.get(f"{api.url}{path}", 100_000)
    assert refused.value.status == 200
    assert not fetching._idle  # that connection is not used again


class Scripted:
    """A raw server: it reads each request's head and writes the next of ``answers`` as given,
    then closes the connection if that answer says so (``close=True``)."""

    def __init__(self, answers: list[tuple[bytes, bool]], tls: ssl.SSLContext | None = None) -> None:
        self.answers = list(answers)
        self.tls = tls
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while self.answers:
            try:
                conn, _ = self.listener.accept()
                if self.tls is not None:
                    conn = self.tls.wrap_socket(conn, server_side=True)
            except OSError:
                if self.listener.fileno() == -1:
                    return
                continue  # a client that gave up on the handshake
            self.connections += 1
            with conn:
                while self.answers:
                    head = b""
                    while b"\r\n\r\n" not in head:
                        data = conn.recv(65536)
                        if not data:
                            break
                        head += data
                    if not head:
                        break
                    answer, close = self.answers.pop(0)
                    conn.sendall(answer)
                    if close:
                        break

    def stop(self) -> None:
        self.listener.close()


@pytest.fixture
def scripted() -> Iterator[list[Scripted]]:
    made: list[Scripted] = []
    yield made
    for server in made:
        server.stop()


def serve(made: list[Scripted], *answers: tuple[bytes, bool]) -> tuple[Scripted, ApiClient]:
    server = Scripted(list(answers))
    made.append(server)
    return server, ApiClient(server.url, {}, connect_timeout=5, read_timeout=5)


def test_a_chunked_answer_is_read_whole_and_keeps_the_connection(scripted: list[Scripted]) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    server, fetching = serve(scripted, (chunked, False), (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False))
    assert fetching.get(f"{server.url}/a", 1000).body == b"hello world"
    assert fetching.get(f"{server.url}/b", 1000).body == b"ok"
    assert server.connections == 1


def test_a_chunked_answer_past_the_limit_is_refused(scripted: list[Scripted]) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"400\r\n" + b"x" * 1024 + b"\r\n0\r\n\r\n"
    server, fetching = serve(scripted, (chunked, False))
    with pytest.raises(TooLarge):
        fetching.get(f"{server.url}/a", 1000)
    assert not fetching._idle


def test_an_answer_without_a_length_is_read_to_the_end_of_the_connection(scripted: list[Scripted]) -> None:
    server, fetching = serve(
        scripted,
        (b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"old": true}', True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
    )
    answer = fetching.get(f"{server.url}/a", 1000)
    assert (answer.status, answer.body, answer.headers["content-type"]) == (200, b'{"old": true}', "application/json")
    assert fetching.get(f"{server.url}/b", 1000).body == b"ok"
    assert not fetching._idle  # "Connection: close" is honoured
    assert fetching.get(f"{server.url}/c", 1000).body == b"ok"
    assert server.connections == 3


def test_interim_answers_are_skipped_and_headers_are_read_as_sent(scripted: list[Scripted]) -> None:
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nX-Note: one\r\n  two\r\n"
        b"Vary: a\r\nVary: b\r\nContent-Length: 0\r\n\r\n"
    )
    server, fetching = serve(scripted, (answer, False))
    got = fetching.get(f"{server.url}/a", 1000)
    assert got.status == 429
    assert (got.headers.get("retry-after"), got.headers["x-note"], got.headers["vary"]) == ("2", "one two", "a, b")


@pytest.mark.parametrize(
    "answer",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * 101 + b"\r\n",
        b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n" + b"x" * 100_000,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n" * 6 + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 099 Odd\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: \xc2\xb2\r\n\r\n",
    ],
    ids=[
        "not-http",
        "bad-status",
        "truncated",
        "bad-length",
        "bad-header",
        "too-many",
        "long-line",
        "bad-chunk",
        "cut-chunk",
        "negative-chunk",
        "hex-prefix-chunk",
        "chunk-longer-than-said",
        "interim-flood",
        "status-099",
        "spaced-name",
        "superscript-length",
    ],
)
def test_an_answer_that_is_not_http_is_a_protocol_error(scripted: list[Scripted], answer: bytes) -> None:
    server, fetching = serve(scripted, (answer, True))
    with pytest.raises(FetchFailed) as failed:
        fetching.get(f"{server.url}/a", 1_000_000)
    assert failed.value.kind == "RemoteProtocolError"
    assert not fetching._idle


def test_a_new_connection_closed_without_an_answer_is_not_retried(scripted: list[Scripted]) -> None:
    server, fetching = serve(scripted, (b"", True))
    with pytest.raises(FetchFailed) as failed:
        fetching.get(f"{server.url}/a", 1000)
    assert failed.value.kind == "ReadError"
    assert server.connections == 1


def test_nothing_can_be_smuggled_into_the_request() -> None:
    fetching = ApiClient("http://127.0.0.1:9", {}, connect_timeout=1, read_timeout=1)
    for target in ("/a b", "/a?key=k\x00", "/a\x7f", "/caf\u00e9"):
        with pytest.raises(FetchFailed, match="space, a control or a non-ASCII") as refused:
            fetching.get(f"http://127.0.0.1:9{target}", 1000)
        assert "key" not in str(refused.value)
    with pytest.raises(ValueError, match="invalid header"):
        ApiClient(
            "http://127.0.0.1:9", {"Authorization": "Bearer x\r\nX-Injected: 1"}, connect_timeout=1, read_timeout=1
        )


def test_an_ambiguous_length_is_read_but_the_connection_is_not_kept(scripted: list[Scripted]) -> None:
    both = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    kept = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
    server, fetching = serve(scripted, (both, False), (kept, False), (kept, False))
    assert fetching.get(f"{server.url}/a", 1000).body == b"ok"  # the chunks win; not reused
    assert not fetching._idle
    assert fetching.get(f"{server.url}/b", 1000).body == b"ok"
    assert fetching.get(f"{server.url}/c", 1000).body == b"ok"  # HTTP/1.0 keep-alive: reused
    assert server.connections == 2


@pytest.mark.parametrize(
    ("base", "host"),
    [
        ("https://api.example.com", b"api.example.com"),
        ("https://api.example.com:443", b"api.example.com"),
        ("http://api.example.com:8080/v1", b"api.example.com:8080"),
        ("http://[::1]:8080", b"[::1]:8080"),
        ("https://b\u00fccher.example", b"xn--bcher-kva.example"),
    ],
)
def test_the_host_header_names_the_api_as_http_client_did(base: str, host: bytes) -> None:
    assert b"\r\nHost: " + host + b"\r\n" in b"\r\n" + ApiClient(base, {}, connect_timeout=1, read_timeout=1)._head


def certificates(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """A CA of its own (its certificate's file) and a server context with a certificate it signed
    for 127.0.0.1: no system CA knows it."""
    now = datetime.datetime.now(datetime.UTC)

    def issue(subject: str, key: Any, issuer: x509.Name, signer: Any, ca: bool) -> x509.Certificate:
        builder = x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        builder = builder.issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
        builder = builder.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(
            now + datetime.timedelta(days=1)
        )
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        if not ca:
            names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Hookgate test CA")])
    ca = issue("Hookgate test CA", ca_key, ca_name, ca_key, ca=True)
    server = issue("127.0.0.1", server_key, ca_name, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "server.pem").write_bytes(server.public_bytes(pem))
    key = server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (directory / "server.key").write_bytes(key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "server.pem", directory / "server.key")
    return directory / "ca.pem", context


def test_https_is_verified_and_kept_alive(scripted: list[Scripted], tmp_path: Path) -> None:
    ca, context = certificates(tmp_path)
    ok = (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False)
    server = Scripted([ok, ok], tls=context)
    scripted.append(server)
    untrusting = ApiClient(server.url, {}, connect_timeout=5, read_timeout=5)
    with pytest.raises(FetchFailed) as refused:
        untrusting.get(f"{server.url}/a", 1000)
    assert refused.value.kind == "ConnectError"
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)
    trusting = ApiClient(server.url, {}, connect_timeout=5, read_timeout=5)
    assert trusting._tls is not None
    trusting._tls.load_verify_locations(ca)
    assert [trusting.get(f"{server.url}/{n}", 1000).body for n in range(2)] == [b"ok", b"ok"]
    assert server.connections == 1  # one kept-alive connection (a refused handshake is not counted)


def test_a_tls_handshake_that_never_ends_is_a_connect_timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (the kernel does), says nothing
        url = f"https://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(FetchTimeout, match="connect"):
            ApiClient(url, {}, connect_timeout=0.3, read_timeout=5).get(f"{url}/a", 1000)
