"""The intake's commits never copy SQLite's WAL; its checkpointer does, beside them (gateway/checkpoints.py)."""

from __future__ import annotations

from pathlib import Path

from dramatiq.brokers.stub import StubBroker
from sqlalchemy import Engine, text

from gateway.checkpoints import Checkpointer
from gateway.database import create_store_engine
from gateway.ingest import Ingestor
from gateway.queue import EventQueue
from tests.support.servers import wait_for


def write_pages(engine: Engine, rows: int = 2000) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS filler (n INTEGER, pad BLOB)"))
    for start in range(0, rows, 100):
        with engine.begin() as conn:
            rows_of_a_page = [{"n": n} for n in range(start, start + 100)]
            conn.execute(text("INSERT INTO filler VALUES (:n, zeroblob(4000))"), rows_of_a_page)


def test_the_intakes_commits_leave_the_wal_and_its_checkpointer_copies_it(tmp_path: Path) -> None:
    database = tmp_path / "store.db"
    engine = create_store_engine(f"sqlite:///{database}")  # the intake's kind: acknowledges requests
    try:
        write_pages(engine)  # about 2,000 pages: SQLite's own default would have copied them twice
        size = database.stat().st_size
        assert size < 100 * 4096, "a commit copied the WAL"
        assert (tmp_path / "store.db-wal").stat().st_size > 2000 * 4096
        checkpointer = Checkpointer(engine, interval=0.05)
        checkpointer.start()
        try:
            copied = lambda: checkpointer.runs >= 1 and database.stat().st_size > 2000 * 4096  # noqa: E731
            wait_for(copied, 10, what="the WAL copied into the database")
        finally:
            checkpointer.stop()
    finally:
        engine.dispose()  # (SQLite copies the WAL when its last connection closes)


def test_an_intake_on_sqlite_runs_a_checkpointer_and_stops_it(tmp_path: Path) -> None:
    engine = create_store_engine(f"sqlite:///{tmp_path}/store.db")
    ingestor = Ingestor(engine, EventQueue(StubBroker()))  # nothing is sent here
    assert ingestor.checkpointer is not None
    ingestor.checkpointer.interval = 0.05
    ingestor.start()
    try:
        wait_for(lambda: ingestor.checkpointer is not None and ingestor.checkpointer.runs >= 2, 10, what="checkpoints")
    finally:
        ingestor.stop()
    engine.dispose()
