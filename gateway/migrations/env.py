"""Alembic's environment: how a revision reaches the database.

:mod:`gateway.schema` hands in an open connection (already in a transaction that holds the
schema lock) as ``config.attributes["connection"]``, or asks for SQL text only (offline). Run
from the ``alembic`` command line (``alembic revision --autogenerate`` while developing), it
connects to ``HOOKGATE_DATABASE_URL``.
"""

from __future__ import annotations

import os
from typing import Any

from alembic import context
from sqlmodel import SQLModel

from gateway import models  # noqa: F401  (registers the tables on SQLModel.metadata)
from gateway.database import create_store_engine

config = context.config


def _for_this_dialect(obj: Any, _name: Any, _type: Any, _reflected: Any, _compare_to: Any) -> bool:
    """Leave out, when comparing models with a database, what only another dialect creates
    (the models' ``ddl_if(dialect=...)`` indexes)."""
    condition = getattr(obj, "_ddl_if", None)
    return condition is None or condition.dialect in (None, context.get_context().dialect.name)


def _run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=SQLModel.metadata,
        literal_binds=True,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:  # the alembic command line, for developers
        engine = create_store_engine(os.environ.get("HOOKGATE_DATABASE_URL", "sqlite:///./hookgate.db"))
        with engine.begin() as conn:
            context.configure(connection=conn, target_metadata=SQLModel.metadata, include_object=_for_this_dialect)
            context.run_migrations()
        engine.dispose()
        return
    context.configure(connection=connection, target_metadata=SQLModel.metadata, include_object=_for_this_dialect)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    _run_offline()
else:
    _run_online()
