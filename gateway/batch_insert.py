"""The intake's group commit as one statement per database, written for what each one costs.

A batch inserts its rows with ``ON CONFLICT (provider, event_id) DO NOTHING`` (the dedupe), learns
the id of each new row, and marks the events the relay has sent meanwhile ``queued``.

- SQLite: the relay's ids marked in one UPDATE, the rows in one multi-row ``INSERT ... RETURNING``,
  in one transaction. (Returning nothing and reading the new ids back in one row saved the GIL
  hand-offs of a step per returned row, but measured no faster under load.)
- PostgreSQL: every round trip is a wait for the server and then for the GIL. The whole batch is
  one statement with a fixed text (arrays, one per column, unnested), run outside a transaction
  block, so a batch is one round trip whatever its size, and the driver turns it into the
  protocol's form once. Its parameters travel in the binary format (``%b``): as text, each body
  was escaped into the array and parsed back by the server, and a batch of 30 2 KB rows cost
  2.5 ms of CPU in the driver, against 0.6 ms. The "mark queued" UPDATE rides along in the same
  statement as a data-modifying ``WITH``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, update
from sqlalchemy.dialects import postgresql

from .models import QUEUED, RECEIVED, events
from .prepared import Prepared, driver_rows

#: The columns the intake writes; every other column starts at its default.
INSERT_COLUMNS = (
    "provider",
    "event_id",
    "event_type",
    "resource_id",
    "sequence",
    "body",
    "headers",
    "received_at",
    "status",
    "attempts",
    "message_id",
    "sweep_after",
    "updated_at",
    "traceparent",  # the request's trace context (gateway.tracing), NULL when tracing is off
    "tracestate",
)

Key = tuple[str, str]

#: Events the relay has handed to the broker, unless a worker took them meanwhile (SQLite). Through
#: ``Connection.execute`` the statement was built, keyed and expanded again for every batch: about
#: as much CPU as the INSERT itself (bench/README.md, Intake).
MARK_QUEUED = Prepared(
    update(events)
    .where(events.c.id.in_(bindparam("pks", expanding=True)), events.c.status == RECEIVED)
    .values(status=QUEUED)
)


#: Events written ``queued`` whose enqueue failed, back to ``received`` (gateway.relay); a rare
#: path, run through ``Connection.execute``.
SET_BACK_UNSENT = (
    update(events)
    .where(events.c.id == bindparam("pk"), events.c.message_id == bindparam("token"), events.c.status == QUEUED)
    .values(status=RECEIVED)
)


def values_insert(count: int, marker: str) -> str:
    """One multi-row INSERT of ``count`` rows that skips known (provider, event id) pairs and
    returns the new rows' ``id, provider, event_id``."""
    row = "(" + ", ".join([marker] * len(INSERT_COLUMNS)) + ")"
    # Only constant identifiers and placeholders are interpolated; values travel as parameters.
    columns, rows = ", ".join(INSERT_COLUMNS), ", ".join([row] * count)
    return (
        f"INSERT INTO {events.name} ({columns}) VALUES {rows} "  # noqa: S608
        "ON CONFLICT (provider, event_id) DO NOTHING RETURNING id, provider, event_id"
    )


def flat_params(rows: Sequence[dict[str, Any]]) -> list[Any]:
    """The parameters of :func:`values_insert`, row after row."""
    return [row[column] for row in rows for column in INSERT_COLUMNS]


def insert_sqlite(conn: Connection, rows: Sequence[dict[str, Any]], sent: list[int]) -> dict[Key, int]:
    """Within the caller's transaction: mark ``sent`` queued and insert ``rows``; the new rows' ids."""
    if sent:
        MARK_QUEUED.rowcount(conn, {"pks": sent})
    if not rows:
        return {}
    found = driver_rows(conn, values_insert(len(rows), "?"), flat_params(rows))
    return {(provider, event_id): pk for pk, provider, event_id in found}


def insert_postgres(conn: Connection, rows: Sequence[dict[str, Any]], sent: list[int]) -> dict[Key, int]:
    """Mark ``sent`` queued and insert ``rows`` in one statement (``conn`` in autocommit: the
    statement is its own transaction); the new rows' ids."""
    arrays = [[row[column] for row in rows] for column in INSERT_COLUMNS]
    # Planned anew each time, as every statement of the store's engines (gateway.database): a
    # generic plan made while the table was small looked the sent ids up by scanning every
    # ``received`` event, slower with every batch.
    found = driver_rows(conn, _POSTGRES_BATCH, [QUEUED, sent, RECEIVED, *arrays])
    # Free in autocommit (psycopg sends nothing outside a transaction), and the rows are committed
    # before anyone is answered even if a reconnect had left the connection out of autocommit.
    conn.connection.dbapi_connection.commit()  # type: ignore[union-attr]
    return {(provider, event_id): pk for pk, provider, event_id in found}


def _postgres_batch() -> str:
    dialect = postgresql.dialect()

    def array_of(column: str) -> str:
        # Text arrays for the VARCHAR(n) columns: an explicit cast to VARCHAR(n) would cut a longer
        # value short in silence, where the INSERT's own assignment refuses it.
        type_name = events.c[column].type.compile(dialect=dialect)
        return "TEXT[]" if type_name.startswith("VARCHAR") else f"{type_name}[]"

    casts = ", ".join(f"%b::{array_of(column)}" for column in INSERT_COLUMNS)
    # Only constant identifiers and placeholders are interpolated; values travel as parameters.
    return (
        f"WITH marked AS (UPDATE {events.name} SET status = %b WHERE id = ANY(%b::bigint[]) AND status = %b) "  # noqa: S608
        f"INSERT INTO {events.name} ({', '.join(INSERT_COLUMNS)}) SELECT * FROM unnest({casts}) "
        "ON CONFLICT (provider, event_id) DO NOTHING RETURNING id, provider, event_id"
    )


_POSTGRES_BATCH = _postgres_batch()
