"""A fake provider API: a real HTTP server on 127.0.0.1 that worker processes reconcile against.

It serves JSON states by path, can be scripted per path (answer 429 with ``Retry-After``, 500,
slowly, or 404), can be stopped and started again on the same port (the API is down), and
records every request it receives with the time it came in.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Answer:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class Seen:
    path: str
    at: float
    headers: dict[str, str]


class FakeApi:
    """A provider's REST API on 127.0.0.1 answering what a test scripted.

    ``keep_alive``: answer over HTTP/1.1 persistent connections, as real APIs do (the benchmarks
    use it). Off by default, so that :meth:`stop` really cuts every client off: a connection a
    client keeps open would otherwise outlive the listening socket.
    """

    def __init__(self, *, keep_alive: bool = False) -> None:
        self.keep_alive = keep_alive
        self.states: dict[str, Any] = {}
        self.scripts: dict[str, deque[Answer]] = {}
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeApi:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if self.keep_alive else "HTTP/1.0"
            disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK stall

            def do_GET(self) -> None:
                answer = api._answer(self.path, dict(self.headers.items()))
                if answer.delay:
                    time.sleep(answer.delay)
                body = b"" if answer.body is None else json.dumps(answer.body).encode()
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """The API is down: connections to its port are refused until :meth:`start`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def script(self, path: str, *answers: Answer) -> None:
        """Answer the next requests for ``path`` with ``answers``, then serve its state again."""
        with self._lock:
            self.scripts.setdefault(path, deque()).extend(answers)

    def seen(self, path: str | None = None) -> list[Seen]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def _answer(self, path: str, headers: dict[str, str]) -> Answer:
        with self._lock:
            self.requests.append(Seen(path, time.monotonic(), headers))
            script = self.scripts.get(path)
            if script:
                return script.popleft()
            if path in self.states:
                return Answer(200, self.states[path])
        return Answer(404, {"error": "not found"})
