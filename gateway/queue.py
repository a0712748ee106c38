"""The hand-off of stored events to Dramatiq, batched.

The intake never imports the workers: it builds the messages of the ``hookgate.process_event``
actor itself. Each message carries ``([event pks], token)``: one message may carry several
events, which then share its token (the intake groups up to :data:`MESSAGE_EVENTS` of a commit's
new events so, see :func:`share_tokens`; a worker may spread them over its idle threads, see
:mod:`workers.spreading`). The
token is also stored in each event row (``message_id``) and is the message's Redis id, so that

* a worker runs an event only with the message the store expects (stale copies are dropped), and
* the recovery sweep can ask Redis whether it still holds an event's message (RabbitMQ cannot be
  asked that; see :mod:`workers.recovery` for what the sweep does there).

With Redis, a whole batch is written as Dramatiq's enqueue writes one message (its
``dispatch.lua``: ``HSET <queue>.msgs id data`` and ``RPUSH <queue> id``), but as one ``HSET`` and
one ``RPUSH`` for all of them inside ``MULTI``: a single round trip, and no per-message Lua call
or per-message Python object, which measured as most of the hand-off's cost. The message bytes
are those of ``dramatiq.Message.encode`` (``tests/gateway/test_queue.py`` holds us to it).
With RabbitMQ, a batch is published at once and counts as sent once RabbitMQ confirmed every
message of it (:class:`gateway.rabbitmq.ConfirmedPublisher`). Other brokers get one ``enqueue`` per
message.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import dramatiq
import orjson
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .rabbitmq import ConfirmedPublisher, create_rabbitmq_broker, is_rabbitmq_url

QUEUE_NAME = "hookgate"
ACTOR_NAME = "hookgate.process_event"
NAMESPACE = "hookgate"

#: The most events one broker message carries. A message costs a worker a fetch, an
#: acknowledgement and a query whatever it carries: per event, that was the largest share of a
#: worker's CPU once a resource's events were claimed and committed a round at a time.
MESSAGE_EVENTS = 32


def new_token() -> str:
    return uuid.uuid4().hex


#: The ``message_id`` of a row the intake will send at once, until :func:`share_tokens` gives it
#: its message's token (``None`` is a row held for its ordering window: no message yet).
UNSENT = ""


def share_tokens(rows: list[dict[str, Any]]) -> None:
    """Give the rows to be sent at once (``message_id`` not ``None``) shared tokens, up to
    :data:`MESSAGE_EVENTS` rows a token, a resource's rows side by side: each token is then one
    broker message carrying all its rows' events. A chunk keeps its first row's token if it has
    one; rows :data:`UNSENT` get theirs here, one per message rather than one per request."""
    sent = sorted(
        (row for row in rows if row["message_id"] is not None),
        key=lambda row: (row["provider"], row["resource_id"] or ""),
    )
    for start in range(0, len(sent), MESSAGE_EVENTS):
        chunk = sent[start : start + MESSAGE_EVENTS]
        token = chunk[0]["message_id"] or new_token()
        for row in chunk:
            row["message_id"] = token


def create_broker(
    url: str, *, middleware: list[dramatiq.Middleware] | None = None, timeout: float | None = None
) -> dramatiq.Broker:
    """Dramatiq's RabbitMQ broker for an ``amqp://`` URL, else its Redis broker with bounded socket
    timeouts. With ``timeout``, no command or connection attempt takes longer, and Redis commands
    are not retried (redis-py's default retries a failed command, with pauses between tries): for
    a caller that must not wait long on a broker that hangs."""
    if is_rabbitmq_url(url):
        return create_rabbitmq_broker(url, middleware=middleware or [], timeout=timeout)
    options: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": 2}
    if timeout is not None:
        options = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "retry": Retry(NoBackoff(), 0)}
    client = redis.Redis.from_url(url, health_check_interval=30, **options)
    return RedisBroker(client=client, namespace=NAMESPACE, middleware=middleware or [])


def messages(items: Iterable[tuple[int, str]]) -> dict[str, list[int]]:
    """The ``(pk, token)`` work items as messages: the pks of each token, in order."""
    grouped: dict[str, list[int]] = {}
    for pk, token in items:
        grouped.setdefault(token, []).append(pk)
    return grouped


class EventQueue:
    """Sends ``(pk, token)`` work items to the workers and answers what the broker still holds."""

    def __init__(self, broker: dramatiq.Broker, *, confirm_timeout: float = 10.0) -> None:
        self.broker = broker
        broker.declare_queue(QUEUE_NAME)
        self.publisher: ConfirmedPublisher | None = None
        if isinstance(broker, RabbitmqBroker):
            self.publisher = ConfirmedPublisher(broker.parameters, QUEUE_NAME, confirm_timeout=confirm_timeout)

    @property
    def tracks_messages(self) -> bool:
        """Whether the broker can say, message by message, whether it still holds one (Redis)."""
        return isinstance(self.broker, RedisBroker)

    @staticmethod
    def message(pks: list[int], token: str) -> dramatiq.Message:
        return dramatiq.Message(
            queue_name=QUEUE_NAME,
            actor_name=ACTOR_NAME,
            args=(pks, token),
            kwargs={},
            options={"redis_message_id": token},
            message_id=token,
        )

    def send(self, items: Iterable[tuple[int, str]]) -> None:
        """Enqueue every item, the items of one token as one message; raises the broker's error
        if any could not be sent."""
        grouped = messages(items)
        if not grouped:
            return
        broker = self.broker
        if self.publisher is not None:
            now = current_millis()
            self.publisher.publish([self.encode(pks, token, now) for token, pks in grouped.items()])
            return
        if not isinstance(broker, RedisBroker):
            for token, pks in grouped.items():
                broker.enqueue(self.message(pks, token))
            return
        now = current_millis()
        encoded = {token: self.encode(pks, token, now) for token, pks in grouped.items()}
        queue_key = f"{broker.namespace}:{QUEUE_NAME}"
        with broker.client.pipeline(transaction=True) as pipe:
            pipe.hset(f"{queue_key}.msgs", mapping=encoded)
            pipe.rpush(queue_key, *encoded)
            pipe.execute()

    @staticmethod
    def encode(pks: list[int], token: str, timestamp_ms: int) -> bytes:
        """The bytes ``EventQueue.message(pks, token).encode()`` would give, built directly."""
        return orjson.dumps(
            {
                "queue_name": QUEUE_NAME,
                "actor_name": ACTOR_NAME,
                "args": [pks, token],
                "kwargs": {},
                "options": {"redis_message_id": token},
                "message_id": token,
                "message_timestamp": timestamp_ms,
            }
        )

    def missing(self, tokens: list[str]) -> set[str]:
        """The tokens whose messages the broker no longer holds (lost by a restart or a flush).

        A message stays in Dramatiq's ``<queue>.msgs`` hash from enqueue until it is acked,
        including while a worker runs it. Brokers that cannot answer report nothing missing.
        """
        broker = self.broker
        if not tokens or not isinstance(broker, RedisBroker):
            return set()
        key = f"{broker.namespace}:{QUEUE_NAME}.msgs"
        with broker.client.pipeline(transaction=False) as pipe:
            for token in tokens:
                pipe.hexists(key, token)
            present = pipe.execute()
        return {token for token, here in zip(tokens, present, strict=True) if not here}

    def orphaned(self, tokens: list[str], silent_for: float) -> set[str]:
        """The tokens whose messages were fetched by a consumer silent for over ``silent_for`` s.

        A worker prefetches messages: Dramatiq's ``fetch`` moves their ids from the queue's list
        into the consumer's ack set ``<namespace>:__acks__.<broker id>.<queue>``, and the
        message stays in ``<queue>.msgs`` until it is acked. After a SIGKILL nobody runs those
        messages, yet :meth:`missing` sees them; Dramatiq hands them back only after its 60 s
        heartbeat timeout, on a maintenance pass that runs on about 1 in 1,000 broker commands.
        So: every broker process writes its heartbeat (ms) into ``<namespace>:__heartbeats__``
        on each dispatch command, and the ack sets of those silent too long are read here.

        Only ids of *fetched* messages are in ack sets, so a long backlog still waiting in the
        queue's list is never reported. A busy live worker keeps its heartbeat: the consumers of
        a process share one broker id, and its idle delay-queue consumer polls at least every
        worker timeout (1 s by default) even while the main queue's prefetch is full, so
        ``silent_for`` must be longer than that. A process that stops talking to Redis
        altogether (SIGSTOP, a long pause, a partition) looks dead: the events it prefetched but
        has not started are sent again under new tokens. That is harmless: its copies no longer
        match the stored token and claim nothing when they run. Heartbeats are the writers'
        clocks, compared with ours as Dramatiq's maintenance does. Other brokers report nothing.
        """
        broker = self.broker
        if not tokens or not isinstance(broker, RedisBroker):
            return set()
        client = broker.client
        cutoff = current_millis() - int(silent_for * 1000)
        silent = client.zrangebyscore(f"{broker.namespace}:__heartbeats__", "-inf", cutoff)
        if not silent:
            return set()
        with client.pipeline(transaction=False) as pipe:
            for consumer in silent:
                pipe.smembers(f"{broker.namespace}:__acks__.{consumer.decode()}.{QUEUE_NAME}")
            held = set().union(*pipe.execute())
        return {token for token in tokens if token.encode() in held}

    def backlog(self) -> int:
        """How many messages wait in the queue, not yet delivered to a worker (RabbitMQ only: 0
        for other brokers)."""
        return self.publisher.ready() if self.publisher is not None else 0

    def ping(self) -> None:
        """Raise unless the broker answers (RabbitMQ: unless the queue can be declared)."""
        if isinstance(self.broker, RedisBroker):
            self.broker.client.ping()
        elif self.publisher is not None:
            self.publisher.ready()
