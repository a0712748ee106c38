"""Retention in the workers: every ``prune_interval_seconds`` one worker process, holding the
store's ``prune`` lease, applies the retention policies (see :mod:`gateway.retention`).

Only the holder of the lease prunes, so the processes of every worker host do not all scan and
lock the same rows at once; a holder that dies frees it when it expires. A pass starts no batch
after half the lease, or once the worker is stopping; what is left waits for the next interval.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import Engine

from gateway.config import Config
from gateway.metrics import worker_metrics
from gateway.periodic import Periodic
from gateway.queue import new_token
from gateway.retention import Pruner

from .leases import release_named_lease, take_named_lease

log = logging.getLogger("hookgate.retention")

LEASE_NAME = "prune"
LEASE_SECONDS = 600.0


class PruneLoop(Periodic):
    """Prunes the store at an interval, under the ``prune`` lease."""

    name = "hookgate-prune"

    def __init__(self, engine: Engine, config: Config) -> None:
        super().__init__(config.workers.prune_interval_seconds)
        self.engine = engine
        self.pruner = Pruner(engine, config)
        self.holder = new_token()

    def tick(self) -> None:
        if not take_named_lease(self.engine, LEASE_NAME, self.holder, LEASE_SECONDS):
            return
        deadline = time.monotonic() + LEASE_SECONDS / 2
        try:
            report = self.pruner.run(keep_going=lambda: not self.stopping and time.monotonic() < deadline)
        finally:
            release_named_lease(self.engine, LEASE_NAME, self.holder)
        worker_metrics.pruned_rows(deleted=report.deleted, tombstoned=report.tombstoned, forgotten=report.forgotten)
        if report.events or report.forgotten:
            log.info("retention: %s", report.describe())
