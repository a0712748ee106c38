"""The intake writes Dramatiq's Redis layout itself: hold it to what Dramatiq reads."""

from __future__ import annotations

import dramatiq
import redis

from gateway.queue import ACTOR_NAME, QUEUE_NAME, EventQueue, create_broker


def test_encoded_messages_decode_as_dramatiq_messages() -> None:
    data = EventQueue.encode([42, 43], "tok", 1_700_000_000_000)
    message = dramatiq.Message.decode(data)
    assert message == EventQueue.message([42, 43], "tok").copy(message_timestamp=1_700_000_000_000)
    assert (message.queue_name, message.actor_name, message.args) == (QUEUE_NAME, ACTOR_NAME, ([42, 43], "tok"))


def test_a_batch_is_consumed_by_dramatiqs_own_consumer(redis_url: str) -> None:
    queue = EventQueue(create_broker(redis_url))
    queue.send([(1, "a1"), (2, "b2"), (4, "a1"), (3, "c3")])  # a1 carries two events
    consumer = queue.broker.consume(QUEUE_NAME, prefetch=10, timeout=1000)
    received = [next(consumer) for _ in range(3)]
    assert [m.args for m in received] == [([1, 4], "a1"), ([2], "b2"), ([3], "c3")]
    assert queue.missing(["a1", "b2", "c3", "gone"]) == {"gone"}
    for message in received:
        consumer.ack(message)
    assert queue.missing(["a1"]) == {"a1"}
    assert redis.Redis.from_url(redis_url).llen(f"hookgate:{QUEUE_NAME}") == 0
