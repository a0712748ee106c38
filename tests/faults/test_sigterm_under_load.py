"""SIGTERM under load, sent to the main process as Docker and Kubernetes send it (or to every
process, as systemd does): ``hookgate serve`` with requests held in its group commit and more
unread, ``hookgate run`` (serve and a supervised worker), and ``hookgate worker`` with handlers
running past their lease, a stream arriving, and handlers that outlast the stop. Each scenario
ends with the verdict: every acknowledged event processed, none twice."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from urllib.parse import urlsplit

from gateway.database import SQLITE_BUSY_SECONDS
from tests.faults.conftest import (
    Answer,
    Faults,
    Serve,
    assert_nothing_lost_or_duplicated,
    assert_sweeps_never_failed,
    free_port,
    stays,
)
from tests.support.servers import wait_for

#: The contract: a worker given SIGTERM exits 0 within this many seconds (its in-flight handlers
#: finishing within it).
WORKER_EXIT_SECONDS = 60.0

#: The README's bound: ``serve`` exits once every request it was sent is answered, which takes at
#: most 1 s of accepting, then the header, body and commit timeouts (10 + 10 + 8 s).
SERVE_EXIT_SECONDS = 30.0


def send_whole(url: str, request: tuple[bytes, dict[str, str]]) -> socket.socket:
    """Open a connection and send one whole POST on it (kept alive, as senders do): once this
    returns, the request has been sent."""
    body, headers = request
    parts = urlsplit(url)
    lines = ["POST /webhooks/acme HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    return sock


def answer_on(sock: socket.socket) -> int | None:
    """The status the server answered on ``sock`` before closing it; ``None`` if it closed (or
    reset) the connection without an answer."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except OSError:
        pass
    finally:
        sock.close()
    head = b"".join(chunks)
    return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else None


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def sigterm_with_requests_held(
    faults: Faults, server: Serve, in_commit: int = 24, in_kernel: int = 200
) -> tuple[dict[str, int | None], float]:
    """Send requests while the store holds every write: ``in_commit`` reach the group commit and
    wait there; ``in_kernel`` more are sent while ``server`` is paused (SIGSTOP, as a process
    starved of CPU), so that they wait in the kernel, unread, most of their connections not even
    accepted. SIGCONT, and SIGTERM at once, while ``server`` catches up; once it has stopped
    accepting connections, the writes go on. Returns each request's answer and the time of the
    SIGTERM.

    While the writes are held, ``server`` must not exit: it still owes every request an answer.
    """
    process = server.process
    assert process is not None
    held = {f"held-{i}": faults.request("fx.held", f"held-{i}") for i in range(in_commit + in_kernel)}
    ids = list(held)
    with faults.hold_writes():
        connections = {event_id: send_whole(server.url, held[event_id]) for event_id in ids[:in_commit]}
        process.send_signal(signal.SIGSTOP)
        try:
            connections |= {event_id: send_whole(server.url, held[event_id]) for event_id in ids[in_commit:]}
        finally:
            process.send_signal(signal.SIGCONT)
        process.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        wait_for(lambda: refuses_connections(server.port), 10, what="the server to stop accepting connections")
        stays(lambda: process.poll() is None, 0.5, "the server exited with requests unanswered")
    return {event_id: answer_on(sock) for event_id, sock in connections.items()}, stopped_at


class Stream:
    """A sender posting ``fx`` events, a few at a time, until :meth:`stop`."""

    def __init__(self, faults: Faults, prefix: str, url: str | None = None) -> None:
        self.faults, self.prefix, self.url = faults, prefix, url
        self.answers: dict[str, Answer] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._send, name="stream", daemon=True)

    def start(self) -> Stream:
        self._thread.start()
        return self

    def _send(self) -> None:
        sent = 0
        while not self._stopping.is_set():
            ids = [f"{self.prefix}-{sent + i}" for i in range(4)]
            sent += len(ids)
            batch = {event_id: self.faults.request("fx.stream", event_id) for event_id in ids}
            self.answers |= self.faults.post_many(batch, url=self.url, concurrency=4)
            self._stopping.wait(0.05)  # a sender's pace

    def stop(self) -> dict[str, Answer]:
        self._stopping.set()
        self._thread.join(timeout=60)
        return self.answers


def acknowledged(answers: dict[str, Answer]) -> list[str]:
    return [event_id for event_id, answer in answers.items() if answer.status == 200]


def test_sigterm_of_serve_answers_every_request_it_was_sent(faults: Faults, serve: Serve) -> None:
    """224 requests have been sent to serve when SIGTERM arrives, the store holding its writes:
    24 wait in its group commit, 200 in the kernel, unread (serve was paused). serve stops
    accepting, waits, and once the store writes again answers every one of them 200 after
    committing it, then exits 0. A worker started afterwards processes each once."""
    serve.env["HOOKGATE_DATABASE_URL"] = faults.patient_database_url()
    serve.start()
    assert serve.process is not None
    answers, stopped_at = sigterm_with_requests_held(faults, serve)
    released_at = time.monotonic()
    code = serve.process.wait(timeout=SERVE_EXIT_SECONDS)
    exited = time.monotonic() - stopped_at
    log = serve.logs[-1].read_text()
    faults.start_worker(threads=4)
    figures = faults.verdict(
        "sigterm-serve-held",
        acknowledged({i: Answer(status, 0.0) for i, status in answers.items()}),
        released_at,
        extra={"serve exited after": f"{exited:.1f} s"},
    )
    assert {i: status for i, status in answers.items() if status != 200} == {}, "a request sent before the stop"
    assert sorted(faults.rows(answers)) == sorted(answers)
    assert_nothing_lost_or_duplicated(faults, figures)
    assert code == 0, log
    assert "Traceback" not in log, log
    assert max(faults.runs().values()) == 1
    assert_sweeps_never_failed(faults)


def test_sigterm_of_run_answers_its_requests_then_finishes_its_handlers(faults: Faults) -> None:
    """``hookgate run`` with two handlers running past a lease renewal interval, events queued
    behind them and requests waiting in its group commit: SIGTERM answers every request 200, the
    handlers finish in the worker that started them (nobody else starts them), and run exits 0.
    A worker started afterwards processes the rest, each event once."""
    faults.hg.configure_workers(lease_seconds=4)  # holding the writes for a moment delays renewals
    run = Serve(faults, free_port(), "run", "--threads", "2", HOOKGATE_DATABASE_URL=faults.patient_database_url())
    try:
        run.start()
        naps = [f"run-nap-{i}" for i in range(2)]
        queued = [f"run-fx-{i}" for i in range(10)]
        answers = faults.post_many({i: faults.request(faults.nap(3000), i) for i in naps}, url=run.url)
        wait_for(lambda: len(faults.runs()) == len(naps), 60, what="both naps to start")
        answers |= faults.post_many({i: faults.request("fx.run", i) for i in queued}, url=run.url)
        assert {a.status for a in answers.values()} == {200}
        held, stopped_at = sigterm_with_requests_held(faults, run, in_commit=12)
        assert run.process is not None
        code = run.process.wait(timeout=SERVE_EXIT_SECONDS + WORKER_EXIT_SECONDS)
        exited = time.monotonic() - stopped_at
    finally:
        run.kill()
    log = run.logs[-1].read_text()
    finished = {line[1] for line in faults.lines("done")}
    faults.start_worker(threads=4)
    figures = faults.verdict(
        "sigterm-run",
        [*acknowledged(answers), *(i for i, status in held.items() if status == 200)],
        stopped_at,
        extra={"run exited after": f"{exited:.1f} s"},
    )
    assert {i: status for i, status in held.items() if status != 200} == {}, "a request sent before the stop"
    assert set(naps) <= finished, "a handler running at the stop did not finish before run exited"
    assert_nothing_lost_or_duplicated(faults, figures)
    assert code == 0, log
    assert "Traceback" not in log, log
    assert max(faults.runs().values()) == 1, "an event ran twice"
    assert_sweeps_never_failed(faults)


def test_sigterm_of_workers_under_a_stream(faults: Faults) -> None:
    """``hookgate worker --processes 2 --threads 4`` runs handlers that take 2.5 to 6 s (past
    the lease of 2 s, renewed every 0.7 s) while a stream of events arrives; SIGTERM to its main
    process. A bystander worker whose only thread is busy sweeps meanwhile: it would take over
    any event whose lease lapsed. The stopping worker hands back what it prefetched and fetches
    nothing more, finishes the handlers it started, and exits 0 within 60 s; a new worker then
    processes the rest. Every acknowledged event is processed, none twice."""
    faults.hg.start_intake()
    # The stream piles up while nobody fetches; three workers then work through it and the
    # sweeps keep the pile's schedule, all writing to SQLite at once: its default busy timeout
    # (5 s), not the tests' 0.5 s, is what a recovery sweep pass must not fail under.
    store = {"HOOKGATE_DATABASE_URL": faults.patient_database_url(SQLITE_BUSY_SECONDS)}
    bystander = faults.start_worker(threads=1, prefetch=1, **store)
    answers = faults.post_many({"busy": faults.request(faults.slow, "busy")})
    wait_for(lambda: faults.runs()["busy"] == 1, 30, what="the bystander to be busy")
    bystander_acks = set(faults.acks())
    stopping = faults.start_worker(processes=2, threads=4, prefetch=6, cli=True, **store)
    stream = Stream(faults, "stream").start()
    durations = [2500, 3000, 3500, 4000, 4500, 5000, 5500, 6000]
    naps = {f"nap-{i}": faults.request(faults.nap(ms), f"nap-{i}") for i, ms in enumerate(durations)}
    answers |= faults.post_many(naps)
    assert {a.status for a in answers.values()} == {200}

    def running() -> set[str]:
        return set(faults.runs()) - set(faults.runs("done")) - {"busy"}

    wait_for(lambda: len(running() & set(naps)) >= 6, 60, what="six naps to run")
    stopping.process.send_signal(signal.SIGTERM)  # the main process only, as a deploy does
    stopped_at = time.monotonic()
    in_flight = running()
    wait_for(
        lambda: stopping.log.read_text().count("prefetched messages handed back") == 2,
        15,
        what="both worker processes to hand back their prefetched messages",
    )
    held_after_hand_back = set().union(*(ids for key, ids in faults.acks().items() if key not in bystander_acks))
    fetched_while_stopping: set[str] = set()
    while stopping.process.poll() is None and time.monotonic() < stopped_at + WORKER_EXIT_SECONDS:
        held = set().union(*(ids for key, ids in faults.acks().items() if key not in bystander_acks))
        fetched_while_stopping |= held - held_after_hand_back
        assert max(faults.runs().values()) == 1, "an event was started twice while its worker stopped"
        time.sleep(0.05)
    code = stopping.process.wait(timeout=1)
    exited = time.monotonic() - stopped_at
    answers |= stream.stop()
    done_by_stopping = {line[1] for line in faults.lines("done")}
    faults.release()
    faults.start_worker(threads=4, **store)
    figures = faults.verdict(
        "sigterm-workers-stream",
        acknowledged(answers),
        stopped_at,
        extra={
            "in flight at the stop": len(in_flight),
            "worker exited after": f"{exited:.1f} s",
            "stream": f"{len(acknowledged(stream.answers))} events",
        },
    )
    assert_nothing_lost_or_duplicated(faults, figures)
    assert code == 0, stopping.log.read_text()
    assert "Traceback" not in stopping.log.read_text()
    assert in_flight <= done_by_stopping, "an event in flight at the stop did not finish in its worker"
    assert fetched_while_stopping == set(), (
        f"the stopping worker fetched {len(fetched_while_stopping)} messages after handing back its prefetch"
    )
    assert max(faults.runs().values()) == 1, "an event ran twice"
    assert bystander.process.poll() is None
    assert_sweeps_never_failed(faults)


def test_handlers_that_outlast_the_stop(faults: Faults, silent_server: socket.socket) -> None:
    """With ``stop_timeout_seconds: 2``, SIGTERM to a worker running a slow handler (Python code,
    which an exception raised in its thread interrupts) and one blocked in ``recv`` (which none
    reaches), another worker beside it: after 2 s the slow call is interrupted and its event
    given back (a failed try, retried at once by the other worker); the process exits 0 within
    the stop timeout + 5 s, abandoning the blocked call, whose event the other worker takes over
    once its lease has lapsed. Neither event ever runs in two places at once."""
    faults.hg.configure_workers(stop_timeout_seconds=2)
    faults.hg.start_intake()
    stopping = faults.start_worker(threads=2, cli=True)
    answers = faults.post_many({"outlast-slow": faults.request(faults.slow, "outlast-slow")})
    answers |= faults.post_many({"outlast-hung": faults.request(faults.hang, "outlast-hung")})
    wait_for(lambda: faults.lines("hung") and faults.runs()["outlast-slow"], 30, what="both handlers to start")
    faults.start_worker(threads=2)
    stopping.process.send_signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    bound = 2 + 5 + 5  # stop_timeout_seconds, the 5 s grace, and room for the process to end
    while stopping.process.poll() is None and time.monotonic() < stopped_at + bound:
        runs = faults.runs()
        assert runs["outlast-hung"] == 1, "the blocked event was started elsewhere while its worker lived"
        assert runs["outlast-slow"] <= 1 + len(faults.lines("raised")), "the slow event ran in two places"
        time.sleep(0.05)
    code = stopping.process.poll()
    exited = time.monotonic() - stopped_at
    faults.release()
    extra = {"worker exited after": f"{exited:.1f} s"}
    figures = faults.verdict("sigterm-outlasting-handlers", acknowledged(answers), stopped_at, extra=extra)
    assert code == 0, f"exit code {code} after {exited:.1f} s\n{stopping.log.read_text()}"
    assert_nothing_lost_or_duplicated(faults, figures)
    in_order = [line.split()[:3] for line in (faults.dir / "effects.log").read_text().splitlines()]
    slow = [line for line in in_order if line[1] == "outlast-slow" and line[0] in ("start", "raised")]
    assert slow == [["start", "outlast-slow", "1"], ["raised", "outlast-slow", "1"], ["start", "outlast-slow", "2"]]
    rows = faults.rows(answers)
    assert rows["outlast-slow"].attempts == 2
    assert rows["outlast-hung"].attempts == 2
    assert faults.runs()["outlast-hung"] == 2
    assert_sweeps_never_failed(faults)


def test_sigterm_to_every_process_of_a_worker(faults: Faults) -> None:
    """systemd's default ``KillMode=control-group`` sends SIGTERM to every process of ``hookgate
    worker`` at once, and Dramatiq's main process passes its own on again: each worker process
    gets two or three within milliseconds, and Dramatiq reads a second one as "kill now". They
    count as one stop: the running handlers finish where they started, and the worker exits 0."""
    faults.hg.start_intake()
    stopping = faults.start_worker(processes=2, threads=2, cli=True)
    naps = [f"group-nap-{i}" for i in range(4)]
    answers = faults.post_many({i: faults.request(faults.nap(2500), i) for i in naps})
    wait_for(lambda: len(faults.runs()) == len(naps), 60, what="four naps to run")
    os.killpg(stopping.process.pid, signal.SIGTERM)
    stopped_at = time.monotonic()
    code = stopping.process.wait(timeout=WORKER_EXIT_SECONDS)
    exited = time.monotonic() - stopped_at
    finished = {line[1] for line in faults.lines("done")}
    faults.start_worker(threads=2)
    extra = {"exited after": f"{exited:.1f} s"}
    figures = faults.verdict("sigterm-worker-group", acknowledged(answers), stopped_at, extra=extra)
    assert code == 0, stopping.log.read_text()
    assert set(naps) <= finished, f"handlers killed by the repeated signal\n{stopping.log.read_text()}"
    assert_nothing_lost_or_duplicated(faults, figures)
    assert max(faults.runs().values()) == 1
