"""Writers for the intake's writer process in tests (``WriterProcess(url, factory=...)``): each is
called in the child with the store's URL, so that a test can reach inside a real child process.
Paths and behaviour come from the environment, which the child inherits."""

from __future__ import annotations

import os
import subprocess
import sys
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
#: The file where the first lingering writer writes the pid of the process it leaves holding its socket.
KEEPER_PID = "HOOKGATE_TEST_KEEPER_PID"
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


class LingeringWriter(BatchWriter):
    """The first child's first batch never ends, and the child leaves a process of its own
    holding its end of the socket, so that its death does not close it (as a child in a system
    call that cannot be interrupted would not die). Later children write as usual."""

    def write(self, rows: list[dict[str, Any]], sent: list[int]) -> dict[Key, int]:
        keeper_pid = Path(os.environ[KEEPER_PID])
        if rows and not keeper_pid.exists():
            channel = int(sys.argv[1])  # the child's end, as gateway.writer_process passes it
            keeper = subprocess.Popen(["sleep", "600"], pass_fds=(channel,))
            keeper_pid.write_text(str(keeper.pid))
            time.sleep(600)
        return super().write(rows, sent)


def lingering(url: str) -> BatchWriter:
    """See :class:`LingeringWriter` (the keeper's pid in ``$HOOKGATE_TEST_KEEPER_PID``)."""
    return LingeringWriter(create_store_engine(url))
