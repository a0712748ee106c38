"""A worker process's graceful stop on SIGTERM, bounded in time.

Dramatiq's own stop waits for the running actors (ten minutes by default), its consumer fetching
new messages meanwhile whenever a running one is acked, and gives back what it holds only at
the end: a deploy would hold events back for as long as the slowest handler runs. Hookgate's
stop, from the ``before_worker_shutdown`` hook:

1. fetches nothing more (each consumer's prefetch drops to zero);
2. hands the prefetched messages back to Redis at once, for the other workers;
3. lets the handler calls already running finish, their leases renewed, for up to
   ``stop_timeout_seconds``; a call still running then is interrupted
   (:class:`~workers.calls.WorkerStopping`) and its event recorded as a failed try, which
   another worker retries after the backoff;
4. exits the process :data:`~workers.leases.RENEWAL_GRACE_SECONDS` later if a call still has
   not returned (one blocked where no exception reaches it, such as a socket read without a
   timeout). Its event is taken over once its lease lapses, which is after this process, and
   the call with it, are gone: it never runs in two places at once.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import defaultdict
from types import FrameType

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import iter_queue

from gateway.config import WorkerSettings

from .leases import RENEWAL_GRACE_SECONDS
from .processing import Processor

log = logging.getLogger("hookgate.worker")


#: Stop signals arriving within this long of the first one are the same stop, not a second one.
REPEATS_WITHIN_SECONDS = 2.0

#: Room for what surrounds a worker process's own stop: Dramatiq starts it within a second of
#: SIGTERM, and its main process notices the exit within another and then exits itself.
MAIN_PROCESS_SECONDS = 5.0


def exits_within(settings: WorkerSettings) -> float:
    """How long after SIGTERM ``hookgate worker`` has exited at the latest, in seconds."""
    return settings.stop_timeout_seconds + RENEWAL_GRACE_SECONDS + MAIN_PROCESS_SECONDS


def count_repeated_signals_once() -> None:
    """Make a worker process take the SIGTERMs of one stop as one.

    Dramatiq's worker process reads a second SIGTERM as "kill now", and one stop can deliver two
    or three within milliseconds: systemd's default ``KillMode=control-group`` signals every
    process of ``hookgate worker``, and Dramatiq's main process passes its own on again (as it
    does a terminal's Ctrl-C, which reaches the whole process group). Repeats within
    :data:`REPEATS_WITHIN_SECONDS` of the first are dropped; a later one still kills at once.
    Call it in the process's main thread, after Dramatiq has installed its handler.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    dramatiqs = signal.getsignal(signal.SIGTERM)
    if not callable(dramatiqs):
        return
    first_at: float | None = None

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        nonlocal first_at
        now = time.monotonic()
        if first_at is None:
            first_at = now
        elif now - first_at < REPEATS_WITHIN_SECONDS:
            return
        dramatiqs(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


def stop_fetching(worker: dramatiq.Worker) -> None:
    """Have ``worker``'s consumers fetch no more messages; they stay connected, so acks go on."""
    for thread in worker.consumers.values():
        thread.prefetch = 0  # a consumer restarted after a connection error takes this one
        if thread.consumer is not None:
            thread.consumer.prefetch = 0  # type: ignore[attr-defined]


def hand_back_prefetched(worker: dramatiq.Worker) -> int:
    """Give the messages ``worker`` has prefetched but not started back to Redis, now.

    Dramatiq's own stop does this only after its running actors return, which may be a whole
    handler time limit later; meanwhile no other worker could run those events. Dramatiq's
    RabbitMQ consumer gives nothing back here (RabbitMQ redelivers a connection's unacknowledged
    messages when it closes, after the running actors): the messages are only dropped from the
    work queue, and the recovery sweep sends their events again if they wait longer than
    ``requeue_after_seconds`` while the queue is empty.
    """
    by_queue: defaultdict[str, list[dramatiq.MessageProxy]] = defaultdict(list)
    for item in iter_queue(worker.work_queue):
        by_queue[item.message.queue_name].append(item.message)
        worker.work_queue.task_done()
    for queue_name, messages in by_queue.items():
        worker.consumers[queue_name].requeue_messages(messages)
    return sum(map(len, by_queue.values()))


def stop_gracefully(worker: dramatiq.Worker, processor: Processor | None, stop_timeout: float) -> None:
    """Steps 1 to 3 of the stop now, and step 4 in a thread of its own, if it comes to that."""
    deadline = time.monotonic() + stop_timeout
    if processor is not None:
        processor.stop(deadline)
    stop_fetching(worker)
    handed_back = hand_back_prefetched(worker)
    given_back = (
        "not started; RabbitMQ takes them back"
        if isinstance(worker.broker, RabbitmqBroker)
        else ("handed back to the broker")
    )
    log.info(
        "stopping: %d prefetched messages %s; running handlers get %.3g s to finish",
        handed_back,
        given_back,
        stop_timeout,
    )
    exit_at = deadline + RENEWAL_GRACE_SECONDS
    threading.Thread(target=_exit_when_overdue, args=(worker, exit_at), name="hookgate-stop", daemon=True).start()


def _exit_when_overdue(worker: dramatiq.Worker, at: float) -> None:
    """Exit at ``at`` (monotonic) if the process is still waiting for handler calls then."""
    time.sleep(max(0.0, at - time.monotonic()))
    stuck = sum(thread.is_alive() for thread in worker.workers)
    log.warning(
        "stopping: %d handler calls did not return after they were interrupted; exiting without them "
        "(their events are taken over when their leases lapse)",
        stuck,
    )
    logging.shutdown()
    os._exit(0)
