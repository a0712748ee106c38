"""The reconciliation's HTTP client against a real server on 127.0.0.1 (workers/api_client.py):
kept-alive connections, a connection the server closed, timeouts, refused connections, and
answers larger than the limit, declared or not."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from workers.api_client import ApiClient, FetchFailed, FetchTimeout, TooLarge


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
    return ApiClient(api.url, {"Authorization": "Bearer t0k3n"}, **settings)  # type: ignore[arg-type]


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


def test_a_kept_alive_connection_closed_while_idle_is_retried_once(api: Api) -> None:
    """The server may drop an idle connection without a word; the client learns it only when it
    sends the next GET there, and sends it again on a new connection."""
    fetching = client(api)
    assert fetching.get(f"{api.url}/first", 1000).status == 200
    idle = fetching._idle[0]
    assert idle.sock is not None
    idle.sock.shutdown(socket.SHUT_RDWR)  # as if the server's end had gone away
    assert fetching.get(f"{api.url}/second", 1000).status == 200


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
