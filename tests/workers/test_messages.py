"""One broker message carries several events (see gateway.queue): how the intake groups them, how a
worker runs them, and how it spreads them over idle threads.

In-process :class:`~workers.processing.Processor` over the real intake and store (SQLite, or
PostgreSQL with ``HOOKGATE_TEST_DATABASE_URL``); the events are posted with no worker running.
"""

from __future__ import annotations

import time
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import select, update

from gateway.models import events
from gateway.queue import MESSAGE_EVENTS, QUEUE_NAME, UNSENT, EventQueue, new_token, share_tokens
from tests.conftest import Hookgate
from tests.workers.test_ordering import post_thing
from workers import Event
from workers.leases import LeaseKeeper
from workers.processing import Processor
from workers.reconcile import Reconciler
from workers.registry import HandlerRegistry
from workers.spreading import SPREAD_AFTER_SECONDS, Lanes, Spreader


def test_a_commit_s_events_share_a_message_a_resource_s_side_by_side() -> None:
    rows: list[dict[str, Any]] = [
        {"provider": "acme", "resource_id": f"r{i % 7}", "message_id": new_token()} for i in range(70)
    ]
    rows.append({"provider": "acme", "resource_id": "held", "message_id": None})  # in its ordering window
    share_tokens(rows)
    tokens = [row["message_id"] for row in rows[:70]]
    assert len(set(tokens)) == 3  # 70 events, at most 32 a message
    assert max(tokens.count(token) for token in tokens) == MESSAGE_EVENTS
    for resource in {row["resource_id"] for row in rows[:70]}:
        of_resource = {row["message_id"] for row in rows if row["resource_id"] == resource}
        assert len(of_resource) <= 2, "a resource's events were scattered over the messages"
    assert rows[70]["message_id"] is None


def test_rows_the_intake_sends_get_one_token_per_message() -> None:
    rows: list[dict[str, Any]] = [{"provider": "acme", "resource_id": f"r{i}", "message_id": UNSENT} for i in range(40)]
    share_tokens(rows)
    tokens = {row["message_id"] for row in rows}
    assert len(tokens) == 2
    assert all(len(token) == 32 for token in tokens)


def one_message(hookgate: Hookgate, event_ids: list[str]) -> tuple[list[int], str]:
    """Give these stored events one shared token, as the intake does for a commit's events."""
    token = new_token()
    with hookgate.engine.begin() as conn:
        conn.execute(update(events).where(events.c.event_id.in_(event_ids)).values(message_id=token))
    return [hookgate.event("acme", event_id).id for event_id in event_ids], token


def processor(hookgate: Hookgate, ran: list[str], **options: Any) -> Processor:
    handlers = HandlerRegistry()
    handlers.on("acme")(lambda event: ran.append(event.id))
    keeper = LeaseKeeper(hookgate.engine, hookgate.config.workers)
    return Processor(hookgate.engine, hookgate.config.workers, handlers, Reconciler({}), {}, keeper, **options)


def test_one_message_runs_the_events_of_several_resources_each_in_its_pass(hookgate: Hookgate) -> None:
    hookgate.start_intake()
    posted = [("m-a1", "ma", 1), ("m-b1", "mb", 1), ("m-a2", "ma", 2), ("m-c1", "mc", 1)]
    for event_id, resource, version in posted:
        post_thing(hookgate, event_id, resource, version)
    pks, token = one_message(hookgate, [event_id for event_id, _, _ in posted])
    ran: list[str] = []
    processor(hookgate, ran).process(pks, token)  # one thread: no idle thread to spread to
    assert sorted(ran) == sorted(event_id for event_id, _, _ in posted)
    assert ran.index("m-a1") < ran.index("m-a2")
    assert set(hookgate.statuses().values()) == {"processed"}
    assert [hookgate.resource("acme", r).applied_sequence for r in ("ma", "mb", "mc")] == [2, 1, 1]


def test_a_message_s_other_resources_go_to_new_messages_when_threads_are_idle(hookgate: Hookgate) -> None:
    """The thread keeps the first resource's events; each other resource gets a message of its
    own under a new token, for the idle threads (the process has not timed a lane yet, so they
    count as slow); the old message then claims nothing of them."""
    hookgate.start_intake()
    posted = [("s-a1", "sa", 1), ("s-b1", "sb", 1), ("s-a2", "sa", 2), ("s-c1", "sc", 1)]
    for event_id, resource, version in posted:
        post_thing(hookgate, event_id, resource, version)
    pks, token = one_message(hookgate, [event_id for event_id, _, _ in posted])
    broker = StubBroker()
    ran: list[str] = []
    processor(hookgate, ran, threads=4, spread_to=EventQueue(broker)).process(pks, token)
    assert ran == ["s-a1", "s-a2"]
    sent = [dramatiq.Message.decode(data) for data in broker.queues[QUEUE_NAME].queue]
    with hookgate.engine.connect() as conn:
        now = dict(conn.execute(select(events.c.id, events.c.message_id)).all())
    by_id = {hookgate.event("acme", event_id).id: event_id for event_id, _, _ in posted}
    assert sorted([by_id[pk] for pk in message.args[0]] for message in sent) == [["s-b1"], ["s-c1"]]
    assert all(now[pk] == message.args[1] for message in sent for pk in message.args[0])
    ran.clear()
    handler_for_stale = processor(hookgate, ran)
    handler_for_stale.process(pks, token)  # the old message again: nothing of it is its own now
    assert ran == []
    for message in sent:
        handler_for_stale.process(*message.args)
    assert sorted(ran) == ["s-b1", "s-c1"]


def test_a_message_of_a_few_quick_lanes_stays_whole_while_threads_are_idle(hookgate: Hookgate) -> None:
    """Handing lanes over costs a transaction and a message each: once this process's lanes have
    been measured quick, a message of a few runs whole on its thread, idle threads or not."""
    hookgate.start_intake()
    warm_up = [(f"q-w{i}", f"qw{i}", 1) for i in range(16)]
    posted = [("q-a1", "qa", 1), ("q-b1", "qb", 1), ("q-c1", "qc", 1)]
    for event_id, resource, version in warm_up + posted:
        post_thing(hookgate, event_id, resource, version)
    broker = StubBroker()
    ran: list[str] = []
    worker = processor(hookgate, ran, threads=4, spread_to=EventQueue(broker))
    assert worker.spreader.worth_spreading(2), "lanes not measured yet count as slow"
    for event_id, _, _ in warm_up:  # one lane each: nothing to spread, and the lanes are timed
        worker.process(*one_message(hookgate, [event_id]))
    assert worker.spreader.lane_seconds < SPREAD_AFTER_SECONDS / 2, "the lanes' times were not measured"
    worker.spreader.lane_seconds = 0.005  # as here when the machine is not loaded by other tests
    pks, token = one_message(hookgate, [event_id for event_id, _, _ in posted])
    worker.process(pks, token)
    assert ran[-3:] == ["q-a1", "q-b1", "q-c1"]
    assert broker.queues[QUEUE_NAME].qsize() == 0, "quick lanes were handed to new messages"
    assert {hookgate.event("acme", event_id).status for event_id, _, _ in posted} == {"processed"}


def test_a_message_s_remaining_lanes_go_to_the_sweep_when_the_worker_stops(hookgate: Hookgate) -> None:
    hookgate.start_intake()
    posted = [("t-a1", "ta", 1), ("t-b1", "tb", 1)]
    for event_id, resource, version in posted:
        post_thing(hookgate, event_id, resource, version)
    pks, token = one_message(hookgate, ["t-a1", "t-b1"])
    ran: list[str] = []
    worker = processor(hookgate, ran)

    def stop_after_first(event: Event) -> None:
        worker.stopping.set()

    worker.registry.on("acme")(stop_after_first)
    worker.process(pks, token)
    assert ran == ["t-a1"]
    left = hookgate.event("acme", "t-b1")
    assert left.status in ("received", "queued")
    assert (left.attempts, left.message_id) == (0, None)  # untried, and the sweep sends it now
    assert left.sweep_after is not None


def test_the_lanes_behind_a_slow_one_go_to_new_messages(hookgate: Hookgate) -> None:
    """No thread is idle when the message arrives (one thread), so it keeps its lanes; the first
    one's handler is slow, and the lanes behind it are handed to new messages meanwhile, instead
    of waiting for it."""
    hookgate.start_intake()
    for event_id, resource in (("w-slow", "wa"), ("w-b", "wb"), ("w-c", "wc")):
        post_thing(hookgate, event_id, resource, 1)
    pks, token = one_message(hookgate, ["w-slow", "w-b", "w-c"])
    broker = StubBroker()
    ran: list[str] = []
    worker = processor(hookgate, ran, threads=1, spread_to=EventQueue(broker))
    handed: list[list[int]] = []

    def slow(event: Event) -> None:
        if event.id == "w-slow":  # until the watchdog has handed the others over, or 5 s
            deadline = time.monotonic() + 5
            while broker.queues[QUEUE_NAME].qsize() < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            handed.extend(dramatiq.Message.decode(data).args[0] for data in broker.queues[QUEUE_NAME].queue)

    worker.registry.on("acme")(slow)
    worker.process(pks, token)
    assert ran == ["w-slow"]
    by_id = {hookgate.event("acme", event_id).id: event_id for event_id in ("w-b", "w-c")}
    assert sorted(by_id[pk] for message in handed for pk in message) == ["w-b", "w-c"]
    assert {hookgate.event("acme", event_id).status for event_id in ("w-b", "w-c")} <= {"received", "queued"}


def test_a_process_s_typical_lane_time_follows_its_lanes() -> None:
    spreader = Spreader(threads=2, hand_off=lambda lanes, token: None)
    assert spreader.worth_spreading(2)  # slow until measured: 2 x 0.1 s behind the first
    assert not spreader.worth_spreading(1)
    for _ in range(30):
        spreader.lane_ran(0.002)
    assert not spreader.worth_spreading(8)  # 8 lanes of about 2 ms: quicker run here than handed over
    for _ in range(10):
        spreader.lane_ran(0.5)
    assert spreader.worth_spreading(1)
    with spreader.running(), spreader.running():
        assert not spreader.worth_spreading(8), "no idle thread to take them"
    assert not Spreader(threads=2, hand_off=None).worth_spreading(8), "nowhere to hand them"


def test_a_message_of_quick_lanes_that_runs_long_is_spread_when_a_thread_is_idle() -> None:
    """No lane of it runs past SPREAD_AFTER_SECONDS, but together they have: with a thread idle,
    the watchdog hands the rest over; with none, the message keeps them."""
    lanes = Lanes([[1], [2], [3]], "token")
    lanes.next()
    assert not lanes.overdue(lanes.started + SPREAD_AFTER_SECONDS / 2, idle=True)
    lanes.next()
    lanes.lane_started = lanes.started + SPREAD_AFTER_SECONDS * 0.9  # the second lane began then
    later = lanes.started + SPREAD_AFTER_SECONDS * 1.2
    assert lanes.overdue(later, idle=True)
    assert not lanes.overdue(later, idle=False)
    assert lanes.overdue(lanes.lane_started + SPREAD_AFTER_SECONDS * 1.1, idle=False)  # the lane itself
    lanes.take_rest()
    assert not lanes.overdue(later, idle=True), "nothing left to hand over"


class RefusingQueue(EventQueue):
    """A broker that takes no message (RabbitMQ down as lanes are handed over)."""

    def send(self, items: Any) -> None:
        raise ConnectionError("the broker is down")


def test_lanes_handed_over_are_queued_only_once_their_messages_are_sent(hookgate: Hookgate) -> None:
    """Lanes handed to new messages get new tokens; their events are ``queued`` once the broker took
    those messages, and ``received`` (never confirmed) when it did not, so that the sweep sends
    them again once due: with RabbitMQ it takes ``queued`` to mean the message is in a queue, and
    re-sends such events only when the queue has emptied."""
    hookgate.start_intake()
    posted = [(f"r-{name}1", f"r{name}", 1) for name in "abcdef"]
    for event_id, resource, version in posted:
        post_thing(hookgate, event_id, resource, version)
    ran: list[str] = []
    pks, token = one_message(hookgate, ["r-a1", "r-b1", "r-c1"])  # lanes not timed yet count as slow
    processor(hookgate, ran, threads=4, spread_to=RefusingQueue(StubBroker())).process(pks, token)
    for event_id in ("r-b1", "r-c1"):
        unsent = hookgate.event("acme", event_id)
        assert (unsent.status, unsent.attempts) == ("received", 0)
        assert unsent.message_id not in (None, token)
    pks, token = one_message(hookgate, ["r-d1", "r-e1", "r-f1"])
    broker = StubBroker()
    processor(hookgate, ran, threads=4, spread_to=EventQueue(broker)).process(pks, token)
    tokens = {dramatiq.Message.decode(data).args[1] for data in broker.queues[QUEUE_NAME].queue}
    assert len(tokens) == 2
    for event_id in ("r-e1", "r-f1"):
        sent = hookgate.event("acme", event_id)
        assert sent.status == "queued"
        assert sent.message_id in tokens
    assert ran == ["r-a1", "r-d1"]


def test_a_store_error_marking_lanes_handed_over_leaves_the_message_s_own_lane_running(
    hookgate: Hookgate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker took the new messages but the store failed to mark their events ``queued``: the
    thread still runs the lane it kept, and those events stay ``received`` under their new tokens
    (at worst the sweep sends them again, and the messages sent first then claim nothing)."""
    hookgate.start_intake()
    for name in "abc":
        post_thing(hookgate, f"k-{name}1", f"k{name}", 1)

    def store_down(engine: Any, sent: Any) -> None:
        raise ConnectionError("the store is down")

    monkeypatch.setattr("workers.processing.mark_queued", store_down)
    ran: list[str] = []
    broker = StubBroker()
    pks, token = one_message(hookgate, ["k-a1", "k-b1", "k-c1"])
    processor(hookgate, ran, threads=4, spread_to=EventQueue(broker)).process(pks, token)
    assert ran == ["k-a1"]
    assert broker.queues[QUEUE_NAME].qsize() == 2
    assert {hookgate.event("acme", event_id).status for event_id in ("k-b1", "k-c1")} == {"received"}
