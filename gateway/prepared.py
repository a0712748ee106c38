"""Statements compiled once per database and run straight on the connection's DBAPI cursor.

A worker runs about a dozen statements for each resource pass. Through
``Connection.execute`` each one pays SQLAlchemy's execution path (cache key, compiled-cache
lookup, execution context, result metadata), measured at 35 to 40 µs a statement on these
machines against 10 to 25 µs for SQLite itself, and more under a busy GIL. A :class:`Prepared`
statement is compiled the first time a database runs it; later runs only fill in the
parameters (expanding ``IN`` lists included) and call the driver, in the caller's transaction.

What ``Connection.execute`` does that matters here is kept: the driver's errors are raised as
SQLAlchemy's (``OperationalError`` and the rest, which callers catch), and a connection the
database dropped is invalidated, so the pool does not hand it out again.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Insert, bindparam
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import Executable

#: The most parameters a statement may have for psycopg to keep it parsed: a multi-row INSERT of
#: :meth:`Prepared.run_many` takes at most as many rows as fit in it.
PSYCOPG_CACHED_PARAMETERS = 50


class Prepared:
    """One statement, compiled once per dialect; see the module's docstring."""

    def __init__(self, statement: Executable, *, column_keys: Sequence[str] | None = None) -> None:
        """``column_keys``: for an ``insert(table)``, the columns each row gives (as for an
        executemany through ``Connection.execute``)."""
        self.statement = statement
        self.column_keys = list(column_keys) if column_keys is not None else None
        self._compiled: dict[str, SQLCompiler] = {}
        self._row_types: dict[tuple[str, ...], Any] = {}
        #: By compiled statement and the lengths of the list parameters given.
        self._plans: dict[tuple[int, ...], _Plan] = {}
        #: This ``insert`` for so many rows at once (:meth:`run_many` on PostgreSQL).
        self._multi_row: dict[int, Prepared] = {}

    def rows(self, conn: Connection, params: dict[str, Any]) -> list[Any]:
        """The rows the statement returns, each with its columns as attributes."""
        cursor = self._run(conn, params)
        try:
            found = cursor.fetchall()
            return [self._row_type(cursor.description)._make(row) for row in found] if found else []
        finally:
            cursor.close()

    def first(self, conn: Connection, params: dict[str, Any]) -> Any | None:
        found = self.rows(conn, params)
        return found[0] if found else None

    def rowcount(self, conn: Connection, params: dict[str, Any]) -> int:
        """How many rows the statement changed."""
        cursor = self._run(conn, params)
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def run_many(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        """The statement once per parameter set, in one driver call (``executemany``); the
        statement must have no expanding parameter.

        On PostgreSQL an ``insert`` given ``column_keys`` writes its rows in multi-row statements
        instead, each of as many rows as psycopg keeps parsed (:data:`PSYCOPG_CACHED_PARAMETERS`
        values; past that it parses the statement again every time). Client CPU a call, in one
        transaction, for the rows of an attempt (11 columns): one row 83 µs against 103 through
        ``executemany``, which psycopg runs in pipeline mode; three rows 77 against 120; eight
        rows, in two statements, about as much as ``executemany`` (bench/README.md, step 20)."""
        if not rows:
            return
        keys = self.column_keys
        if keys and len(keys) <= PSYCOPG_CACHED_PARAMETERS and conn.dialect.name == "postgresql":
            at_once = PSYCOPG_CACHED_PARAMETERS // len(keys)
            for start in range(0, len(rows), at_once):
                chunk = rows[start : start + at_once]
                params = {f"{key}__{index}": row[key] for index, row in enumerate(chunk) for key in keys}
                self._at_once(len(chunk)).rowcount(conn, params)
            return
        compiled = self._for(conn.dialect)
        args = [self._args(compiled, row)[1] for row in rows]
        sql = compiled.string
        _call(conn, sql, args, lambda cursor: cursor.executemany(sql, args)).close()

    def _at_once(self, count: int) -> Prepared:
        """This ``insert`` of ``count`` rows in one statement, its parameters ``<column>__<row>``."""
        prepared = self._multi_row.get(count)
        if prepared is None:
            assert isinstance(self.statement, Insert)
            assert self.column_keys is not None
            table = self.statement.table
            rows = [
                {key: bindparam(f"{key}__{index}", type_=table.c[key].type) for key in self.column_keys}
                for index in range(count)
            ]
            prepared = self._multi_row[count] = Prepared(self.statement.values(rows))
        return prepared

    def _run(self, conn: Connection, params: dict[str, Any]) -> Any:
        sql, args = self._args(self._for(conn.dialect), params)
        return _call(conn, sql, args, lambda cursor: cursor.execute(sql, args))

    def _args(self, compiled: SQLCompiler, params: dict[str, Any]) -> tuple[str, Any]:
        """The SQL with its expanding lists filled in, and the driver's parameters for it."""
        shape = (id(compiled), *(len(v) for v in params.values() if isinstance(v, (list, tuple))))
        plan = self._plans.get(shape)
        if plan is None:
            plan = self._plans[shape] = _Plan.of(compiled, params)
        return plan.sql, plan.args(params)

    def _for(self, dialect: Dialect) -> SQLCompiler:
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            compiled = self.statement.compile(dialect=dialect, column_keys=self.column_keys)  # type: ignore[attr-defined]
            self._compiled[dialect.name] = compiled
        return compiled

    def _row_type(self, description: Any) -> Any:
        names = tuple(column[0] for column in description)
        row_type = self._row_types.get(names)
        if row_type is None:
            row_type = self._row_types[names] = namedtuple("Row", names)
        return row_type


def driver_rows(conn: Connection, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
    """The rows of ``sql``, a statement written for the driver (its paramstyle), run as a
    :class:`Prepared` statement is: on the connection's cursor, in its transaction, errors
    raised as SQLAlchemy's."""
    cursor = _call(conn, sql, args, lambda cursor: cursor.execute(sql, args))
    try:
        return cursor.fetchall()
    finally:
        cursor.close()


def _call(conn: Connection, sql: str, args: Any, call: Any) -> Any:
    dbapi_connection = conn.connection.dbapi_connection
    assert dbapi_connection is not None
    cursor = dbapi_connection.cursor()
    try:
        call(cursor)
    except conn.dialect.loaded_dbapi.Error as exc:
        cursor.close()
        raise _translated(conn, exc, sql, args, dbapi_connection) from exc
    return cursor


def _translated(conn: Connection, exc: Any, sql: str, args: Any, dbapi_connection: Any) -> BaseException:
    """The driver's error as SQLAlchemy raises it; a dropped connection is invalidated."""
    dropped = conn.dialect.is_disconnect(exc, dbapi_connection, None)
    if dropped:
        conn.invalidate(exc)
    return DBAPIError.instance(
        sql, args, exc, conn.dialect.loaded_dbapi.Error, connection_invalidated=dropped, dialect=conn.dialect
    )


#: Where a driver's parameter comes from: the caller's parameter (and the index in it, for a
#: list) or a constant, and the type's bind processor to apply, if any.
_Source = tuple[str | None, int | None, Any, Any]


class _Plan:
    """How to run a compiled statement for parameters of one shape (the same list lengths):
    its SQL with the lists expanded, and where each of the driver's parameters comes from.

    ``construct_expanded_state`` rebuilt both on every run, a tenth of a worker's time (py-spy);
    only the values change between runs of one shape.
    """

    def __init__(self, sql: str, sources: list[_Source], names: list[str] | None) -> None:
        self.sql = sql
        self.sources = sources
        #: The driver's parameter names, for named paramstyles (psycopg); ``None``: positional.
        self.names = names

    @classmethod
    def of(cls, compiled: SQLCompiler, params: dict[str, Any]) -> _Plan:
        state = compiled.construct_expanded_state(params)
        processors = state.processors
        expanded_from = {
            expanded: (original, index)
            for original, names in (state.parameter_expansion or {}).items()
            for index, expanded in enumerate(names)
        }
        names = list(state.positiontup or ()) if compiled.positional else list(state.parameters)
        sources: list[_Source] = []
        for name in names:
            original, index = expanded_from.get(name, (name, None))
            process = processors.get(name)
            if original in params:  # the caller's value (an item of it, for a list)
                sources.append((original, index, None, process))
            else:  # a literal of the statement
                literal = state.parameters[name]
                sources.append((None, None, literal if process is None else process(literal), None))
        return cls(state.statement, sources, None if compiled.positional else names)

    def args(self, params: dict[str, Any]) -> Any:
        values = []
        for name, index, constant, process in self.sources:
            value = constant if name is None else params[name] if index is None else params[name][index]
            values.append(value if process is None else process(value))
        return tuple(values) if self.names is None else dict(zip(self.names, values, strict=True))
