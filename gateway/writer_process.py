"""The intake's batch writer in a process of its own.

Under load the intake's process is one busy event loop, and a thread beside it that talks to the
store waits for the GIL after every one of its small waits: every ``sqlite3`` step, the fsync,
every round trip to PostgreSQL. Measured at saturation, a 31-row SQLite batch took 5.75 ms of
wall time for 2.9 ms of CPU, and the committer set the pace (bench/README.md, Intake). Here the
committer thread hands each batch to a child process that runs :class:`~gateway.store_writer.
BatchWriter` and sends back the new rows' ids: two system calls and one wait a batch in the
intake's process, whatever the store does.

What does not change: a request is answered 2xx only after the child has committed (and, on
SQLite, synced) its row. The child ignores SIGINT and SIGTERM (the intake stops it once what is
waiting is written) and exits when its socket closes, so it never outlives the intake. If it
dies, the batch it was writing is answered 503 (its rows may or may not be stored: the senders'
retries are then accepted or answered ``duplicate``), the death is logged and counted
(``hookgate_intake_writer_exits_total``), and the next batch starts a new child. A failed WAL
sync in the child stops the intake acknowledging, as it does on the committer thread.

Messages are ``marshal``-ed tuples behind a 4-byte length: about 2 µs of the intake's CPU a
2 KB row, against the 70-100 µs a row the committer thread spent in the intake's process.
"""

from __future__ import annotations

import importlib
import logging
import marshal
import signal
import socket
import struct
import subprocess
import sys
import traceback
from collections.abc import Callable
from typing import Any

from .batch_insert import Key
from .errors import StoreUnavailable
from .store_writer import BatchWriter, WriteFailed, failure_reason, is_unexpected, refused_for_content

log = logging.getLogger("hookgate.intake")

#: The writer a child runs by default: ``module:callable``, called with the store's URL.
DEFAULT_FACTORY = "gateway.writer_process:open_writer"
#: How long a new child may take to import, connect nothing yet, and say it is ready.
START_SECONDS = 60.0
#: How long a stopping child may take to finish its batch and give its connection back.
STOP_SECONDS = 30.0

_LENGTH = struct.Struct("!I")


class Channel:
    """Length-prefixed ``marshal`` messages over a stream socket; EOFError when it closes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, message: Any) -> None:
        payload = marshal.dumps(message)
        self.sock.sendall(_LENGTH.pack(len(payload)) + payload)

    def receive(self) -> Any:
        (length,) = _LENGTH.unpack(self._exactly(_LENGTH.size))
        # Only the intake and its own child hold the two ends of the socket pair.
        return marshal.loads(self._exactly(length))  # noqa: S302

    def _exactly(self, size: int) -> bytes:
        buffer = bytearray(size)
        view, got = memoryview(buffer), 0
        while got < size:
            count = self.sock.recv_into(view[got:])
            if not count:
                raise EOFError("the other end closed the channel")
            got += count
        return bytes(buffer)

    def close(self) -> None:
        self.sock.close()


class WriterProcess:
    """Stands in for a :class:`~gateway.store_writer.BatchWriter` on the committer thread, and
    runs one in a child process (see the module's text). One caller at a time.

    Args:
        url: the store's URL, as ``HOOKGATE_DATABASE_URL`` gives it (sent over the socket, never
            on the child's command line, where any user could read a password).
        factory: ``module:callable`` building the child's writer from ``url``.
    """

    def __init__(self, url: str, factory: str = DEFAULT_FACTORY) -> None:
        self.url, self.factory = url, factory
        #: As :attr:`BatchWriter.sync_failed`: set from the child's answer to a failed sync.
        self.sync_failed: str | None = None
        #: Called once for each child that exited unasked (the intake's metric counts them).
        self.on_exit: Callable[[], None] = lambda: None
        self.process: subprocess.Popen[bytes] | None = None
        self._channel: Channel | None = None
        #: Whether the child holds a connection (so an idle committer's release is worth a call).
        self._holding = False

    def start(self) -> None:
        """Start the child and wait until it is ready. Raises StoreUnavailable if it is not."""
        ours, theirs = socket.socketpair()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(theirs.fileno())], pass_fds=(theirs.fileno(),)
            )
        except OSError as exc:
            ours.close()
            raise StoreUnavailable(f"the store writer process did not start: {exc}") from exc
        finally:
            theirs.close()
        ours.settimeout(START_SECONDS)
        self._channel = Channel(ours)
        try:
            self._exchange(("open", self.url, self.factory))
        except BaseException:
            self._end_child()
            raise
        ours.settimeout(None)
        log.info("the intake's store writer runs in process %d", self.process.pid)

    def write(self, rows: list[dict[str, Any]], sent: list[int]) -> dict[Key, int]:
        if rows and self.sync_failed is not None:
            raise StoreUnavailable(self.sync_failed)
        if self._channel is not None and self.process is not None and self.process.poll() is not None:
            self._died(EOFError("exited between batches"))  # found before this batch is lost with it
        if self._channel is None:  # the last child died: a new one for this batch
            self.start()
        self._holding = True
        inserted: dict[Key, int] = self._exchange(("write", rows, sent))
        return inserted

    def release(self) -> None:
        if self._channel is not None and self._holding and self.process is not None and self.process.poll() is None:
            self._exchange(("release",))
            self._holding = False

    @property
    def holds_connection(self) -> bool:
        return self._holding

    def stop(self) -> None:
        """Close the socket (the child gives its connection back and exits) and reap it."""
        if self._channel is None:
            return
        self._channel.close()
        self._channel = None
        if self.process is not None:
            try:
                self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                log.warning("the store writer process %d did not stop; killing it", self.process.pid)
                self.process.kill()
                self.process.wait()

    def _exchange(self, message: tuple[Any, ...]) -> Any:
        """Send ``message``, return the child's answer; its failures raise as they did there."""
        assert self._channel is not None
        try:
            self._channel.send(message)
            answer = self._channel.receive()
        except (OSError, EOFError) as exc:
            self._died(exc)
            raise StoreUnavailable("the store writer process exited") from None
        if answer[0] == "ok":
            return answer[1]
        _, reason, for_content, details, sync_failed = answer
        if sync_failed is not None:
            self.sync_failed = sync_failed
        self._holding = False  # the child gives its connection back after any error
        raise WriteFailed(reason, for_content=for_content, details=details)

    def _died(self, exc: BaseException) -> None:
        code = self._end_child()
        log.error(
            "the intake's store writer process exited (%s; exit code %s): its batch is answered 503, "
            "and the next batch starts a new one",
            type(exc).__name__,
            code,
        )
        self.on_exit()

    def _end_child(self) -> int | None:
        """Close the socket and reap the child, killing it if it is still there."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        self._holding = False
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.kill()
        return process.wait()


def open_writer(url: str) -> BatchWriter:
    """The child's writer: an engine of its own for ``url``, as the intake's."""
    from .database import create_store_engine

    return BatchWriter(create_store_engine(url))


def _load(factory: str) -> Callable[[str], BatchWriter]:
    module, _, name = factory.partition(":")
    built: Callable[[str], BatchWriter] = getattr(importlib.import_module(module), name)
    return built


def _failure(exc: BaseException, writer: BatchWriter | None) -> tuple[Any, ...]:
    details = traceback.format_exc() if is_unexpected(exc) else None
    sync_failed = writer.sync_failed if writer is not None else None
    return ("failed", failure_reason(exc), refused_for_content(exc), details, sync_failed)


def serve_channel(channel: Channel) -> None:
    """The child's loop: open the writer, then answer each message, until the socket closes."""
    writer: BatchWriter | None = None
    try:
        _, url, factory = channel.receive()
        try:
            writer = _load(factory)(url)
        except Exception as exc:
            channel.send(_failure(exc, None))
            return
        channel.send(("ok", None))
        while True:
            try:
                message = channel.receive()
            except EOFError:
                return
            try:
                if message[0] == "write":
                    answer: tuple[Any, ...] = ("ok", writer.write(message[1], message[2]))
                else:
                    writer.release()
                    answer = ("ok", None)
            except Exception as exc:
                answer = _failure(exc, writer)
            channel.send(answer)
    finally:
        if writer is not None:
            writer.stop()


def main(argv: list[str]) -> None:
    # Ctrl-C and a service manager's SIGTERM reach the whole process group: the intake writes
    # what is waiting before it closes this child's socket, so the child waits for that.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from .logs import configure_logging

    configure_logging()
    sock = socket.socket(fileno=int(argv[0]))
    try:
        serve_channel(Channel(sock))
    except (OSError, EOFError):
        pass  # the intake is gone: nothing is waiting for an answer
    finally:
        sock.close()


if __name__ == "__main__":
    main(sys.argv[1:])
