"""Forced replays run every handler again: events count rounds, handler runs are per round.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24

The handler runs' primary key gains ``round``. SQLite cannot change a primary key in place, so
there the table is rebuilt (written out step by step rather than with a batch operation, so that
``hookgate migrate --sql`` can print it without a database to reflect).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column("hookgate_events", sa.Column("round", sa.Integer(), nullable=False, server_default="0"))
    op.add_column(
        "hookgate_events", sa.Column("attempts_before_round", sa.Integer(), nullable=False, server_default="0")
    )
    if op.get_context().dialect.name == "sqlite":
        _rebuild_handler_runs_sqlite()
        return
    op.add_column("hookgate_handler_runs", sa.Column("round", sa.Integer(), nullable=False, server_default="0"))
    op.alter_column("hookgate_handler_runs", "round", server_default=None)
    op.drop_constraint("hookgate_handler_runs_pkey", "hookgate_handler_runs", type_="primary")
    op.create_primary_key("hookgate_handler_runs_pkey", "hookgate_handler_runs", ["event_pk", "handler", "round"])


def _rebuild_handler_runs_sqlite() -> None:
    op.create_table(
        "_hookgate_handler_runs_new",
        sa.Column("event_pk", _Id, sa.ForeignKey("hookgate_events.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("handler", sa.String(255), primary_key=True),
        sa.Column("round", sa.Integer(), primary_key=True),
        sa.Column("finished_at", sa.Float(), nullable=False),
    )
    op.execute(
        "INSERT INTO _hookgate_handler_runs_new (event_pk, handler, round, finished_at) "
        "SELECT event_pk, handler, 0, finished_at FROM hookgate_handler_runs"
    )
    op.drop_table("hookgate_handler_runs")
    op.rename_table("_hookgate_handler_runs_new", "hookgate_handler_runs")
