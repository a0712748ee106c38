"""Where a worker's time goes, stage by stage: wall and CPU time per call, and SQLite's write lock.

A sampling profiler shows where the CPU goes, not what a thread waits for, nor for how long a
transaction holds the store's one write lock while other writers queue. This wraps the stages of
an event's way through a worker (the broker message, the resource's pass, its rounds, the
reconciliation fetch, the handlers, the statements of a round) and the write lock of
:mod:`gateway.sqlite_lock`, and counts for each: calls, wall time and the calling thread's CPU
time (``time.thread_time``: the GIL's waits are not in it). Nested stages are counted in each.

Loaded by bench/e2e_handlers.py in every worker process when ``$HOOKGATE_BENCH_STAGES`` names a
directory: each process rewrites ``stages-<pid>`` there twice a second (a worker process is not
sure to run ``atexit`` on SIGTERM). bench/side_by_side.py ``--stages`` sets it and prints
:func:`summary` after each Hookgate run. The wrappers cost a few microseconds a call: compare
runs made with them with each other, not with runs made without.
"""

from __future__ import annotations

import collections
import functools
import os
import threading
import time
from pathlib import Path
from typing import Any

#: (module, class, method, stage): each a stage of its own; "lock held" is added by hand.
STAGES = [
    ("dramatiq.worker", "WorkerThread", "process_message", "message"),
    ("dramatiq.brokers.redis", "_RedisConsumer", "ack", "ack"),
    ("workers.lifecycle", "EventLifecycle", "current", "read message's events"),
    ("workers.processing", "Processor", "run_lane", "lane"),
    ("workers.processing", "Processor", "run_round", "round"),
    ("workers.processing", "Processor", "try_event", "try event"),
    ("workers.reconcile", "Reconciler", "fetch", "reconcile fetch"),
    ("workers.processing", "Processor", "run_handlers", "handlers"),
    ("workers.processing", "Processor", "record_round", "record round"),
    ("workers.processing", "Processor", "report", "log and count"),
    ("workers.processing", "Processor", "plan_round", "plan round"),
    ("workers.leases", "ResourceLeases", "take", "take resource lease"),
    ("gateway.sqlite_lock", "PollingConnection", "take_write_lock", "wait for write lock"),
]

_counts: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0, 0.0])
_lock = threading.Lock()
#: Where this process writes its counts (set by :func:`install`).
_path: Path | None = None


def _count(stage: str, wall: float, cpu: float) -> None:
    with _lock:
        counted = _counts[stage]
        counted[0] += 1
        counted[1] += wall
        counted[2] += cpu


def _timed(method: Any, stage: str) -> Any:
    @functools.wraps(method)
    def timed(*args: Any, **kwargs: Any) -> Any:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return method(*args, **kwargs)
        finally:
            _count(stage, time.perf_counter() - wall, time.thread_time() - cpu)

    return timed


def _time_lock_holds() -> None:
    """From the write lock's taking to the turn's release (commit, rollback or close)."""
    from gateway.sqlite_lock import PollingConnection

    take, give = PollingConnection.take_write_lock, PollingConnection._give_turn

    def take_write_lock(self: Any) -> None:
        take(self)
        self._stages_held = (time.perf_counter(), time.thread_time())

    def give_turn(self: Any) -> None:
        held = getattr(self, "_stages_held", None)
        if held is not None and self._holds_turn:
            self._stages_held = None
            _count("write lock held", time.perf_counter() - held[0], time.thread_time() - held[1])
        give(self)

    PollingConnection.take_write_lock = take_write_lock  # type: ignore[method-assign]
    PollingConnection._give_turn = give_turn  # type: ignore[method-assign]


def install(directory: str) -> None:
    """Wrap the stages and the write lock, and write the counts to ``directory`` twice a second."""
    import importlib

    _time_lock_holds()  # first: the wait below then wraps the holds' start
    for module, cls, method, stage in STAGES:
        owner = getattr(importlib.import_module(module), cls)
        setattr(owner, method, _timed(getattr(owner, method), stage))
    global _path
    _path = Path(directory) / f"stages-{os.getpid()}"

    def write() -> None:
        while True:
            time.sleep(0.5)
            flush()

    threading.Thread(target=write, name="bench-stages", daemon=True).start()


def flush() -> None:
    """Write this process's counts now (the thread does so twice a second)."""
    with _lock:
        lines = [f"{stage}\t{n}\t{wall}\t{cpu}\n" for stage, (n, wall, cpu) in _counts.items()]
    if _path is not None:
        _path.write_text("".join(lines))


def totals(directory: Path) -> dict[str, tuple[int, float, float]]:
    """Each stage's calls, wall seconds and CPU seconds, over the processes that wrote to ``directory``."""
    counted: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for file in directory.glob("stages-*"):
        for line in file.read_text().splitlines():
            stage, n, wall, cpu = line.split("\t")
            total = counted[stage]
            total[0] += int(n)
            total[1] += float(wall)
            total[2] += float(cpu)
    return {stage: (int(n), wall, cpu) for stage, (n, wall, cpu) in counted.items()}


def summary(directory: Path, events: int) -> str:
    """:func:`totals` as a table: per call and per event, the longest stages first."""
    heads = ("calls", "wall ms/call", "cpu ms/call", "wall ms/event", "cpu ms/event")
    lines = [f"{'stage':22} {heads[0]:>7} " + " ".join(f"{head:>13}" for head in heads[1:])]
    for stage, (n, wall, cpu) in sorted(totals(directory).items(), key=lambda item: -item[1][1]):
        lines.append(
            f"{stage:22} {n:7} {1000 * wall / n:13.3f} {1000 * cpu / n:13.3f} "
            f"{1000 * wall / events:14.3f} {1000 * cpu / events:13.3f}"
        )
    return "\n".join(lines)
