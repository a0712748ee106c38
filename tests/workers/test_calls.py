"""The per-call time limit, in one process: a call past its limit is interrupted; calls blocked
where no exception reaches them are reported once every thread is stuck; a stopping worker's
deadline interrupts calls too, and starts none after it."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from workers.calls import HandlerTimeout, TimeLimiter, WorkerStopping


def test_a_call_past_its_limit_is_interrupted_and_the_next_one_is_not() -> None:
    limiter = TimeLimiter(0.2)
    started = time.monotonic()

    def busy_for_five_seconds() -> None:
        with limiter.limit():
            while time.monotonic() - started < 5:
                time.sleep(0.01)

    with pytest.raises(HandlerTimeout):
        busy_for_five_seconds()
    assert time.monotonic() - started < 1
    for _ in range(3):  # each call has a fresh deadline, and no leftover exception surfaces
        with limiter.limit():
            time.sleep(0.15)
    time.sleep(0.3)


def test_every_thread_stuck_where_no_exception_reaches_it_is_reported() -> None:
    reported: list[int] = []
    all_stuck = threading.Event()

    def on_all_stuck(count: int) -> None:
        reported.append(count)
        all_stuck.set()

    limiter = TimeLimiter(0.2, grace=0.2, threads=2, on_all_stuck=on_all_stuck)
    server = socket.create_server(("127.0.0.1", 0))
    clients = [socket.create_connection(server.getsockname()) for _ in range(2)]

    def blocked(conn: socket.socket) -> None:
        try:
            with limiter.limit():
                conn.recv(1)  # no bytes ever come until the test closes the server side
        except (HandlerTimeout, OSError):
            pass

    threads = [threading.Thread(target=blocked, args=(c,), daemon=True) for c in clients]
    for thread in threads:
        thread.start()
    assert all_stuck.wait(5), "two threads blocked past limit and grace were not reported"
    assert reported == [2]
    accepted = [server.accept()[0] for _ in clients]
    for conn in accepted:
        conn.close()
    for thread in threads:
        thread.join(5)
    server.close()
    for conn in clients:
        conn.close()


def busy(limiter: TimeLimiter, seconds: float, ran: list[float] | None = None) -> None:
    """A call that takes ``seconds`` in Python code, which the limiter's exceptions reach."""
    with limiter.limit():
        if ran is not None:
            ran.append(seconds)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.01)


def test_a_stopping_worker_interrupts_calls_at_its_deadline_and_starts_none_after() -> None:
    limiter = TimeLimiter(60)
    ran: list[float] = []
    limiter.stop_by(time.monotonic() + 0.3)
    busy(limiter, 0.05, ran)  # within the deadline: unaffected
    started = time.monotonic()
    with pytest.raises(WorkerStopping):
        busy(limiter, 5, ran)
    assert time.monotonic() - started < 1
    with pytest.raises(WorkerStopping):
        busy(limiter, 0.01, ran)
    assert ran == [0.05, 5], "a call started after the deadline"


def test_a_call_reaching_its_own_limit_before_the_stop_deadline_times_out() -> None:
    limiter = TimeLimiter(0.2)
    limiter.stop_by(time.monotonic() + 30)
    with pytest.raises(HandlerTimeout) as raised:
        busy(limiter, 5)
    assert not isinstance(raised.value, WorkerStopping)


def test_stuck_threads_are_not_reported_once_the_worker_stops() -> None:
    """A stopping process exits on its own schedule (workers.shutdown): all of its threads stuck
    then is no reason to exit sooner with the "restart me" code."""
    reported: list[int] = []
    limiter = TimeLimiter(60, grace=0.1, threads=1, on_all_stuck=reported.append)
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())

    def blocked() -> None:
        try:
            with limiter.limit():
                client.recv(1)
        except (HandlerTimeout, OSError):
            pass

    thread = threading.Thread(target=blocked, daemon=True)
    thread.start()
    limiter.stop_by(time.monotonic() + 0.1)
    time.sleep(0.6)  # past the deadline and the grace: an absence cannot be awaited
    assert reported == []
    server.accept()[0].close()
    thread.join(5)
    server.close()
    client.close()
