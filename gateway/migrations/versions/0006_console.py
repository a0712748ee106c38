"""The operations console: attempts, refused requests, provider pauses, bulk replays, alerts.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05

Two columns on events with no rewrite of the table: ``next_trigger`` has a constant server
default (on PostgreSQL 11 and later only the catalogue changes), ``error_group`` is nullable.
The console's indexes on events are built here; on PostgreSQL ``CREATE INDEX`` holds off writes
to the table while it runs (seconds per million events): the intake answers ``503`` meanwhile,
which senders retry. Five new tables.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column("hookgate_events", sa.Column("next_trigger", sa.String(16), nullable=False, server_default="initial"))
    op.add_column("hookgate_events", sa.Column("error_group", sa.String(255), nullable=True))
    op.create_index("ix_hookgate_events_provider_id", "hookgate_events", ["provider", "id"])
    op.create_index("ix_hookgate_events_status_id", "hookgate_events", ["status", "id"])
    op.create_index("ix_hookgate_events_event_id", "hookgate_events", ["event_id"])
    op.create_index("ix_hookgate_events_resource_id", "hookgate_events", ["resource_id"])
    op.create_index("ix_hookgate_events_error_group", "hookgate_events", ["error_group", "status"])
    op.create_table(
        "hookgate_attempts",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("event_pk", _Id, sa.ForeignKey("hookgate_events.id", ondelete="CASCADE"), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("errors", sa.Text()),
        sa.Column("reconcile_status", sa.Integer()),
        sa.Column("reconcile_error", sa.Text()),
        sa.Column("worker", sa.String(255), nullable=False),
    )
    op.create_index("ix_hookgate_attempts_event", "hookgate_attempts", ["event_pk", "attempt"])
    op.create_index("ix_hookgate_attempts_outcome", "hookgate_attempts", ["outcome", "finished_at"])
    op.create_table(
        "hookgate_rejections",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("cause", sa.String(64), nullable=False),
        sa.Column("detail", sa.Text()),
        sa.Column("headers", sa.Text(), nullable=False),
        sa.Column("body_bytes", sa.BigInteger(), nullable=False),
        sa.Column("body_sha256", sa.String(64)),
        sa.Column("source", sa.String(255)),
    )
    op.create_index("ix_hookgate_rejections_provider", "hookgate_rejections", ["provider", "id"])
    op.create_table(
        "hookgate_provider_states",
        sa.Column("provider", sa.String(64), primary_key=True),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("changed_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "hookgate_replay_jobs",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("filters", sa.Text(), nullable=False),
        sa.Column("force", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("cursor", sa.BigInteger()),
        sa.Column("holder", sa.String(64)),
        sa.Column("lease_expires_at", sa.Float()),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("error", sa.Text()),
    )
    op.create_table(
        "hookgate_alert_states",
        sa.Column("rule", sa.String(255), primary_key=True),
        sa.Column("firing", sa.Boolean(), nullable=False),
        sa.Column("since", sa.Float()),
        sa.Column("last_sent_at", sa.Float()),
        sa.Column("value", sa.Float()),
    )
