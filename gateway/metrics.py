"""Every Prometheus metric Hookgate exposes, defined in this one module.

The intake's metrics live on a registry of each :class:`~gateway.intake.Intake` and are served on
its ``/metrics``. The workers' are defined once per process, here, and updated through
:data:`worker_metrics`. A worker group started by ``hookgate worker`` (or ``hookgate run``) runs
with ``PROMETHEUS_MULTIPROC_DIR`` set, so prometheus_client keeps each process's values in a
file there, and the group's one exporter sums them (see :mod:`gateway.metrics_export`); the
backlog gauges are read from the store by that exporter (see :mod:`gateway.backlog`).

Labels are bounded: provider names from providers.yaml, handler names from the code, outcome,
status and reason words from fixed sets here; never an event id. An update costs about a
microsecond (a few with the multiprocess files), nothing beside a store round trip.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from .models import SUPERSEDED

#: Rows per group commit: powers of two up to the intake's largest batch (512).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
#: A commit: a fraction of a millisecond on SQLite up to the 8 s commit timeout.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: A handler call: milliseconds up to the default 600 s time limit.
HANDLER_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: Received to processed: tens of milliseconds normally; ordering windows, retries with backoff
#: and outages take it to minutes, hours or a day.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)

#: Why the recovery sweep sent an event again (the fields of :class:`workers.recovery.Pass`).
RESENT_REASONS = {
    "held": "due",  # a retry or an ordering window came due: routine
    "behind": "waiting_behind",  # its message was used up while an earlier event of its resource waited
    "lost": "lost_message",  # the broker lost its message (a restart, a flush, a killed consumer)
    "expired": "expired_lease",  # its worker died or stalled while processing it
}


class IntakeMetrics:
    """The intake's metrics, on ``registry`` (each intake has its own, served on its ``/metrics``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.deliveries = Counter(
            "hookgate_deliveries",
            "Webhook requests by provider and outcome.",
            ["provider", "outcome"],
            registry=registry,
        )
        self.commit_batch_size = Histogram(
            "hookgate_intake_commit_batch_size",
            "Events written by one group commit of the intake.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.commit_duration = Histogram(
            "hookgate_intake_commit_duration_seconds",
            "Time one group commit of the intake took (insert and commit of the batch).",
            buckets=COMMIT_BUCKETS,
            registry=registry,
        )
        self.writer_exits = Counter(
            "hookgate_intake_writer_exits",
            "Times the intake's store writer process exited unasked; each costs the batch it was "
            "writing (answered 503) and a new process is started for the next.",
            registry=registry,
        )
        self.rejections_dropped = Counter(
            "hookgate_rejections_dropped",
            "Refused requests left out of the rejection log: its queue was full (queue_full) or "
            "the store did not take a batch (store_error).",
            ["reason"],
            registry=registry,
        )

    def committed(self, rows: int, seconds: float) -> None:
        """One group commit of ``rows`` events that took ``seconds``."""
        self.commit_batch_size.observe(rows)
        self.commit_duration.observe(seconds)


class WorkerMetrics:
    """The workers' metrics; one instance per process, :data:`worker_metrics`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.processed = Counter(
            "hookgate_events_processed", "Events processed: every handler succeeded.", ["provider"], registry=registry
        )
        self.superseded = Counter(
            "hookgate_events_superseded",
            "Events settled as superseded: older than their resource's applied state.",
            ["provider"],
            registry=registry,
        )
        self.failed = Counter(
            "hookgate_events_failed", "Events failed for good (no retry left).", ["provider"], registry=registry
        )
        self.retried = Counter(
            "hookgate_events_retried",
            "Failed tries that will be retried after a backoff.",
            ["provider"],
            registry=registry,
        )
        self.latency = Histogram(
            "hookgate_event_latency_seconds",
            "From the intake's receipt of an event to its processing (processed or superseded).",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.handler_duration = Histogram(
            "hookgate_handler_duration_seconds",
            "Time of one handler call, successful or not.",
            ["handler"],
            buckets=HANDLER_BUCKETS,
            registry=registry,
        )
        self.handler_failures = Counter(
            "hookgate_handler_failures", "Handler calls that raised or ran out of time.", ["handler"], registry=registry
        )
        self.fetches = Counter(
            "hookgate_reconcile_fetches",
            "Reconciliation requests to providers' APIs, by the answer's status class (2xx…5xx), "
            "timeout or error (no answer).",
            ["provider", "status"],
            registry=registry,
        )
        self.resent = Counter(
            "hookgate_sweep_resent",
            "Events the recovery sweep sent to the broker again, by reason.",
            ["reason"],
            registry=registry,
        )
        self.pruned = Counter(
            "hookgate_pruned_events",
            "Rows removed by retention: events deleted, tombstoned (body gone, id kept) or ids forgotten.",
            ["action"],
            registry=registry,
        )

    def settled(self, provider: str, status: str, seconds: float) -> None:
        """An event committed ``processed`` or ``superseded``, ``seconds`` after it was received."""
        (self.superseded if status == SUPERSEDED else self.processed).labels(provider).inc()
        self.latency.labels(provider).observe(max(0.0, seconds))  # the clocks of two hosts may disagree

    def failed_try(self, provider: str, *, final: bool) -> None:
        """A failed try committed: ``failed`` for good when ``final``, else a retry is scheduled."""
        (self.failed if final else self.retried).labels(provider).inc()

    def handler_called(self, handler: str, seconds: float, *, ok: bool) -> None:
        self.handler_duration.labels(handler).observe(seconds)
        if not ok:
            self.handler_failures.labels(handler).inc()

    def fetched(self, provider: str, status: int | str) -> None:
        """A reconciliation request answered ``status`` (an HTTP code), or ``timeout``/``error``."""
        label = f"{status // 100}xx" if isinstance(status, int) else status
        self.fetches.labels(provider, label).inc()

    def swept(self, **counts: int) -> None:
        """What one sweep pass sent again, by :data:`RESENT_REASONS` key."""
        for key, count in counts.items():
            if count:
                self.resent.labels(RESENT_REASONS[key]).inc(count)

    def pruned_rows(self, *, deleted: int, tombstoned: int, forgotten: int) -> None:
        for action, count in (("deleted", deleted), ("tombstoned", tombstoned), ("forgotten", forgotten)):
            if count:
                self.pruned.labels(action).inc(count)


#: The workers' metrics of this process. On no registry: a worker group's exporter reads them
#: from the multiprocess files, and a process started without one simply keeps them.
worker_metrics = WorkerMetrics()
