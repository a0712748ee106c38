"""Worker processes under faults: killed, stopped, stopped gracefully, short of pooled
connections, and stuck in a handler. Each scenario ends with the verdict: every acknowledged
event processed, each session effect once."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from tests.faults.conftest import Faults, assert_nothing_lost_or_duplicated, assert_sweeps_never_failed, stays
from tests.support.servers import wait_for

pytestmark = pytest.mark.broker


def test_sigkill_of_a_worker_holding_prefetched_messages(faults: Faults) -> None:
    """Two events run, 20 more sit in the worker's prefetch; SIGKILL; a new worker takes all."""
    faults.hg.start_intake()
    prefetch = 22
    first = faults.start_worker(threads=2, prefetch=prefetch)
    slow = [f"kill-slow-{i}" for i in range(2)]
    fast = [f"kill-fx-{i}" for i in range(40)]
    answers = faults.occupy_then_queue(
        {i: faults.request(faults.slow, i) for i in slow}, {i: faults.request("fx.kill", i) for i in fast}
    )
    wait_for(lambda: faults.held() >= prefetch, 15, what="the worker to prefetch")
    held = faults.held() - len(slow)
    first.kill()
    killed_at = time.monotonic()
    faults.release()
    faults.start_worker(threads=4)
    figures = faults.verdict("sigkill-prefetch", answers, killed_at, extra={"prefetched when killed": held})
    assert_nothing_lost_or_duplicated(faults, figures)
    runs = faults.runs()
    assert all(runs[i] == 1 for i in fast), "a prefetched event that never started ran twice"
    assert all(runs[i] == 2 for i in slow), "the events killed mid-handler run again, once"
    assert_sweeps_never_failed(faults)


def test_sigstop_of_a_worker_past_its_lease_then_sigcont(faults: Faults) -> None:
    """Stopped with three handlers running and events prefetched: another worker takes every one
    over; resumed, the stopped worker commits nothing.

    On PostgreSQL the stopped handlers have written their effect rows (uncommitted) under the
    unique key, so the worker taking over waits on those rows until the server ends the stopped
    transaction (``idle_in_transaction_session_timeout``: the handler time limit + 5 s). The
    time limit is 4 s here so that bound is 9 s.
    """
    faults.hg.configure_workers(handler_time_limit_seconds=4)
    faults.hg.start_intake()
    stale = faults.start_worker(threads=3, prefetch=20)
    slow = [f"stop-slow-{i}" for i in range(3)]
    early = [f"stop-fx-a{i}" for i in range(20)]
    late = [f"stop-fx-b{i}" for i in range(20)]
    answers = faults.occupy_then_queue(
        {i: faults.request(faults.slow, i) for i in slow}, {i: faults.request("fx.stop", i) for i in early}
    )
    wait_for(lambda: faults.held() >= 20, 15, what="the worker to prefetch")
    os.killpg(stale.process.pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        answers |= faults.post_many({i: faults.request("fx.stop", i) for i in late})
        assert {a.status for a in answers.values()} == {200}
        faults.start_worker(threads=4)
        wait_for(
            lambda: all(faults.runs()[i] >= 2 for i in slow), 30, what="another worker to take the slow events over"
        )
        taken_over = time.monotonic() - stopped_at
        faults.release()
        figures = faults.verdict(
            "sigstop-past-lease", answers, stopped_at, extra={"slow events taken over after": f"{taken_over:.1f} s"}
        )
    finally:
        os.killpg(stale.process.pid, signal.SIGCONT)
    # The resumed worker's handlers return (released, or interrupted by the time limit that
    # passed while it was stopped) and it acks every message it held; nothing it did commits.
    before = {i: (r.status, r.attempts, r.updated_at) for i, r in faults.rows(answers).items()}
    wait_for(lambda: faults.held() == 0, 30, what="the resumed worker to finish what it held")
    stays(
        lambda: {i: (r.status, r.attempts, r.updated_at) for i, r in faults.rows(answers).items()} == before,
        1.5,
        "the resumed worker changed an event",
    )
    tries = ",".join(str(r.attempts) for r in faults.rows(slow).values())
    figures = faults.verdict(
        "sigstop-past-lease (after SIGCONT)", answers, stopped_at, extra={"tries of the slow events": tries}
    )
    assert_nothing_lost_or_duplicated(faults, figures)
    runs = faults.runs()
    assert all(runs[i] == 1 for i in early + late), "an event the stopped worker never started ran twice"
    assert_sweeps_never_failed(faults)


def test_sigterm_of_a_worker_under_load(faults: Faults) -> None:
    """SIGTERM to the main process while four handlers run and more are prefetched: the worker
    finishes what it started (no one else starts it), hands the rest back at once (the README's
    promise), and exits 0."""
    faults.hg.start_intake()
    stopping = faults.start_worker(threads=4, prefetch=12)
    slow = [f"term-slow-{i}" for i in range(4)]
    fast = [f"term-fx-{i}" for i in range(40)]
    answers = faults.occupy_then_queue(
        {i: faults.request(faults.slow, i) for i in slow}, {i: faults.request("fx.term", i) for i in fast}
    )
    wait_for(lambda: faults.held() >= 12, 15, what="the worker to prefetch")
    prefetched = faults.held() - len(slow)
    stopping.process.send_signal(signal.SIGTERM)  # the main process only, as a deploy does
    stopped_at = time.monotonic()
    faults.start_worker(threads=4)
    # While the stopping worker's handlers still run (for 3 leases), nobody starts them again,
    # and the events it had prefetched are handed back and processed by the other worker.
    window = 3 * faults.hg.config.workers.lease_seconds + faults.hg.config.workers.requeue_after_seconds
    handed_back: float | None = None
    while time.monotonic() < stopped_at + window:
        assert all(faults.runs()[i] == 1 for i in slow), "a running handler was started again"
        if handed_back is None and faults.all_processed(fast):
            handed_back = time.monotonic() - stopped_at
        time.sleep(0.05)
    waiting = [i for i, r in faults.rows(fast).items() if r.status != "processed"]
    faults.release()
    released_at = time.monotonic()
    figures = faults.verdict(
        "sigterm-worker",
        answers,
        stopped_at,
        extra={
            "prefetched when stopped": prefetched,
            "handed-back events processed after": "never, while handlers ran"
            if handed_back is None
            else f"{handed_back:.1f} s",
        },
    )
    assert_nothing_lost_or_duplicated(faults, figures)
    assert stopping.process.wait(timeout=30) == 0
    log = stopping.log.read_text()
    assert "Traceback" not in log, log
    assert max(faults.runs().values()) == 1, "a graceful stop made a handler run twice"
    problems = []
    if handed_back is None:
        problems.append(
            f"{len(waiting)} events the stopping worker had prefetched were not processed in {window:.1f} s while "
            f"its handlers ran, only {time.monotonic() - released_at:.1f} s after the handlers were released: "
            "they were not handed back at once"
        )
    count, errors = faults.sweep_failures()
    if count:
        problems.append(f"{count} recovery sweep passes failed; errors in the worker logs: {errors}")
    assert not problems, "\n".join(problems)


def test_more_threads_than_pooled_connections(faults: Faults) -> None:
    """Every thread of a worker with more threads than a default pool holds sits in a handler
    for three leases while a second worker's sweep watches: nothing is taken over meanwhile."""
    pool = faults.hg.engine.pool
    threads = pool.size() + pool._max_overflow + 4  # type: ignore[attr-defined]
    faults.hg.start_intake()
    faults.start_worker(threads=threads)
    slow = [f"busy-{i}" for i in range(threads)]
    answers = faults.post_many({i: faults.request(faults.slow, i) for i in slow})
    wait_for(lambda: len(faults.runs()) == threads, 60, what="every thread to be in a handler")
    began = time.monotonic()
    faults.start_worker(threads=2)
    fast = [f"busy-fx-{i}" for i in range(30)]
    answers |= faults.post_many({i: faults.request("fx.busy", i) for i in fast})
    assert {a.status for a in answers.values()} == {200}
    lease = faults.hg.config.workers.lease_seconds
    stays(lambda: max(faults.runs().values()) == 1, 3 * lease, "a handler was started twice")
    faults.release()
    figures = faults.verdict("threads-over-pool", answers, began, extra={"threads": threads})
    # Released together, 20-odd threads then contend for SQLite's write lock: one whose outcome
    # write times out (the tests' busy timeout is 0.5 s) is tried again, at least once as designed.
    assert_nothing_lost_or_duplicated(faults, figures)
    assert_sweeps_never_failed(faults)


def test_a_hung_handler_is_taken_over(faults: Faults, silent_server: socket.socket) -> None:
    """A handler blocks in ``recv`` on its first try, where no time limit reaches it; two worker
    processes, a 2 s time limit: the event is taken over and processed once, the rest flow on."""
    faults.hg.configure_workers(handler_time_limit_seconds=2)
    faults.hg.start_intake()
    faults.start_worker(threads=2)
    faults.start_worker(threads=2)
    fast = [f"hung-fx-{i}" for i in range(40)]
    answers = faults.post_many({"hung-0": faults.request(faults.hang, "hung-0")})
    wait_for(lambda: faults.lines("hung"), 30, what="the handler to block")
    blocked_at = time.monotonic()
    answers |= faults.post_many({i: faults.request("fx.hung", i) for i in fast})
    assert {a.status for a in answers.values()} == {200}
    figures = faults.verdict("hung-handler", answers, blocked_at)
    assert_nothing_lost_or_duplicated(faults, figures)
    assert faults.rows(["hung-0"])["hung-0"].attempts == 2
    assert faults.lines("unblocked") == [], "the blocked call was waited for"
    assert all(faults.runs()[i] == 1 for i in fast)
    assert_sweeps_never_failed(faults)


def test_events_prefetched_by_a_worker_whose_every_thread_hangs(faults: Faults, silent_server: socket.socket) -> None:
    """A worker whose only thread is blocked in ``recv`` has fetched messages it can never run, and
    its consumer is alive (its heartbeat keeps them from the sweep): those events must still be
    processed, by another worker."""
    faults.hg.configure_workers(handler_time_limit_seconds=2)
    faults.hg.start_intake()
    stuck = faults.start_worker(threads=1, prefetch=4)
    answers = faults.post_many({"stuck-0": faults.request(faults.hang, "stuck-0")})
    wait_for(lambda: faults.lines("hung"), 30, what="the handler to block")
    blocked_at = time.monotonic()
    fast = [f"stuck-fx-{i}" for i in range(20)]
    answers |= faults.post_many({i: faults.request("fx.stuck", i) for i in fast})
    assert {a.status for a in answers.values()} == {200}
    wait_for(lambda: faults.held() >= 4, 15, what="the stuck worker to prefetch")
    faults.start_worker(threads=2)
    settings = faults.hg.config.workers
    # The blocked call's leases lapse after its time limit + 5 s; every other event is free.
    bound = 2 + 5 + settings.lease_seconds + settings.requeue_after_seconds + 10
    figures = faults.verdict("all-threads-hung", answers, blocked_at, deadline=bound)
    print(f"  the stuck worker's exit code: {stuck.process.poll()}")
    assert_nothing_lost_or_duplicated(faults, figures)
    assert_sweeps_never_failed(faults)
