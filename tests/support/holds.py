"""Holding the store's writes, and a URL patient enough to wait them out."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.engine import make_url

from gateway.models import events


@contextmanager
def hold_writes(engine: Any) -> Iterator[None]:
    """While open, every write to the events waits and reads go on: SQLite's write lock
    (``BEGIN IMMEDIATE``), or PostgreSQL's ``EXCLUSIVE`` lock on the events table."""
    if engine.dialect.name == "sqlite":
        holder = sqlite3.connect(str(engine.url.database), isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    with engine.connect() as conn, conn.begin() as transaction:
        conn.exec_driver_sql(f"LOCK TABLE {events.name} IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            transaction.rollback()


def patient_url(url: str, seconds: float = 30.0) -> str:
    """``url`` with a SQLite busy timeout of ``seconds``, for a process that must wait out
    :func:`hold_writes` or write under heavy contention (the tests' 0.5 s would turn the wait into
    a failed write). PostgreSQL's is unchanged."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return url
    return parsed.update_query_dict({"timeout": str(seconds)}).render_as_string(hide_password=False)
