"""Real servers for tests: uvicorn on a loopback port, worker processes, a killable TCP proxy."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.server import GracefulServer, uvicorn_config
from gateway.settings import DEFAULT_LIMITS, ServerLimits

ROOT = Path(__file__).resolve().parents[2]


def wait_for(
    predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02, what: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def terminate(process: subprocess.Popen[bytes], timeout: float = 60) -> int:
    """SIGTERM, as a process manager stops a process; SIGKILL after ``timeout``. Its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


class ServerThread:
    """An ASGI app served by uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, app: Any, limits: ServerLimits = DEFAULT_LIMITS) -> None:
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = GracefulServer(uvicorn_config(app, limits, log_level="warning"))  # as ``serve`` runs
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> ServerThread:
        self.thread.start()
        wait_for(lambda: self.server.started, 15, what="uvicorn to start")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
        # The intake's pool stays open otherwise; its lifespan freezes the heap (gc.freeze), so
        # the garbage collector never closes it either, and PostgreSQL runs out of connections.
        engine = getattr(getattr(self.app, "intake", None), "engine", None)
        if engine is not None:
            engine.dispose()


class WorkerProcess:
    """``hookgate worker`` (Dramatiq's CLI on workers.main) as a separate process group.

    ``cli``: the real ``hookgate worker`` command that runs it. With ``metrics_port`` (which implies
    ``cli``), its ``/metrics`` on that port of 127.0.0.1; otherwise no metrics, which frees the
    tests from finding a port for each.
    """

    def __init__(
        self,
        env: dict[str, str],
        *,
        processes: int = 1,
        threads: int = 4,
        cli: bool = False,
        metrics_port: int | None = None,
    ) -> None:
        command = [sys.executable, "-m", "dramatiq", "workers.main", "-p", str(processes), "-t", str(threads)]
        if cli or metrics_port is not None:
            options = ["--processes", str(processes), "--threads", str(threads), "--metrics-host", "127.0.0.1"]
            command = [
                sys.executable,
                "-m",
                "gateway.cli",
                "worker",
                *options,
                "--metrics-port",
                str(metrics_port or 0),
            ]
        self.log = Path(env["HOOKGATE_TEST_EFFECTS"]) / f"worker-{time.monotonic_ns()}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def kill(self) -> None:
        """SIGKILL the whole group: the parent and every worker process."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; ``stop`` cuts every connection, ``start`` reopens."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        if self._listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would not, and the
            # socket would keep accepting.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
