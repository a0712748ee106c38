"""A resource pass claims its due events a round at a time and commits each round at once.

In-process :class:`~workers.processing.Processor` over the real intake and store (SQLite, or
PostgreSQL with ``HOOKGATE_TEST_DATABASE_URL``), as in test_ordering's pass-budget test: the
events are posted with no worker running, then one broker message's pass is run here, where its
transactions can be counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import func, select, update

from gateway.models import attempts, events, handler_runs
from tests.conftest import Hookgate
from tests.workers.test_ordering import post_thing
from workers import Event
from workers.leases import LeaseKeeper
from workers.processing import ROUND_EVENTS, Processor
from workers.reconcile import Reconciler
from workers.registry import HandlerRegistry


def processor_with(hookgate: Hookgate, handler: Callable[[Event], None]) -> Processor:
    handlers = HandlerRegistry()
    handlers.on("acme")(handler)
    keeper = LeaseKeeper(hookgate.engine, hookgate.config.workers)
    return Processor(hookgate.engine, hookgate.config.workers, handlers, Reconciler({}), {}, keeper)


@contextmanager
def counting_commits(hookgate: Hookgate) -> Iterator[list[int]]:
    """How many transactions the store's engine commits inside the block."""
    commits = [0]

    def count(conn: Any) -> None:
        commits[0] += 1

    sa_event.listen(hookgate.engine, "commit", count)
    try:
        yield commits
    finally:
        sa_event.remove(hookgate.engine, "commit", count)


def rows(hookgate: Hookgate, ids: list[str]) -> dict[str, Any]:
    with hookgate.engine.connect() as conn:
        found = conn.execute(select(events).where(events.c.event_id.in_(ids))).all()
    return {row.event_id: row for row in found}


def count(hookgate: Hookgate, table: Any) -> int:
    with hookgate.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_a_resource_backlog_is_claimed_and_committed_as_one_round(hookgate: Hookgate) -> None:
    """Eight waiting events of one resource, two transactions: the lease taken with the round's
    claim, then every outcome committed with the lease given back (per event, the pass used to
    commit a claim and an outcome of its own, and the lease's acquire and release their own:
    eighteen)."""
    hookgate.start_intake()
    ids = [f"round-{version}" for version in range(1, 9)]
    for version, event_id in enumerate(ids, start=1):
        post_thing(hookgate, event_id, "rounded", version)
    ran: list[str] = []
    processor = processor_with(hookgate, lambda event: ran.append(event.id))
    first = hookgate.event("acme", ids[0])
    with counting_commits(hookgate) as commits:
        processor.process(first.id, first.message_id)
    assert ran == ids
    assert {row.status for row in rows(hookgate, ids).values()} == {"processed"}
    assert hookgate.resource("acme", "rounded").applied_sequence == 8
    assert count(hookgate, attempts) == 8
    assert count(hookgate, handler_runs) == 8
    assert commits[0] == 2


def test_a_retried_event_stops_its_round_and_the_rest_go_back_untried(hookgate: Hookgate) -> None:
    """The events behind an event that will be retried wait for it: they are given back, with no
    try used and no attempt recorded, due when its retry is."""
    hookgate.start_intake()
    ids = [f"stop-{version}" for version in range(1, 5)]
    for version, event_id in enumerate(ids, start=1):
        post_thing(hookgate, event_id, "stopper", version)
    ran: list[str] = []

    def handler(event: Event) -> None:
        ran.append(event.id)
        if event.id == "stop-2":
            raise RuntimeError("downstream is down")

    processor = processor_with(hookgate, handler)
    first = hookgate.event("acme", ids[0])
    processor.process(first.id, first.message_id)
    assert ran == ["stop-1", "stop-2"]
    after = rows(hookgate, ids)
    assert (after["stop-1"].status, after["stop-1"].attempts) == ("processed", 1)
    failed = after["stop-2"]
    assert (failed.status, failed.attempts, failed.message_id) == ("queued", 1, None)
    assert "downstream is down" in failed.last_error
    for event_id in ("stop-3", "stop-4"):
        waiting = after[event_id]
        assert (waiting.status, waiting.attempts, waiting.message_id) == ("queued", 0, None)
        assert waiting.sweep_after == failed.sweep_after
    with hookgate.engine.connect() as conn:
        tried = conn.execute(select(events.c.event_id).join(attempts, attempts.c.event_pk == events.c.id)).scalars()
        assert sorted(tried) == ["stop-1", "stop-2"]
    assert hookgate.resource("acme", "stopper").applied_sequence == 1


def test_a_round_whose_lease_was_lost_writes_nothing(hookgate: Hookgate) -> None:
    """While the round runs, the recovery sweep takes one of its events over (as after an expired
    lease: a new token): the fence fails at the commit and nothing of the round is written, not
    even the outcomes of the events whose lease still held."""
    hookgate.start_intake()
    ids = [f"lost-{version}" for version in range(1, 4)]
    for version, event_id in enumerate(ids, start=1):
        post_thing(hookgate, event_id, "taken", version)

    def handler(event: Event) -> None:
        if event.id == "lost-3":  # the sweep re-sends lost-1 under a new token meanwhile
            with hookgate.engine.begin() as conn:
                conn.execute(
                    update(events)
                    .where(events.c.event_id == "lost-1")
                    .values(status="received", message_id="swept", lease_expires_at=None)
                )

    processor = processor_with(hookgate, handler)
    first = hookgate.event("acme", ids[0])
    processor.process(first.id, first.message_id)
    after = rows(hookgate, ids)
    assert (after["lost-1"].status, after["lost-1"].message_id) == ("received", "swept")
    assert [after[event_id].status for event_id in ("lost-2", "lost-3")] == ["processing", "processing"]
    assert count(hookgate, attempts) == 0
    assert count(hookgate, handler_runs) == 0
    assert hookgate.resource("acme", "taken").applied_sequence is None


def test_the_next_round_sees_the_state_the_last_one_left(hookgate: Hookgate) -> None:
    """A pass reads the resource's row once, with its lease, and keeps it current itself: an
    event that arrives during a full round with a version below the ones applied is superseded
    in the next round, never applied over them."""
    hookgate.start_intake()
    versions = range(10, 10 + ROUND_EVENTS)
    for version in versions:
        post_thing(hookgate, f"full-{version}", "full", version)
    ran: list[str] = []

    def handler(event: Event) -> None:
        ran.append(event.id)
        if event.id == "full-10":  # arrive while the first round runs
            post_thing(hookgate, "late-5", "full", 5)
            post_thing(hookgate, "next-99", "full", 99)

    processor = processor_with(hookgate, handler)
    first = hookgate.event("acme", "full-10")
    with counting_commits(hookgate) as commits:
        processor.process(first.id, first.message_id)
    assert ran == [f"full-{version}" for version in versions] + ["next-99"]
    after = rows(hookgate, ["late-5", "next-99", f"full-{versions[-1]}"])
    assert [after[event_id].status for event_id in ("late-5", "next-99")] == ["superseded", "processed"]
    assert hookgate.resource("acme", "full").applied_sequence == 99
    assert commits[0] == 3  # the lease with round one, round one with round two, round two with the release
