"""Prepared statements answer as ``Connection.execute`` does: rows, counts, expanding lists, the
caller's transaction, SQLAlchemy's errors, and a dropped connection invalidated.

On SQLite, and on PostgreSQL with ``HOOKGATE_TEST_DATABASE_URL``.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import bindparam, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from gateway.models import leases
from gateway.prepared import Prepared

NAMED = select(leases.c.name, leases.c.holder).where(leases.c.name.in_(bindparam("names", expanding=True)))
HOLDERS = select(leases.c.holder, func.count().label("leases")).group_by(leases.c.holder).order_by(leases.c.holder)
HAND = update(leases).where(leases.c.holder == bindparam("old")).values(holder=bindparam("new"))
ADD = insert(leases).values(name=bindparam("name"), holder=bindparam("holder"), expires_at=bindparam("at"))


ADD_PREPARED = Prepared(ADD)


def add(engine: Any, *names: str, holder: str = "a") -> None:
    with engine.begin() as conn:
        ADD_PREPARED.run_many(conn, [{"name": name, "holder": holder, "at": 1.5} for name in names])


def test_rows_counts_and_expanding_lists(engine: Any) -> None:
    add(engine, "n1", "n2", "n3")
    named, holders, hand = Prepared(NAMED), Prepared(HOLDERS), Prepared(HAND)
    with engine.begin() as conn:
        rows = named.rows(conn, {"names": ["n3", "n1", "nobody"]})
        assert sorted((row.name, row.holder) for row in rows) == [("n1", "a"), ("n3", "a")]
        assert [row.name for row in named.rows(conn, {"names": ["n2"]})] == ["n2"]  # another length
        assert [row.name for row in named.rows(conn, {"names": ["n3"]})] == ["n3"]  # its values, not the last
        assert named.first(conn, {"names": ["nobody"]}) is None
        assert hand.rowcount(conn, {"old": "a", "new": "b"}) == 3
        assert [(row.holder, row.leases) for row in holders.rows(conn, {})] == [("b", 3)]
    with engine.connect() as conn:
        assert conn.execute(select(leases.c.holder).distinct()).scalars().all() == ["b"]


def test_they_run_in_the_callers_transaction(engine: Any) -> None:
    add(engine, "n1")
    hand = Prepared(HAND)
    changed = []

    def hand_over_then_fail() -> None:
        with engine.begin() as conn:
            changed.append(hand.rowcount(conn, {"old": "a", "new": "b"}))
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        hand_over_then_fail()
    assert changed == [1]
    with engine.connect() as conn:
        assert conn.execute(select(leases.c.holder)).scalar_one() == "a"


def test_many_rows_of_an_insert_are_written_in_order_and_all_or_none(engine: Any) -> None:
    """``run_many`` of an ``insert`` given its columns (on PostgreSQL multi-row statements,
    elsewhere ``executemany``): every row with its own values, NULLs included, and a row the
    database refuses, in a later statement, takes the whole transaction's rows with it."""
    add_rows = Prepared(insert(leases), column_keys=("name", "holder", "expires_at"))
    rows = [
        {
            "name": f"m{index:03}",
            "holder": None if index % 5 == 0 else f"h{index % 7}",
            "expires_at": None if index % 3 == 0 else index / 4,
        }
        for index in range(150)
    ]
    with engine.begin() as conn:
        add_rows.run_many(conn, rows)
        add_rows.run_many(conn, [{"name": "single", "holder": None, "expires_at": None}])  # columns of NULLs
    with engine.connect() as conn:
        stored = conn.execute(select(leases.c.name, leases.c.holder, leases.c.expires_at).order_by(leases.c.name)).all()
    assert [tuple(row) for row in stored] == sorted(
        [*((row["name"], row["holder"], row["expires_at"]) for row in rows), ("single", None, None)]
    )
    again = [{"name": f"new{index:03}", "holder": "x", "expires_at": 1.0} for index in range(100)]
    with pytest.raises(IntegrityError), engine.begin() as conn:
        add_rows.run_many(conn, [*again, rows[0]])  # the known name in the second statement
    if engine.dialect.name == "postgresql":  # SQLite keeps any length
        with pytest.raises(DBAPIError, match="too long"), engine.begin() as conn:
            add_rows.run_many(conn, [*again, {"name": "long", "holder": "h" * 65, "expires_at": None}])
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(leases)).scalar_one() == 151


def test_driver_errors_are_sqlalchemys(engine: Any) -> None:
    add(engine, "n1")
    with pytest.raises(IntegrityError), engine.begin() as conn:
        ADD_PREPARED.run_many(conn, [{"name": "n1", "holder": "x", "at": 1.0}])
    broken = Prepared(text("SELECT no_such_column FROM hookgate_leases"))
    with pytest.raises(DBAPIError) as raised, engine.connect() as conn:
        broken.rows(conn, {})
    assert not raised.value.connection_invalidated


def test_a_dropped_connection_is_invalidated(engine: Any) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("a server that drops a connection: PostgreSQL only")
    add(engine, "n1")
    named = Prepared(NAMED)
    with engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(DBAPIError) as raised:
            named.rows(conn, {"names": ["n1"]})
        assert raised.value.connection_invalidated
    with engine.connect() as conn:  # the pool hands out a live connection again
        assert [row.name for row in named.rows(conn, {"names": ["n1"]})] == ["n1"]


def test_the_store_never_prepares_statements_on_the_postgresql_server(engine: Any) -> None:
    """psycopg prepares a statement on its fifth run by default; a store engine's sessions never
    do (gateway.database: generic plans skip the partial indexes, and PgBouncer in transaction
    mode loses statements prepared on another server connection)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's server-side prepared statements")
    add(engine, "n1")
    named = Prepared(NAMED)
    with engine.connect() as conn:
        for _ in range(8):
            assert [row.name for row in named.rows(conn, {"names": ["n1"]})] == ["n1"]
            conn.execute(select(leases.c.holder).where(leases.c.name == "n1")).all()
        prepared = conn.exec_driver_sql("SELECT statement FROM pg_prepared_statements").scalars().all()
    assert prepared == []
