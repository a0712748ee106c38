"""Copying SQLite's WAL into the database off the intake's request path.

SQLite appends every commit to the WAL file and copies the WAL into the database (a checkpoint)
in the commit that passes ``wal_autocheckpoint`` pages. In the intake that commit is a group
commit whose requests wait for it: at 64,000 pages the copy held the committer for 150 ms, and
the intake's p99 went from 16 to 160 ms. So the intake's own connections never copy
(past a backstop only, see :func:`gateway.database.create_store_engine`), and a thread of its
own copies what is there every :data:`INTERVAL_SECONDS`: a ``PASSIVE`` checkpoint, which
waits for no one and holds no lock that a commit needs, so commits go on while it copies. The
workers' connections keep copying in their commits, at a larger WAL (their commits are not
waited for).
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine

from .periodic import Periodic

log = logging.getLogger("hookgate.intake")

#: Seconds between two checkpoints of the intake.
INTERVAL_SECONDS = 1.0


class Checkpointer(Periodic):
    """Checkpoints a SQLite store's WAL every ``interval`` seconds until stopped."""

    name = "hookgate-checkpoint"

    def __init__(self, engine: Engine, interval: float = INTERVAL_SECONDS) -> None:
        super().__init__(interval)
        self.engine = engine
        #: Checkpoints run so far (for tests and curiosity).
        self.runs = 0
        self._failing = False

    def tick(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except Exception as exc:  # the next interval tries again; said once per spell
            (log.debug if self._failing else log.warning)("the WAL checkpoint failed: %s", exc)
            self._failing = True
            return
        self.runs += 1
        self._failing = False
