"""The store's tables (SQLModel). Times are Unix seconds (float): unambiguous on every backend.

The events table is the record of all work: the broker only wakes workers up. ``message_id``
is the token of the one broker message currently allowed to run the event (a fence against
stale and duplicated messages); ``sweep_after`` is when the recovery sweep should next look at
an unfinished event (or when a retry is due).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlmodel import Field, SQLModel

#: Statuses, in the order an event moves through them.
RECEIVED, QUEUED, PROCESSING = "received", "queued", "processing"
PROCESSED, SUPERSEDED, FAILED = "processed", "superseded", "failed"
UNFINISHED = (RECEIVED, QUEUED, PROCESSING)
STATUSES = (RECEIVED, QUEUED, PROCESSING, PROCESSED, SUPERSEDED, FAILED)
#: A finished event past its retention whose id is kept to answer duplicates (see
#: :mod:`gateway.retention`): no body, no handler runs, invisible to the event log.
PRUNED = "pruned"

#: What made an attempt run: the first delivery, a retry after a failed try, a replay of one event
#: (CLI, API, page), a bulk replay job, a provider resumed after a pause, or the recovery sweep
#: re-sending an event whose message or worker was lost.
INITIAL, RETRY, REPLAY, BULK_REPLAY, RESUME, SWEEP = "initial", "retry", "replay", "bulk_replay", "resume", "sweep"
TRIGGERS = (INITIAL, RETRY, REPLAY, BULK_REPLAY, RESUME, SWEEP)
#: How an attempt ended. ``retry``: it failed and another try is scheduled; ``deferred``: the
#: worker's stop cut its handlers short, and the event is tried again, in no failure group (see
#: ``workers.tries``).
OUTCOMES = (PROCESSED, "retry", FAILED, SUPERSEDED, "deferred")

# SQLite only autoincrements an INTEGER PRIMARY KEY; elsewhere ids are 64-bit.
_Id = BigInteger().with_variant(Integer(), "sqlite")


class EventRecord(SQLModel, table=True):
    """One verified delivery, unique per (provider, event id)."""

    __tablename__ = "hookgate_events"
    __table_args__ = (
        UniqueConstraint("provider", "event_id", name="uq_hookgate_events_provider_event"),
        Index("ix_hookgate_events_sweep", "status", "sweep_after"),
        Index("ix_hookgate_events_received", "received_at"),
        Index("ix_hookgate_events_resource", "provider", "resource_id", "status"),
        # The console's filters, each newest first (keyset pagination on ``id``).
        Index("ix_hookgate_events_provider_id", "provider", "id"),
        Index("ix_hookgate_events_status_id", "status", "id"),
        Index("ix_hookgate_events_event_id", "event_id"),
        Index("ix_hookgate_events_resource_id", "resource_id"),
        # Only the events in a failure group: a status change of any other event costs it nothing.
        Index(
            "ix_hookgate_events_error_group",
            "error_group",
            "status",
            sqlite_where=text("error_group IS NOT NULL"),
            postgresql_where=text("error_group IS NOT NULL"),
        ),
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
    #: Tries so far, over the event's whole life: a replay never resets it.
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False, default=0))
    #: Forced replays so far. Handler successes are recorded per round: a forced replay starts a
    #: new one, so every handler runs again, and the earlier rounds stay in the history. (This
    #: and the next have only a server default: the intake's multi-row INSERT binds nothing for them.)
    round: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    #: ``attempts`` when the latest replay was made: each replay gets ``max_attempts`` tries.
    attempts_before_round: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    message_id: str | None = Field(default=None, max_length=64)
    sweep_after: float | None = None
    lease_expires_at: float | None = None
    updated_at: float
    processed_at: float | None = None
    #: The W3C trace context (``traceparent``, ``tracestate``) of the request that stored the
    #: event, so that its processing joins that trace whichever broker message runs it (see
    #: :mod:`gateway.tracing`); NULL when tracing is off.
    traceparent: str | None = Field(default=None, max_length=64)
    tracestate: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    #: What the event's next try is run for (see :data:`TRIGGERS`), written by whoever makes it
    #: due and copied into its attempt row; the intake binds nothing for it (server default).
    next_trigger: str = Field(default="initial", sa_column=Column(String(16), nullable=False, server_default="initial"))
    #: The failure group of an event whose latest try failed (``failed``, or ``queued`` for a
    #: retry): the exception type and the handler that raised it, not the message text, which
    #: varies (see the console's failure groups). NULL once the event settles.
    error_group: str | None = Field(default=None, max_length=255)


class HandlerRun(SQLModel, table=True):
    """A handler that has succeeded for an event in a round: it is not run again on a retry."""

    __tablename__ = "hookgate_handler_runs"

    event_pk: int = Field(sa_column=Column(_Id, ForeignKey("hookgate_events.id", ondelete="CASCADE"), primary_key=True))
    handler: str = Field(primary_key=True, max_length=255)
    round: int = Field(default=0, sa_column=Column(Integer, primary_key=True, default=0))
    finished_at: float


class ResourceRecord(SQLModel, table=True):
    """The source of truth for one provider resource: its reconciled state and applied sequence.

    ``applied_sequence`` only moves forward: an event older than it is ``superseded``. While a
    worker applies the resource's events it holds the row's lease (``lease_token`` until
    ``lease_expires_at``), taken by compare-and-set so that one resource's events are applied by
    one worker at a time on any number of hosts.
    """

    __tablename__ = "hookgate_resources"

    provider: str = Field(primary_key=True, max_length=64)
    resource_id: str = Field(primary_key=True, max_length=255)
    resource_type: str | None = Field(default=None, max_length=64)
    applied_sequence: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    applied_event_id: str | None = Field(default=None, max_length=255)
    state: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    fetched_at: float | None = None
    deleted: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, default=False))
    lease_token: str | None = Field(default=None, max_length=64)
    lease_expires_at: float | None = None
    updated_at: float


class LeaseRecord(SQLModel, table=True):
    """A named lease on work that one worker process at a time should do (pruning)."""

    __tablename__ = "hookgate_leases"

    name: str = Field(primary_key=True, max_length=64)
    holder: str | None = Field(default=None, max_length=64)
    expires_at: float | None = None


class AttemptRecord(SQLModel, table=True):
    """One try of an event, written in the transaction that records the try's outcome."""

    __tablename__ = "hookgate_attempts"
    __table_args__ = (
        Index("ix_hookgate_attempts_event", "event_pk", "attempt"),
        # Failed tries in a recent window, for the ``failures`` alerts (see :mod:`workers.alerts`).
        Index("ix_hookgate_attempts_outcome", "outcome", "finished_at"),
    )

    id: int | None = Field(default=None, sa_column=Column(_Id, primary_key=True, autoincrement=True))
    event_pk: int = Field(sa_column=Column(_Id, ForeignKey("hookgate_events.id", ondelete="CASCADE"), nullable=False))
    attempt: int
    round: int = Field(default=0)
    started_at: float
    finished_at: float
    outcome: str = Field(max_length=16)
    trigger: str = Field(max_length=16)
    #: JSON list of ``{"handler", "type", "message", "frame"}``, one per handler that raised.
    errors: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    #: The reconciliation's answer: the API's status code, or the error when there was none.
    reconcile_status: int | None = None
    reconcile_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    #: ``host:pid`` of the worker process that ran the try.
    worker: str = Field(max_length=255)


class RejectionRecord(SQLModel, table=True):
    """A refused request, kept in a bounded log per provider (see :mod:`gateway.rejections`):
    never the body, never a signature value."""

    __tablename__ = "hookgate_rejections"
    __table_args__ = (Index("ix_hookgate_rejections_provider", "provider", "id"),)

    id: int | None = Field(default=None, sa_column=Column(_Id, primary_key=True, autoincrement=True))
    at: float
    provider: str = Field(max_length=64)
    status: int
    cause: str = Field(max_length=64)
    detail: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    #: JSON object of the allowlisted request headers.
    headers: str = Field(sa_column=Column(Text, nullable=False))
    body_bytes: int = Field(sa_column=Column(BigInteger, nullable=False))
    body_sha256: str | None = Field(default=None, max_length=64)
    source: str | None = Field(default=None, max_length=255)


class ProviderStateRecord(SQLModel, table=True):
    """A provider's operational state, seen by every process: paused or active."""

    __tablename__ = "hookgate_provider_states"

    provider: str = Field(primary_key=True, max_length=64)
    paused: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, default=False))
    changed_at: float


class ReplayJobRecord(SQLModel, table=True):
    """A bulk replay over the store, run in batches by whoever holds its lease (see
    :mod:`gateway.replays`), resumable from ``after_id`` and cancellable."""

    __tablename__ = "hookgate_replay_jobs"

    id: int | None = Field(default=None, sa_column=Column(_Id, primary_key=True, autoincrement=True))
    #: JSON of the event filter the job replays.
    filters: str = Field(sa_column=Column(Text, nullable=False))
    force: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, default=False))
    status: str = Field(max_length=16)
    total: int = Field(default=0)
    done: int = Field(default=0)
    #: Events up to this store id (descending scans: down to it) have been looked at.
    cursor: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    holder: str | None = Field(default=None, max_length=64)
    lease_expires_at: float | None = None
    created_at: float
    updated_at: float
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class AlertStateRecord(SQLModel, table=True):
    """Whether an alert rule is firing and when it last sent, so that one message goes out per
    change whichever worker evaluates the rule."""

    __tablename__ = "hookgate_alert_states"

    rule: str = Field(primary_key=True, max_length=255)
    firing: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, default=False))
    since: float | None = None
    last_sent_at: float | None = None
    value: float | None = None


#: The tables, for SQLAlchemy Core queries on the hot paths.
events = SQLModel.metadata.tables[EventRecord.__tablename__]
handler_runs = SQLModel.metadata.tables[HandlerRun.__tablename__]
resources = SQLModel.metadata.tables[ResourceRecord.__tablename__]
leases = SQLModel.metadata.tables[LeaseRecord.__tablename__]
attempts = SQLModel.metadata.tables[AttemptRecord.__tablename__]
rejections = SQLModel.metadata.tables[RejectionRecord.__tablename__]
provider_states = SQLModel.metadata.tables[ProviderStateRecord.__tablename__]
replay_jobs = SQLModel.metadata.tables[ReplayJobRecord.__tablename__]
alert_states = SQLModel.metadata.tables[AlertStateRecord.__tablename__]
#: Hookgate's own tables: users' handler modules may declare theirs on the same metadata.
TABLES = (events, handler_runs, resources, leases, attempts, rejections, provider_states, replay_jobs, alert_states)

# The head of each resource's unfinished events in the order they are applied (sequence, an event
# without one first, then arrival): "waiting behind event N" is one probe of it, however long the
# resource's backlog. Partial, so finished events (nearly all of them) cost it nothing. SQLite
# sorts NULL first by itself and accepts no NULLS FIRST in an index; PostgreSQL needs it said.
_unfinished = events.c.status.in_(UNFINISHED)
Index(
    "ix_hookgate_events_unfinished_order",
    events.c.provider,
    events.c.resource_id,
    events.c.sequence.asc().nulls_first(),
    events.c.id,
    postgresql_where=_unfinished,
).ddl_if(dialect="postgresql")
Index(
    "ix_hookgate_events_unfinished_order_sqlite",
    events.c.provider,
    events.c.resource_id,
    events.c.sequence,
    events.c.id,
    sqlite_where=_unfinished,
).ddl_if(dialect="sqlite")
