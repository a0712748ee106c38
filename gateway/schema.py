"""The store's schema and its version: created at head, checked at start, upgraded by Alembic.

Every schema change since release 0.1 is an Alembic revision in :mod:`gateway.migrations`, and
the store records the one it is at in Alembic's ``alembic_version`` table. An empty store is
created at head directly (the tables as :mod:`gateway.models` declares them, then stamped):
what the revisions build from release 0.1 is the same schema, and a test compares the two on
both backends. A store made by release 0.1 has no version table; its revision is read from
its tables instead.

``serve`` and ``worker`` never upgrade a store: code that runs against a schema it does not
expect fails in ways a user cannot read, so they refuse one that is behind (or ahead, from a
newer release) and say what to run. ``hookgate migrate`` and ``hookgate run`` upgrade it.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Column, Connection, Engine, MetaData, PrimaryKeyConstraint, String, Table, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.schema import CreateTable
from sqlmodel import SQLModel

from . import models
from .errors import HookgateError

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

#: The newest revision this release knows; a test holds it equal to the migrations' head.
HEAD = "0007"
#: The revision of a store that release 0.1 created (it has no version table).
RELEASE_0_1 = "0001"

MIGRATIONS = Path(__file__).with_name("migrations")

#: Advisory lock key that serialises schema changes across processes on PostgreSQL.
SCHEMA_LOCK = 0x686F6F6B67617465  # "hookgate"

#: How long a migration on SQLite waits for other processes' write locks (another ``migrate``
#: may be rebuilding a large table).
SQLITE_MIGRATION_WAIT_MS = 600_000

#: Alembic's bookkeeping table, as Alembic itself creates it.
version_table = Table(
    "alembic_version",
    MetaData(),
    Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)

_EVENTS = models.events.name
_UNFINISHED_ORDER = {"ix_hookgate_events_unfinished_order", "ix_hookgate_events_unfinished_order_sqlite"}


class SchemaMismatch(HookgateError):
    """The store's schema is not the one this release runs on; the message says what to do."""


@dataclass(frozen=True)
class Migration:
    """What :func:`prepare_store` found and left: ``before`` is ``None`` for an empty store."""

    before: str | None
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after


def prepare_store(engine: Engine, *, upgrade: bool) -> Migration:
    """Make the store ready for this release, or say why it is not.

    An empty store is created at head. A store that is behind is upgraded when ``upgrade``,
    else refused. Several processes may call this at once: on PostgreSQL an advisory lock
    serialises them, on SQLite a write transaction; the second finds the work done.

    Raises:
        SchemaMismatch: the store is behind and ``upgrade`` is false, or it is at a revision
            this release does not know (a newer one migrated it).
    """
    found = _read_revision(engine)
    if found == HEAD:
        return Migration(HEAD, HEAD)
    if found is not None:
        _check_known(found, engine, upgrade=upgrade)
    with _schema_lock(engine) as conn:
        found = stored_revision(conn)  # another process may have done it meanwhile
        if found is None:
            SQLModel.metadata.create_all(conn, tables=list(models.TABLES))
            _stamp(conn, HEAD)
        elif found != HEAD:
            _check_known(found, engine, upgrade=upgrade)
            if not inspect(conn).has_table(version_table.name):
                _stamp(conn, found)
            _run_revisions(conn)
    return Migration(found, HEAD)


def _read_revision(engine: Engine) -> str | None:
    """:func:`stored_revision` read from one snapshot. Its reads are several statements; read one
    by one, they could straddle the commit of another process creating the store (no version
    table yet, then the events table there): a worker started beside ``serve`` on a new store
    took it for revision 0003 and exited. One snapshot sees the store before that commit (empty:
    the caller then waits for the schema lock) or after it (at head)."""
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN")  # deferred: one read snapshot from the first read on
        elif conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        try:
            return stored_revision(conn)
        finally:
            conn.rollback()


def stored_revision(conn: Connection) -> str | None:
    """The store's revision: from its version table, else read from the tables release 0.1 (or
    an unreleased build before migrations) left; ``None`` when it has no Hookgate tables."""
    inspector = inspect(conn)
    if inspector.has_table(version_table.name):
        versions = conn.execute(select(version_table.c.version_num)).scalars().all()
        if len(versions) == 1:
            return versions[0]
    if not inspector.has_table(_EVENTS):
        return None
    if "round" not in {column["name"] for column in inspector.get_columns(_EVENTS)}:
        return RELEASE_0_1
    if _UNFINISHED_ORDER & {index["name"] for index in inspector.get_indexes(_EVENTS)}:
        return "0003"
    return "0002"


def upgrade_sql(url: str, start: str | None = None) -> str:
    """The SQL that upgrades a store of ``url``'s kind from ``start`` (an empty database when
    ``None``) to head, with the version bookkeeping, for a DBA to review and apply; no database
    is touched, only the URL's dialect is used.

    Raises:
        SchemaMismatch: ``start`` is not a revision this release knows.
    """
    from alembic import command

    if start is not None and start not in _revisions():
        raise SchemaMismatch(f"unknown revision {start!r}; the revisions are {', '.join(_revisions())}")
    output = io.StringIO()
    config = _alembic_config(output)
    config.set_main_option("sqlalchemy.url", f"{make_url(url).drivername}://")
    if start is not None:
        # A release 0.1 store has no version table: create it holding ``start`` unless it exists.
        output.write(_stamp_if_unversioned_sql(url, start))
    command.upgrade(config, f"{start}:head" if start else "head", sql=True)
    return output.getvalue()


def _check_known(found: str, engine: Engine, *, upgrade: bool) -> None:
    where = make_url(str(engine.url)).render_as_string(hide_password=True)
    if found not in _revisions():
        raise SchemaMismatch(
            f"the store at {where} is at schema revision {found}, which this release does not know "
            f"(it knows up to {HEAD}): a newer Hookgate has upgraded it; run that release"
        )
    if not upgrade:
        release = " (release 0.1)" if found == RELEASE_0_1 else ""
        raise SchemaMismatch(
            f"the store at {where} is at schema revision {found}{release}, behind this release's {HEAD}: "
            "back it up and run `hookgate migrate`"
        )


@contextlib.contextmanager
def _schema_lock(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that no other process changing the schema can share."""
    with engine.connect() as conn:
        if conn.dialect.name != "sqlite":
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
                yield conn
            return
        # SQLite: foreign keys off while tables are rebuilt (a dropped parent table would delete
        # its children's rows), as SQLite's own ALTER TABLE procedure says; it cannot change
        # inside a transaction. The write lock is taken up front so that two processes cannot
        # both read "behind" and both upgrade.
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        conn.exec_driver_sql(f"PRAGMA busy_timeout={SQLITE_MIGRATION_WAIT_MS}")
        conn.commit()
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")
            conn.commit()
            conn.invalidate()  # its busy timeout is not the pool's: do not hand it out again


def _stamp(conn: Connection, revision: str) -> None:
    version_table.create(conn, checkfirst=True)
    conn.execute(version_table.delete())
    conn.execute(version_table.insert().values(version_num=revision))


def _stamp_if_unversioned_sql(url: str, revision: str) -> str:
    dialect = make_url(url).get_dialect()()
    create = str(CreateTable(version_table, if_not_exists=True).compile(dialect=dialect)).strip()
    insert = (
        f"INSERT INTO {version_table.name} (version_num) SELECT '{revision}' "  # noqa: S608  (a known revision id)
        f"WHERE NOT EXISTS (SELECT 1 FROM {version_table.name})"
    )
    return f"{create};\n\n{insert};\n\n"


def _run_revisions(conn: Connection) -> None:
    from alembic import command

    config = _alembic_config()
    config.attributes["connection"] = conn
    command.upgrade(config, "head")


def _alembic_config(output: io.StringIO | None = None) -> AlembicConfig:
    from alembic.config import Config

    # Alembic announces each of its plugins at INFO; its "Running upgrade" lines stay.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    config = Config(output_buffer=output)
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


@functools.cache
def _script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config())


def _revisions() -> list[str]:
    """Every revision this release knows, oldest first."""
    return [script.revision for script in reversed(list(_script().walk_revisions()))]
