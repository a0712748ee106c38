"""RabbitMQ as the broker (``HOOKGATE_BROKER_URL=amqp://…``): Dramatiq's RabbitmqBroker, and the
hand-off of a whole batch of messages with publisher confirms.

Dramatiq declares its queues durable (``hookgate``, its delay queue ``hookgate.DQ`` and its
dead-letter queue ``hookgate.XQ``) when a worker starts consuming, and publishes persistent
messages. A message RabbitMQ has *confirmed* is on disk and survives a restart; one it has not
confirmed may be gone. So the intake counts an event as handed over (``queued``) only once
RabbitMQ confirmed its message; anything else stays ``received`` and the recovery sweep sends it
again (see :mod:`workers.recovery`).

Dramatiq's own ``enqueue`` with ``confirm_delivery`` waits for each message's confirm before it
sends the next (pika's ``BlockingChannel`` does): about 1,000 messages/s on these machines, below
what the intake commits. :class:`ConfirmedPublisher` sends a whole batch and then waits once for
the confirms of all of them (RabbitMQ may confirm many at once, with ``multiple``): about 9,000/s.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import dramatiq
import pika
import pika.exceptions
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import xq_name

from .errors import BrokerUnavailable

log = logging.getLogger("hookgate.broker")

SCHEMES = ("amqp", "amqps")

#: What a persistent message carries, as Dramatiq publishes it.
PERSISTENT = pika.BasicProperties(delivery_mode=2)

T = TypeVar("T")


def is_rabbitmq_url(url: str) -> bool:
    return urlsplit(url).scheme in SCHEMES


def create_rabbitmq_broker(
    url: str, *, middleware: list[dramatiq.Middleware], timeout: float | None = None
) -> RabbitmqBroker:
    """Dramatiq's RabbitMQ broker on ``url``; what Dramatiq itself publishes is confirmed too.

    pika logs every failed connection attempt as several ERROR lines with a traceback; while
    RabbitMQ is down that floods the log. Hookgate says it once, in its own words (the intake's
    "broker unavailable", the sweep's failed pass, Dramatiq's consumer restarts), so pika only
    speaks when it is critical.

    With ``timeout``, a connection's socket operations and its whole opening take at most that
    many seconds each (pika's defaults: 10 and 15).
    """
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    broker = RabbitmqBroker(url=url, confirm_delivery=True, middleware=middleware)
    if timeout is not None:
        parameters = broker.parameters if isinstance(broker.parameters, list) else [broker.parameters]
        for each in parameters:
            each.socket_timeout = each.stack_timeout = timeout
    return broker


def queue_arguments(queue_name: str) -> dict[str, Any]:
    """The arguments Dramatiq declares ``queue_name`` with: a queue declared twice must be
    declared alike, or RabbitMQ closes the channel (``PRECONDITION_FAILED``)."""
    return {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": xq_name(queue_name)}


def _nothing() -> None:
    pass


class QueueMissing(BrokerUnavailable):
    """Raised when RabbitMQ returned messages as unroutable: their queue was deleted."""


@dataclass(slots=True)
class _Confirms:
    """Which messages published on a channel in confirm mode RabbitMQ has confirmed.

    RabbitMQ numbers a channel's messages 1, 2, …; a confirm with ``multiple`` covers every number
    up to its own. ``upto`` is the highest number below which all are confirmed.
    """

    #: Ends the connection's wait for events (see :meth:`ConfirmedPublisher._wait`).
    wake: Callable[[], None]
    published: int = 0
    upto: int = 0
    single: set[int] = field(default_factory=set)
    refused: bool = False
    returned: int = 0
    selected: bool = False

    def on_select(self, frame: Any) -> None:
        self.selected = True
        self.wake()

    def on_confirm(self, frame: Any) -> None:
        method = frame.method
        if isinstance(method, pika.spec.Basic.Nack):
            self.refused = True
        if method.multiple:
            self.upto = max(self.upto, method.delivery_tag)
            self.single = {tag for tag in self.single if tag > self.upto}
        else:
            self.single.add(method.delivery_tag)
        while self.upto + 1 in self.single:
            self.upto += 1
            self.single.discard(self.upto)
        if self.done:
            self.wake()

    def on_return(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self.returned += 1

    @property
    def done(self) -> bool:
        return self.upto >= self.published


class ConfirmedPublisher:
    """One connection to RabbitMQ that publishes batches with confirms and reads the queue's depth.

    Safe to share between threads (a lock serialises them; pika's connections are not
    thread-safe). The connection is opened on first use and opened again once after a failure: the
    server closes an idle one whose heartbeats went unanswered, and a restarted RabbitMQ drops it.

    Args:
        parameters: pika's connection parameters (Dramatiq's broker parsed them from the URL).
        queue_name: the queue every message goes to; declared as Dramatiq declares it.
        confirm_timeout: how long a batch may wait for its confirms (RabbitMQ blocks publishers
            during a memory or disk alarm) before it counts as not sent.
    """

    def __init__(self, parameters: Any, queue_name: str, *, confirm_timeout: float = 10.0) -> None:
        self.parameters = parameters
        self.queue_name = queue_name
        self.confirm_timeout = confirm_timeout
        self._lock = threading.Lock()
        self._connection: Any = None
        self._control: Any = None  # a BlockingChannel: declares
        self._channel: Any = None  # pika's asynchronous channel under a BlockingChannel: publishes
        self._confirms = _Confirms(_nothing)

    def publish(self, bodies: Sequence[bytes]) -> None:
        """Publish each body as a persistent message; return once RabbitMQ confirmed them all.

        Raises:
            BrokerUnavailable: RabbitMQ refused a message (a nack, e.g. a queue length limit with
                ``reject-publish``) or did not confirm them all within ``confirm_timeout``.
            pika.exceptions.AMQPError: the connection failed, and failed again on a new one.
        """
        if bodies:
            self._with_connection(lambda: self._publish(bodies))

    def ready(self) -> int:
        """How many messages wait in the queue for a consumer (declaring it if it is missing).

        Messages delivered to a consumer and not acknowledged yet are not counted.
        """
        return self._with_connection(self._declare)

    def close(self) -> None:
        with self._lock:
            self._drop()

    # -- under the lock ----------------------------------------------------------------------

    def _with_connection(self, action: Callable[[], T]) -> T:
        with self._lock:
            for attempt in (1, 2):
                try:
                    self._open()
                    return action()
                except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError, QueueMissing) as exc:
                    self._drop()
                    if attempt == 2:
                        raise
                    log.debug("RabbitMQ: %s; trying once more on a new connection", type(exc).__name__)
                except BaseException:
                    self._drop()  # a timeout or a nack leaves the channel's numbering unknown
                    raise
        raise AssertionError("unreachable")

    def _open(self) -> None:
        if self._connection is not None and self._connection.is_open and self._channel.is_open:
            return
        self._drop()
        self._connection = pika.BlockingConnection(self.parameters)
        self._control = self._connection.channel()
        self._declare()
        # pika's BlockingChannel waits for each confirm in turn; the asynchronous channel it wraps
        # sends a batch at once and reports confirms as they arrive.
        channel = self._connection.channel()._impl
        connection = self._connection
        self._confirms = confirms = _Confirms(lambda: connection.add_callback_threadsafe(_nothing))
        channel.add_on_return_callback(confirms.on_return)
        channel.confirm_delivery(ack_nack_callback=confirms.on_confirm, callback=confirms.on_select)
        self._channel = channel
        self._wait(lambda: confirms.selected, "switch to confirm mode")

    def _declare(self) -> int:
        frame = self._control.queue_declare(
            queue=self.queue_name, durable=True, arguments=queue_arguments(self.queue_name)
        )
        return int(frame.method.message_count)

    def _publish(self, bodies: Sequence[bytes]) -> None:
        confirms = self._confirms
        confirms.refused, confirms.returned = False, 0
        for body in bodies:
            self._channel.basic_publish(
                exchange="", routing_key=self.queue_name, body=body, properties=PERSISTENT, mandatory=True
            )
        confirms.published += len(bodies)
        self._wait(lambda: confirms.done, f"confirm {len(bodies)} messages")
        if confirms.returned:
            raise QueueMissing(f"RabbitMQ returned {confirms.returned} messages: queue {self.queue_name} is gone")
        if confirms.refused:
            raise BrokerUnavailable(f"RabbitMQ refused messages of a batch of {len(bodies)} (a nack)")

    def _wait(self, condition: Callable[[], bool], what: str) -> None:
        """Process the connection's events until ``condition`` holds.

        ``process_data_events`` returns early only for events of the blocking connection's own (a
        consumer's message, a callback added with ``add_callback_threadsafe``), not for confirms
        on the asynchronous channel: :class:`_Confirms` adds such a callback when the wait is over.
        """
        deadline = time.monotonic() + self.confirm_timeout
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrokerUnavailable(f"RabbitMQ did not {what} within {self.confirm_timeout:g} s")
            self._connection.process_data_events(time_limit=min(left, 1.0))
            if not self._channel.is_open:
                raise pika.exceptions.ChannelWrongStateError("RabbitMQ closed the publishing channel")

    def _drop(self) -> None:
        connection, self._connection, self._control, self._channel = self._connection, None, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except Exception:  # already broken: nothing to close
                log.debug("RabbitMQ: closing a broken connection failed", exc_info=True)
