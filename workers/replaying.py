"""Bulk replay jobs in the workers: every second or so each worker process looks for a running
job that nobody holds (created by the admin API, or left by a runner that died) and runs it
under the job's own lease (see :mod:`gateway.replays`).

The lease is taken by compare-and-set, so one process runs a job however many look. A worker
that is stopping ends its job after the current batch and gives the lease back: another worker
goes on from there at once.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine

from gateway import replays
from gateway.periodic import Periodic

log = logging.getLogger("hookgate.replays")

#: Seconds between looks for a job to adopt.
INTERVAL = 1.0


class ReplayJobs(Periodic):
    """Adopts and runs bulk replay jobs that no live runner holds."""

    name = "hookgate-replays"

    def __init__(self, engine: Engine, *, interval: float = INTERVAL) -> None:
        super().__init__(interval)
        self.engine = engine
        self.holder = replays.runner_name()

    def tick(self) -> None:
        for job_id in replays.adoptable(self.engine):
            if self.stopping:
                return
            ended = replays.run(self.engine, job_id, holder=self.holder, keep_going=lambda: not self.stopping)
            if ended is not None:
                state = replays.status(self.engine, job_id) or {}
                log.info(
                    "replay job %d: %s, %s of %s events queued", job_id, ended, state.get("done"), state.get("total")
                )
