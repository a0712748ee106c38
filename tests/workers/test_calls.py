"""The per-call time limit, in one process: a call past its limit is interrupted; calls blocked
where no exception reaches them are reported once every thread is stuck."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from workers.calls import HandlerTimeout, TimeLimiter


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
