"""The hand-off of stored events to Dramatiq, batched.

The intake never imports the workers: it builds the messages of the ``hookgate.process_event``
actor itself. Each message carries ``(event pk, token)``; the token is also stored in the event
row (``message_id``) and is the message's Redis id, so that

* a worker runs an event only with the message the store expects (stale copies are dropped), and
* the recovery sweep can ask Redis whether it still holds an event's message.

With Redis, a batch goes out as one pipeline running Dramatiq's own ``dispatch`` script, so the
keys, heartbeats and maintenance are exactly Dramatiq's; other brokers get one ``enqueue`` each.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis

QUEUE_NAME = "hookgate"
ACTOR_NAME = "hookgate.process_event"
NAMESPACE = "hookgate"


def new_token() -> str:
    return uuid.uuid4().hex


def create_broker(redis_url: str, *, middleware: list[dramatiq.Middleware] | None = None) -> RedisBroker:
    """Dramatiq's Redis broker on ``redis_url`` with bounded socket timeouts."""
    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30)
    return RedisBroker(client=client, namespace=NAMESPACE, middleware=middleware or [])


class EventQueue:
    """Sends ``(pk, token)`` work items to the workers and answers what the broker still holds."""

    def __init__(self, broker: dramatiq.Broker) -> None:
        self.broker = broker
        broker.declare_queue(QUEUE_NAME)

    @staticmethod
    def message(pk: int, token: str) -> dramatiq.Message:
        return dramatiq.Message(
            queue_name=QUEUE_NAME,
            actor_name=ACTOR_NAME,
            args=(pk, token),
            kwargs={},
            options={"redis_message_id": token},
        )

    def send(self, items: Iterable[tuple[int, str]]) -> None:
        """Enqueue every item; raises the broker's error if any could not be sent."""
        messages = [self.message(pk, token) for pk, token in items]
        if not messages:
            return
        broker = self.broker
        if not isinstance(broker, RedisBroker):
            for message in messages:
                broker.enqueue(message)
            return
        dispatch = broker.scripts["dispatch"]
        unpack = broker._max_unpack_size()
        with broker.client.pipeline(transaction=False) as pipe:
            for message in messages:
                broker.emit_before("enqueue", message, None)
                dispatch(
                    keys=[broker.namespace],
                    args=[
                        "enqueue",
                        current_millis(),
                        QUEUE_NAME,
                        broker.broker_id,
                        broker.heartbeat_timeout,
                        broker.dead_message_ttl,
                        broker._should_do_maintenance("enqueue"),
                        unpack,
                        message.options["redis_message_id"],
                        message.encode(),
                    ],
                    client=pipe,
                )
            pipe.execute()
        for message in messages:
            broker.emit_after("enqueue", message, None)

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

    def ping(self) -> None:
        """Raise unless the broker answers."""
        if isinstance(self.broker, RedisBroker):
            self.broker.client.ping()
