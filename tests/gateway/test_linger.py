"""The committer's linger (``gateway.linger``): when rows follow each other closely, it waits a
little for more before it writes a small batch; never after a pause, and not while waiting gains
nothing."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.ingest import Ingestor
from gateway.linger import MIN_GAIN, PROBE_EVERY, Linger


class CountedQueue(queue.SimpleQueue[Any]):
    """A queue that counts the items taken from it, so a test knows the consumer has one."""

    def __init__(self) -> None:
        super().__init__()
        self.taken = threading.Semaphore(0)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        item = super().get(block, timeout)
        self.taken.release()
        return item

    def get_nowait(self) -> Any:
        return self.get(False)


class Consumer:
    """``Ingestor._consume`` on a thread of its own, recording the batches it hands over."""

    def __init__(self, **options: Any) -> None:
        self.source = CountedQueue()
        self.batches: list[list[str]] = []
        self.handled = threading.Semaphore(0)
        self.thread = threading.Thread(
            target=Ingestor._consume, args=(self.source, self.handle, lambda: None), kwargs=options, daemon=True
        )
        self.thread.start()

    def handle(self, items: list[str]) -> None:
        self.batches.append(items)
        self.handled.release()

    def put_taken(self, item: str | None) -> None:
        """Put ``item`` and wait until the consumer has taken it."""
        self.source.put(item)
        assert self.source.taken.acquire(timeout=5)


@pytest.fixture
def consumers() -> Iterator[list[Consumer]]:
    made: list[Consumer] = []
    yield made
    for consumer in made:
        consumer.source.put(None)
        consumer.thread.join(timeout=5)


def test_a_busy_committer_waits_for_more_rows_before_a_small_batch(consumers: list[Consumer]) -> None:
    consumer = Consumer(linger=Linger(seconds=1.0))
    consumers.append(consumer)
    consumer.put_taken("a")
    assert consumer.handled.acquire(timeout=5)  # the first after a pause goes alone, at once
    consumer.put_taken("b")  # right after a batch: the committer is busy, and waits
    consumer.source.put("c")
    consumer.source.put("d")
    assert consumer.handled.acquire(timeout=5)
    assert consumer.batches == [["a"], ["b", "c", "d"]]


def test_a_batch_of_a_full_message_is_written_without_a_wait() -> None:
    linger = Linger(seconds=0.002, rows=32)
    assert linger.wait_for(0.001, 31) == 0.002
    assert linger.wait_for(0.001, 32) == 0.0


def test_after_a_large_batch_the_committer_does_not_wait() -> None:
    """The load forms large batches by itself: a wait would only delay their answers."""
    linger = Linger(seconds=0.002, rows=32)
    assert linger.wait_for(0.001, 1, last_batch=15) == 0.002
    assert linger.wait_for(0.001, 1, last_batch=16) == 0.0


def test_a_row_after_a_pause_is_written_at_once(consumers: list[Consumer]) -> None:
    consumer = Consumer(linger=Linger(seconds=30.0, busy_within=0.05))
    consumers.append(consumer)
    consumer.put_taken("a")
    assert consumer.handled.acquire(timeout=5)
    assert not consumer.handled.acquire(timeout=0.2)  # the pause itself, longer than busy_within
    consumer.put_taken("b")
    assert consumer.handled.acquire(timeout=5), "the row waited for company after a pause"
    assert consumer.batches == [["a"], ["b"]]


def test_a_stop_during_a_linger_writes_what_was_taken(consumers: list[Consumer]) -> None:
    consumer = Consumer(linger=Linger(seconds=0.5))
    consumer.put_taken("a")
    assert consumer.handled.acquire(timeout=5)
    consumer.put_taken("b")  # waiting now
    consumer.source.put("c")
    consumer.source.put(None)
    consumer.thread.join(timeout=5)
    assert not consumer.thread.is_alive()
    assert consumer.batches == [["a"], ["b", "c"]]


def test_without_a_linger_rows_are_written_as_they_come(consumers: list[Consumer]) -> None:
    consumer = Consumer()
    consumers.append(consumer)
    consumer.put_taken("a")
    assert consumer.handled.acquire(timeout=5)
    consumer.put_taken("b")
    assert consumer.handled.acquire(timeout=5)
    assert consumer.batches == [["a"], ["b"]]


def test_a_sender_that_waits_for_each_answer_stops_the_waits(consumers: list[Consumer]) -> None:
    """Its next row comes right after each answer, so the committer looks busy, but nothing ever
    comes while it waits: after a few waits that gained nothing, it writes at once."""
    linger = Linger(seconds=0.05, busy_within=5.0)
    consumer = Consumer(linger=linger)
    consumers.append(consumer)
    for index in range(12):
        consumer.put_taken(str(index))
        assert consumer.handled.acquire(timeout=5)
    assert consumer.batches == [[str(index)] for index in range(12)]
    assert 1 <= linger.waits <= 5, f"{linger.waits} waits for rows that never came"


def test_the_waits_resume_once_they_gain_rows_again() -> None:
    linger = Linger(seconds=0.002)
    busy = 0.001  # seconds since the last batch
    while linger.gain >= MIN_GAIN:
        assert linger.wait_for(busy, 1) == 0.002
        linger.gained(0)
    skipped = [linger.wait_for(busy, 1) for _ in range(PROBE_EVERY)]
    assert skipped.count(0.0) == PROBE_EVERY - 1  # one probe in PROBE_EVERY batches
    for _ in range(3):
        linger.gained(1)  # a probe, then a wait each time, gained a row
    assert linger.wait_for(busy, 1) == 0.002
    assert linger.wait_for(busy, 32) == 0.0  # a full message: no wait
    assert linger.wait_for(0.5, 1) == 0.0  # after a pause: no wait
    assert Linger(seconds=0).wait_for(busy, 1) == 0.0
