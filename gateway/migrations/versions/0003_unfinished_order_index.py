"""A partial index on each resource's unfinished events in applied order ("waiting behind N").

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_UNFINISHED = sa.text("status IN ('received', 'queued', 'processing')")


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.create_index(
            "ix_hookgate_events_unfinished_order",
            "hookgate_events",
            ["provider", "resource_id", sa.text("sequence NULLS FIRST"), "id"],
            postgresql_where=_UNFINISHED,
        )
    elif op.get_context().dialect.name == "sqlite":
        op.create_index(
            "ix_hookgate_events_unfinished_order_sqlite",
            "hookgate_events",
            ["provider", "resource_id", "sequence", "id"],
            sqlite_where=_UNFINISHED,
        )
