"""The trace context of the request that stored each event (traces, see gateway.tracing).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24

Two nullable columns without a default: on PostgreSQL adding them changes only the catalogue,
whatever the table's size; rows stored before (and while tracing is off) keep NULL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("hookgate_events", sa.Column("traceparent", sa.String(64), nullable=True))
    op.add_column("hookgate_events", sa.Column("tracestate", sa.Text(), nullable=True))
