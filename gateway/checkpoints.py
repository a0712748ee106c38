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
import threading

from sqlalchemy import Engine

log = logging.getLogger("hookgate.intake")

#: Seconds between two checkpoints of the intake.
INTERVAL_SECONDS = 1.0


class Checkpointer:
    """A thread that checkpoints a SQLite store's WAL every ``interval`` seconds until stopped."""

    def __init__(self, engine: Engine, interval: float = INTERVAL_SECONDS) -> None:
        self.engine = engine
        self.interval = interval
        #: Checkpoints run so far (for tests and curiosity).
        self.runs = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="hookgate-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        failing = False
        while not self._stopping.wait(self.interval):
            try:
                with self.engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                self.runs += 1
                failing = False
            except Exception as exc:  # the next interval tries again; said once per spell
                (log.debug if failing else log.warning)("the WAL checkpoint failed: %s", exc)
                failing = True
