"""The intake's batch writer in a process of its own: the child's side, and how the intake
starts it and talks to it.

Under load the intake's process is one busy event loop, and a thread beside it that talks to the
store waits for the GIL after every one of its small waits: every ``sqlite3`` step, the fsync,
every round trip to PostgreSQL. Measured at saturation, a 31-row SQLite batch took 5.75 ms of
wall time for 2.9 ms of CPU (bench/README.md, Intake). The child runs a
:class:`~gateway.store_writer.BatchWriter` with no one to share its GIL with, and answers each
batch with the new rows' ids; :mod:`gateway.child_commit` drives it from the event loop.

The child ignores SIGINT and SIGTERM (the intake writes what waits, then closes the child's
socket) and exits when its socket closes, so it never outlives the intake, however that ends.

The child also relays (:mod:`gateway.relay`): once it has answered a batch, it enqueues the
batch's new events that are due at once. With Redis they were written ``queued``, and those whose
enqueue failed are set back to ``received`` with its next message; with RabbitMQ the next message
marks the confirmed ones ``queued``.

The broker client is the child's own, with short timeouts and no retries
(:data:`RELAY_TIMEOUT`): the next batch waits for the enqueue, so a broker that hangs delays it
by at most that much, once, and the intake then answers 503 until a probe finds it again.

Messages are ``marshal``-ed tuples behind a 4-byte length, one answer for each message:
``("open", url, factory, broker_url, broker_healthy)`` first (a new child starts from what the
intake last heard of the broker), then ``("write", rows, hold)`` (set back or mark what the
child enqueued, insert ``rows``, answer, then enqueue their new events; with ``hold``, keep those for the next
``write`` without it) and ``("idle",)`` (probe a broker found down, enqueue what is held, mark,
then give the connection back). An answer is ``("ok", value)`` or ``("failed",
reason, for_content, details, sync_failed)``. Between answers the child may say ``("broker",
healthy)`` when its enqueues start failing, or the broker answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
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

from .relay import Item, Relay, relayable
from .store_writer import BatchWriter, failure_reason, is_unexpected, refused_for_content

log = logging.getLogger("hookgate.intake")

#: The writer a child runs by default: ``module:callable``, called with the store's URL.
DEFAULT_FACTORY = "gateway.writer_process:open_writer"
#: How long a new child may take to import, connect nothing yet, and say it is ready.
START_SECONDS = 60.0
#: How long a stopping child may take to finish its batch and give its connection back.
STOP_SECONDS = 30.0
#: The most seconds the child's relay waits on the broker for one command or connection.
RELAY_TIMEOUT = 2.0

_LENGTH = struct.Struct("!I")


def frame(message: Any) -> tuple[bytes, bytes]:
    """A message as sent: its length, then its ``marshal`` form."""
    payload = marshal.dumps(message)
    return _LENGTH.pack(len(payload)), payload


class Channel:
    """Length-prefixed ``marshal`` messages over a stream socket; EOFError when it closes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, message: Any) -> None:
        self.sock.sendall(b"".join(frame(message)))

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
    """Starts the child and keeps track of it (the intake's side of its lifecycle).

    Args:
        url: the store's URL, as ``HOOKGATE_DATABASE_URL`` gives it (sent over the socket, never
            on the child's command line, where any user could read a password).
        broker_url: the broker's, to which the child hands the events it commits (as sent).
        factory: ``module:callable`` building the child's writer from ``url``.
    """

    def __init__(self, url: str, broker_url: str, factory: str = DEFAULT_FACTORY) -> None:
        self.url, self.broker_url, self.factory = url, broker_url, factory
        self.process: subprocess.Popen[bytes] | None = None

    def spawn(self) -> socket.socket:
        """Start a child; the intake's end of its socket. Its first message must be :meth:`opening`.

        Raises:
            OSError: the child could not be started.
        """
        ours, theirs = socket.socketpair()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(theirs.fileno())], pass_fds=(theirs.fileno(),)
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return ours

    def opening(self, broker_healthy: bool) -> tuple[str, str, str, str, bool]:
        """The first message to a new child: what to open, and whether the broker was last heard
        to answer (a child that replaces one which found it down goes on probing it)."""
        return ("open", self.url, self.factory, self.broker_url, broker_healthy)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def detach(self) -> subprocess.Popen[bytes] | None:
        """The child, which this object no longer keeps track of (a new one may be spawned)."""
        process, self.process = self.process, None
        return process

    def kill(self) -> None:
        """Send the child SIGKILL. It may not die at once (a process in a system call that cannot
        be interrupted dies when the call returns): the caller gives it up without waiting for
        its socket to close."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    def reap(self, timeout: float = 0.0) -> int | None:
        """Wait up to ``timeout`` seconds for the child to exit, then kill it; its exit code."""
        return reap(self.detach(), timeout)


def reap(process: subprocess.Popen[bytes] | None, timeout: float = 0.0) -> int | None:
    """Wait up to ``timeout`` seconds for ``process`` to exit, then kill it; its exit code."""
    if process is None:
        return None
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        if timeout:
            log.warning("the store writer process %d did not stop; killing it", process.pid)
        process.kill()
        return process.wait()


class WriterConnection(asyncio.Protocol):
    """The intake's end of the socket, on its event loop: ``send`` a message, and each answer is
    handed to ``answered``; ``lost`` is called once the child's end is closed (its exit)."""

    def __init__(self, answered: Callable[[Any], None], lost: Callable[[WriterConnection], None]) -> None:
        self.answered, self.lost = answered, lost
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are no subclass of asyncio.Transport; they have what is used here.
        self.transport = transport  # type: ignore[assignment]

    def send(self, message: Any) -> None:
        assert self.transport is not None
        self.transport.writelines(frame(message))  # two buffers: no copy of the rows

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer)
            end = _LENGTH.size + length
            if len(buffer) < end:
                break
            # Only the intake and its own child hold the two ends of the socket pair.
            message = marshal.loads(bytes(buffer[_LENGTH.size : end]))  # noqa: S302
            del buffer[:end]  # before the answer is handled, whatever that does
            self.answered(message)

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.lost(self)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


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


def open_relay(broker_url: str) -> Relay:
    """The child's relay: a broker client of its own, which gives up after :data:`RELAY_TIMEOUT`."""
    from .queue import EventQueue, create_broker

    return Relay(EventQueue(create_broker(broker_url, timeout=RELAY_TIMEOUT), confirm_timeout=RELAY_TIMEOUT))


class ChildSide:
    """What the child does with each message (see the module's text)."""

    def __init__(self, channel: Channel, writer: BatchWriter, relay: Relay, broker_healthy: bool) -> None:
        self.channel, self.writer, self.relay = channel, writer, relay
        #: New events of writes sent with ``hold``, enqueued with the next write without it.
        self.held: list[Item] = []
        relay.healthy = self._said_healthy = broker_healthy

    def write(self, rows: list[dict[str, Any]], hold: bool) -> None:
        inserted = self._marking(lambda sent: self.writer.write(rows, sent))
        if inserted is None:
            return
        self.held += relayable(rows, inserted)
        if not hold:
            self._relay()

    def idle(self) -> None:
        self.relay.probe()
        self._relay()
        self._marking(self._mark_and_release)

    def _mark_and_release(self, sent: list[int]) -> dict[Any, int]:
        try:
            return self.writer.write([], sent) if sent else {}
        finally:
            self.writer.release()

    def _marking(self, write: Callable[[list[int]], dict[Any, int]]) -> dict[Any, int] | None:
        """Set back what failed to enqueue, run ``write`` with the ids enqueued so far (marked
        ``queued`` by it) and answer; the new rows' ids, or None when it failed (the ids then
        wait for the next write)."""
        self.relay.set_back_unsent(self.writer)
        sent = self.relay.take_sent()
        try:
            inserted = write(sent)
        except Exception as exc:
            self.relay.put_back(sent)
            self.channel.send(_failure(exc, self.writer))
            return None
        self.channel.send(("ok", inserted))
        return inserted

    def _relay(self) -> None:
        """Enqueue what is held (after the answer: no request waits for the broker). While the
        broker is down, the events are left to the workers' recovery sweep (see
        :meth:`gateway.relay.Relay.not_sent`)."""
        held, self.held = self.held, []
        if held and self.relay.healthy:
            self.relay.send(held)
        elif held:
            self.relay.not_sent(held, "it did not answer before")
        if self.relay.healthy != self._said_healthy:
            self._said_healthy = self.relay.healthy
            self.channel.send(("broker", self.relay.healthy))


def serve_channel(channel: Channel) -> None:
    """The child's loop: open the writer and the relay, then answer each message, until the
    socket closes."""
    writer: BatchWriter | None = None
    try:
        _, url, factory, broker_url, broker_healthy = channel.receive()
        try:
            writer = _load(factory)(url)
            relay = open_relay(broker_url)
        except Exception as exc:
            channel.send(_failure(exc, writer))
            return
        channel.send(("ok", None))
        side = ChildSide(channel, writer, relay, broker_healthy)
        while True:
            try:
                message = channel.receive()
            except EOFError:
                return
            if message[0] == "write":
                side.write(message[1], message[2])
            else:
                side.idle()
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
