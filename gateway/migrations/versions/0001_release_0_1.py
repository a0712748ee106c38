"""Release 0.1: the schema every store created before migrations has (main at 3f875de).

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# SQLite only autoincrements an INTEGER PRIMARY KEY; elsewhere ids are 64-bit.
_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "hookgate_events",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("event_type", sa.String(255), nullable=False),
        sa.Column("resource_id", sa.String(255)),
        sa.Column("sequence", sa.BigInteger()),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("headers", sa.Text(), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text()),
        sa.Column("message_id", sa.String(64)),
        sa.Column("sweep_after", sa.Float()),
        sa.Column("lease_expires_at", sa.Float()),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("processed_at", sa.Float()),
        sa.UniqueConstraint("provider", "event_id", name="uq_hookgate_events_provider_event"),
    )
    op.create_index("ix_hookgate_events_received", "hookgate_events", ["received_at"])
    op.create_index("ix_hookgate_events_sweep", "hookgate_events", ["status", "sweep_after"])
    op.create_index("ix_hookgate_events_resource", "hookgate_events", ["provider", "resource_id", "status"])
    op.create_table(
        "hookgate_resources",
        sa.Column("provider", sa.String(64), primary_key=True),
        sa.Column("resource_id", sa.String(255), primary_key=True),
        sa.Column("resource_type", sa.String(64)),
        sa.Column("applied_sequence", sa.BigInteger()),
        sa.Column("applied_event_id", sa.String(255)),
        sa.Column("state", sa.Text()),
        sa.Column("fetched_at", sa.Float()),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("lease_token", sa.String(64)),
        sa.Column("lease_expires_at", sa.Float()),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "hookgate_handler_runs",
        sa.Column("event_pk", _Id, sa.ForeignKey("hookgate_events.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("handler", sa.String(255), primary_key=True),
        sa.Column("finished_at", sa.Float(), nullable=False),
    )
