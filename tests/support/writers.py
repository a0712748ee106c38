"""Writers for the intake's writer process in tests (``WriterProcess(url, factory=...)``): each is
called in the child with the store's URL, so that a test can reach inside a real child process.
Paths and behaviour come from the environment, which the child inherits."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import gateway.store_writer
from gateway.batch_insert import Key
from gateway.database import create_store_engine
from gateway.store_writer import BatchWriter
from gateway.writer_process import open_writer

#: A file the announcing writer creates when a batch with rows begins.
WRITING_MARK = "HOOKGATE_TEST_WRITING_MARK"
#: While this file exists, a child of the stalling writer hangs as it opens the store, and after
#: it a child fails to open while the file in ``REFUSE_WHILE`` exists.
STALL_WHILE, REFUSE_WHILE = "HOOKGATE_TEST_STALL_WHILE", "HOOKGATE_TEST_REFUSE_WHILE"


class AnnouncingWriter(BatchWriter):
    """Writes as usual, and says in ``mark`` which rows a batch is about to write."""

    mark = Path(os.environ.get(WRITING_MARK, os.devnull))

    def write(self, rows: list[dict[str, Any]], sent: list[int]) -> dict[Key, int]:
        if rows:
            self.mark.write_text(",".join(row["event_id"] for row in rows))
        return super().write(rows, sent)


def announcing(url: str) -> BatchWriter:
    """Writes as usual, and says when a batch begins (in ``$HOOKGATE_TEST_WRITING_MARK``)."""
    return AnnouncingWriter(create_store_engine(url))


def failing_sync(url: str) -> BatchWriter:
    """Every sync of the WAL fails, as on a disk that went bad."""

    def fail(fd: int) -> None:
        raise OSError(5, "Input/output error")

    gateway.store_writer.sync_descriptor = fail
    return open_writer(url)


def stalling(url: str) -> BatchWriter:
    """Opens as usual, but first hangs while the file ``$HOOKGATE_TEST_STALL_WHILE`` exists (as a
    child stuck reading from a dead disk would), then fails while ``$HOOKGATE_TEST_REFUSE_WHILE``
    does."""
    stall, refuse = os.environ.get(STALL_WHILE), os.environ.get(REFUSE_WHILE)
    while stall and Path(stall).exists():
        time.sleep(0.05)
    if refuse and Path(refuse).exists():
        raise OSError(f"told to fail by {refuse}")
    return open_writer(url)
