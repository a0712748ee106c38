"""Stores as earlier releases left them, and a comparable picture of a store's schema."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

RELEASE_0_1 = Path(__file__).with_name("release_0_1")


def drop_everything(engine: Engine) -> None:
    """An empty database again: every table (with its indexes and sequences) dropped."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
            return
        names = conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        for (name,) in names.all():
            conn.exec_driver_sql(f'DROP TABLE "{name}"')


def apply_sql(engine: Engine, script: str) -> None:
    """Run a script of ``;``-terminated statements (as psql or sqlite3 would)."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        if engine.dialect.name == "sqlite":
            cursor.executescript(script)
        else:
            cursor.execute(script)
        raw.commit()
    finally:
        raw.close()


def create_release_0_1(engine: Engine) -> None:
    """The tables release 0.1 created (dumped from its models), and no version table."""
    apply_sql(engine, (RELEASE_0_1 / f"{engine.dialect.name}.sql").read_text())


def snapshot(engine: Engine) -> dict[str, Any]:
    """What the database itself says about every table: columns (type, nullability, default),
    keys, foreign keys and indexes (with partial conditions), in a form two stores can be
    compared by, whatever order their columns were added in."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            return _postgresql(conn)
        return _sqlite(conn)


def _postgresql(conn: Any) -> dict[str, Any]:
    columns = conn.exec_driver_sql(
        "SELECT table_name, column_name, data_type, character_maximum_length, is_nullable, column_default "
        "FROM information_schema.columns WHERE table_schema = 'public'"
    ).all()
    indexes = conn.exec_driver_sql("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'").all()
    constraints = conn.exec_driver_sql(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE connamespace = 'public'::regnamespace"
    ).all()
    return {
        "columns": sorted(map(tuple, columns)),
        "indexes": sorted(map(tuple, indexes)),
        "constraints": sorted(map(tuple, constraints)),
    }


def _sqlite(conn: Any) -> dict[str, Any]:
    shape: dict[str, Any] = {}
    tables = conn.exec_driver_sql(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ).scalars()
    for table in sorted(tables):
        indexes = {}
        for row in conn.exec_driver_sql(f'PRAGMA index_list("{table}")').all():
            name, unique, origin, partial = row[1], row[2], row[3], row[4]
            keys = [(info[2], info[3]) for info in conn.exec_driver_sql(f'PRAGMA index_xinfo("{name}")') if info[5]]
            sql = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).scalar()
            where = _normalised(sql.split(" WHERE ", 1)[1]) if partial and sql else None
            # Autoindexes of UNIQUE/PRIMARY KEY constraints are numbered by position: key them by columns.
            indexes[name if origin == "c" else (origin, tuple(keys))] = (unique, origin, keys, where)
        shape[table] = {
            "columns": sorted(tuple(row[1:6]) for row in conn.exec_driver_sql(f'PRAGMA table_xinfo("{table}")')),
            "foreign_keys": sorted(
                tuple(row[2:]) for row in conn.exec_driver_sql(f'PRAGMA foreign_key_list("{table}")')
            ),
            "indexes": indexes,
        }
    return shape


def _normalised(sql: str) -> str:
    return re.sub(r"\s+", " ", sql.replace('"', "")).strip().lower()
