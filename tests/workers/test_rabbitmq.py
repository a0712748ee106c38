"""RabbitMQ as the broker: confirmed hand-offs, durable queues declared by the worker, ``/readyz``,
and the recovery sweep's rule there (it cannot ask RabbitMQ whether it holds a message).

Skipped unless ``$HOOKGATE_TEST_BROKER_URL`` names a RabbitMQ (see :mod:`tests.support.rabbitmq`).
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pika
import pytest
from dramatiq.common import dq_name, xq_name
from sqlalchemy import select, update

from gateway.config import WorkerSettings
from gateway.models import events
from gateway.queue import QUEUE_NAME, EventQueue, create_broker, new_token
from tests.conftest import Hookgate
from tests.faults.conftest import stays
from tests.support import rabbitmq
from tests.support.rows import insert_waiting
from tests.support.servers import wait_for
from workers.recovery import RecoverySweep

pytestmark = pytest.mark.broker


def test_a_batch_is_confirmed_and_consumed_by_dramatiqs_own_consumer(rabbitmq_url: str) -> None:
    queue = EventQueue(create_broker(rabbitmq_url))
    queue.send([(1, "a1"), (2, "b2"), (4, "a1"), (3, "c3")])  # a1 carries two events
    assert queue.backlog() == 3  # on RabbitMQ once send returned: confirmed
    consumer = queue.broker.consume(QUEUE_NAME, prefetch=10, timeout=1000)
    received = [next(consumer) for _ in range(3)]
    assert [m.args for m in received] == [([1, 4], "a1"), ([2], "b2"), ([3], "c3")]
    for message in received:
        consumer.ack(message)
    consumer.close()
    assert queue.backlog() == 0


def test_the_worker_declares_durable_queues_when_it_starts(hookgate: Hookgate, rabbitmq_url: str) -> None:
    assert QUEUE_NAME not in rabbitmq.durable_queues(rabbitmq_url)  # deleted for this test
    hookgate.start_worker()
    expected = {QUEUE_NAME: True, dq_name(QUEUE_NAME): True, xq_name(QUEUE_NAME): True}
    wait_for(lambda: rabbitmq.durable_queues(rabbitmq_url) == expected, 30, interval=0.2, what="the worker's queues")


def test_the_intake_declares_the_queue_as_the_worker_does(hookgate: Hookgate, rabbitmq_url: str) -> None:
    """Events accepted before any worker ever started wait in the queue the intake declared, and
    the worker's own declaration of it agrees (RabbitMQ refuses one with other arguments)."""
    hookgate.start_intake()
    for n in range(3):
        assert hookgate.post("acme", *hookgate.signed("acme", "thing.updated", f"early-{n}")).status_code == 200
    wait_for(lambda: set(hookgate.statuses().values()) == {"queued"}, 10, what="the events handed over")
    hookgate.start_worker()
    wait_for(lambda: set(hookgate.statuses().values()) == {"processed"}, 30, what="the events processed")
    assert sorted(e[2] for e in hookgate.effects()) == ["early-0", "early-1", "early-2"]


def test_messages_rabbitmq_refuses_leave_their_events_received_for_the_sweep(
    hookgate: Hookgate, rabbitmq_url: str
) -> None:
    """Publisher confirms: while RabbitMQ nacks every message (a length limit that rejects
    publishes), no event counts as handed over; once it takes them, the sweep sends them."""
    hookgate.start_intake()
    accepted = []
    with rabbitmq.policy(rabbitmq_url, "hookgate-test-full", '{"max-length": 0, "overflow": "reject-publish"}'):
        for n in range(10):
            response = hookgate.post("acme", *hookgate.signed("acme", "thing.updated", f"nacked-{n}"))
            assert response.status_code in (200, 503), response.text
            if response.status_code == 200:
                accepted.append(f"nacked-{n}")
        assert accepted, "the first event is committed before its hand-off fails"
        stays(
            lambda: set(hookgate.statuses().values()) == {"received"},
            2.0,
            "an event was marked queued though RabbitMQ refused its message",
        )
    hookgate.start_worker()
    wait_for(lambda: set(hookgate.statuses().values()) == {"processed"}, 30, what="every accepted event processed")
    assert sorted(e[2] for e in hookgate.effects()) == sorted(accepted)


def test_readyz_answers_503_while_rabbitmq_is_down(hookgate: Hookgate, rabbitmq_url: str) -> None:
    hookgate.start_intake()
    assert httpx.get(f"{hookgate.url}/readyz").status_code == 200
    with rabbitmq.stopped(rabbitmq_url):
        response = httpx.get(f"{hookgate.url}/readyz", timeout=30)
        assert response.status_code == 503
        assert "broker" in response.json()["problems"]
    wait_for(lambda: httpx.get(f"{hookgate.url}/readyz").status_code == 200, 15, what="readyz to answer 200 again")


# -- the recovery sweep's rule on RabbitMQ ------------------------------------------------------


def waiting_rows(engine: Any, pks: list[int]) -> dict[int, Any]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(events.c.id, events.c.status, events.c.message_id, events.c.sweep_after).where(events.c.id.in_(pks))
        ).all()
    return {row.id: row for row in rows}


def purge(url: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().queue_purge(QUEUE_NAME)
    finally:
        connection.close()


def test_a_backlog_waiting_in_rabbitmq_is_never_sent_again(rabbitmq_url: str, engine: Any) -> None:
    """50 handed-over events wait in the queue past requeue_after_seconds with no worker: the
    sweep leaves them (sending them again would only lengthen the queue), until the queue is
    emptied under them (purged): then it sends each once more."""
    now = time.time()
    tokens = [new_token() for _ in range(50)]
    pks = [insert_waiting(engine, f"backlog-{n}", token, now) for n, token in enumerate(tokens)]
    queue = EventQueue(create_broker(rabbitmq_url))
    queue.send(zip(pks, tokens, strict=True))
    settings = WorkerSettings()
    sweep = RecoverySweep(engine, queue, settings)
    for _ in range(3):
        assert sweep.run_once() == 0
    assert queue.backlog() == 50
    rows = waiting_rows(engine, pks)
    assert [rows[pk].message_id for pk in pks] == tokens
    assert {rows[pk].status for pk in pks} == {"queued"}
    # Looked at again one requeue_after_seconds later, not at every pass.
    assert min(row.sweep_after for row in rows.values()) > now + settings.requeue_after_seconds - 5

    purge(rabbitmq_url)
    with engine.begin() as conn:
        conn.execute(update(events).where(events.c.id.in_(pks)).values(sweep_after=now - 1))
    assert sweep.run_once() == 50
    assert queue.backlog() == 50
    rows = waiting_rows(engine, pks)
    assert not {rows[pk].message_id for pk in pks} & set(tokens), "each got a new token"
    assert {rows[pk].status for pk in pks} == {"queued"}, "marked queued once RabbitMQ confirmed them"
    assert sweep.run_once() == 0


def test_events_whose_hand_off_was_never_confirmed_are_sent_despite_a_backlog(rabbitmq_url: str, engine: Any) -> None:
    """``received`` with a token: the intake committed the event but RabbitMQ never confirmed its
    message (it was down, or the intake died first). Such an event is sent once due, backlog or not."""
    now = time.time()
    queue = EventQueue(create_broker(rabbitmq_url))
    backlog = [
        (insert_waiting(engine, f"queued-{n}", token, now, due=False), token)
        for n in range(5)
        for token in [new_token()]
    ]
    queue.send(backlog)
    unconfirmed = [insert_waiting(engine, f"received-{n}", new_token(), now, status="received") for n in range(3)]
    sweep = RecoverySweep(engine, queue, WorkerSettings())
    assert sweep.run_once() == 3
    assert queue.backlog() == 5 + 3
    assert {row.status for row in waiting_rows(engine, unconfirmed).values()} == {"queued"}
