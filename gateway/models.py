"""The store's tables (SQLModel). Times are Unix seconds (float): unambiguous on every backend.

The events table is the record of all work: the broker only wakes workers up. ``message_id``
is the token of the one broker message currently allowed to run the event (a fence against
stale and duplicated messages); ``sweep_after`` is when the recovery sweep should next look at
an unfinished event (or when a retry is due).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, ForeignKey, Index, Integer, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

#: Statuses, in the order an event moves through them.
RECEIVED, QUEUED, PROCESSING = "received", "queued", "processing"
PROCESSED, SUPERSEDED, FAILED = "processed", "superseded", "failed"
UNFINISHED = (RECEIVED, QUEUED, PROCESSING)
STATUSES = (RECEIVED, QUEUED, PROCESSING, PROCESSED, SUPERSEDED, FAILED)

# SQLite only autoincrements an INTEGER PRIMARY KEY; elsewhere ids are 64-bit.
_Id = BigInteger().with_variant(Integer(), "sqlite")


class EventRecord(SQLModel, table=True):
    """One verified delivery, unique per (provider, event id)."""

    __tablename__ = "hookgate_events"
    __table_args__ = (
        UniqueConstraint("provider", "event_id", name="uq_hookgate_events_provider_event"),
        Index("ix_hookgate_events_sweep", "status", "sweep_after"),
        Index("ix_hookgate_events_received", "received_at"),
    )

    id: int | None = Field(default=None, sa_column=Column(_Id, primary_key=True, autoincrement=True))
    provider: str = Field(max_length=64)
    event_id: str = Field(max_length=255)
    event_type: str = Field(max_length=255)
    resource_id: str | None = Field(default=None, max_length=255)
    sequence: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    body: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    headers: str = Field(sa_column=Column(Text, nullable=False))
    received_at: float
    status: str = Field(max_length=16)
    attempts: int = 0
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    message_id: str | None = Field(default=None, max_length=64)
    sweep_after: float | None = None
    lease_expires_at: float | None = None
    updated_at: float
    processed_at: float | None = None


class HandlerRun(SQLModel, table=True):
    """A handler that has succeeded for an event: it is not run again on a retry."""

    __tablename__ = "hookgate_handler_runs"

    event_pk: int = Field(sa_column=Column(_Id, ForeignKey("hookgate_events.id", ondelete="CASCADE"), primary_key=True))
    handler: str = Field(primary_key=True, max_length=255)
    finished_at: float


#: The tables, for SQLAlchemy Core queries on the hot paths.
events = SQLModel.metadata.tables[EventRecord.__tablename__]
handler_runs = SQLModel.metadata.tables[HandlerRun.__tablename__]
