"""Bulk replays: every event an :class:`~gateway.eventlog.EventFilter` matches, queued again by a
job over the store rather than by one transaction over a million rows.

A job is a row of ``hookgate_replay_jobs``. :func:`start` counts what it will replay and records
the filter; :func:`run` then walks the matching events by store id, newest first, a batch at a
time. Each batch is one short transaction that checks the job (still ``running``, still this
runner's), queues the batch's events as :func:`gateway.eventlog.replay` would, and moves the job's
``cursor`` and ``done`` on: a job that stops anywhere (cancelled, its process killed) has queued
whole batches only, and whoever runs it next starts after the last one.

Whoever runs a job holds its lease (``holder`` until ``lease_expires_at``, by the store's clock),
taken by compare-and-set and renewed by every batch: ``hookgate events replay`` runs the job it
starts in the foreground, and the workers' periodic loop (:mod:`workers.replaying`) adopts a
running job that nobody holds, such as one the admin API created or one whose runner died.

``total`` is the number of events the job was to replay when it started, and the job covers the
events stored up to then only: its cursor starts above the newest store id of that moment, and
an event changed since (its ``updated_at`` is later) is left alone, so an event that arrives or
fails later is not part of it. ``done`` is the number of events it has queued, never more than
``total``. The two differ at the end only when events changed while the job ran: one that was
replayed, processed or pruned meanwhile is skipped, as :func:`~gateway.eventlog.replay` skips an
event that changed under it. (``updated_at`` is written by the clock of the process that changed
the event: between hosts whose clocks differ by more than the time between that change and the
job's start, an event may be left out.)
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Connection, Engine, and_, func, insert, or_, select, update

from .eventlog import EventFilter, replay_values
from .models import BULK_REPLAY, FAILED, PROCESSED, SUPERSEDED, events, replay_jobs

RUNNING, DONE, CANCELLED = "running", "done", "cancelled"
#: Events per batch: each batch is one transaction of this many single-row updates at most.
BATCH_SIZE = 500
#: How long a runner's lease lasts without a batch renewing it: how soon the workers adopt a job
#: whose runner died.
LEASE_SECONDS = 30.0

Progress = Callable[[int, int], None]


def runner_name() -> str:
    """``host:pid``, the lease holder this process writes: an operator can tell who runs a job."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}"


def replayable(force: bool) -> ColumnElement[bool]:
    """The statuses a replay queues: ``failed``; with ``force`` also ``processed`` and
    ``superseded``. Never an unfinished event: it will be processed anyway."""
    return events.c.status.in_((FAILED, PROCESSED, SUPERSEDED) if force else (FAILED,))


def _matching(where: EventFilter, force: bool) -> list[ColumnElement[bool]]:
    return [*where.conditions(), replayable(force)]


def count(engine: Engine, where: EventFilter, *, force: bool) -> int:
    """How many events a bulk replay of ``where`` would queue now (a dry run)."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(*_matching(where, force))).scalar_one())


def start(engine: Engine, where: EventFilter, *, force: bool) -> tuple[int, int]:
    """Record a job replaying ``where`` and return its id and the number of events it will queue.

    Nothing is queued here: :func:`run` does it, in the foreground or in a worker. A job with
    nothing to replay is ``done`` at once.

    Raises:
        FilterError: ``where`` is unusable.
    """
    now = time.time()
    with engine.begin() as conn:
        newest = conn.execute(select(func.max(events.c.id))).scalar_one() or 0
        counted = [*_matching(where, force), events.c.id <= newest, events.c.updated_at <= now]
        total = int(conn.execute(select(func.count()).where(*counted)).scalar_one())
        job_id = conn.execute(
            insert(replay_jobs)
            .values(
                filters=orjson.dumps(where.to_params()).decode(),
                force=force,
                status=RUNNING if total else DONE,
                total=total,
                done=0,
                cursor=newest + 1,
                created_at=now,
                updated_at=now,
            )
            .returning(replay_jobs.c.id)
        ).scalar_one()
    return int(job_id), total


def status(engine: Engine, job_id: int) -> dict[str, Any] | None:
    """A job's state for the API and the CLI, or ``None`` if there is no such job."""
    with engine.connect() as conn:
        row = conn.execute(select(replay_jobs).where(replay_jobs.c.id == job_id)).first()
    if row is None:
        return None
    return {
        "id": row.id,
        "status": row.status,
        "done": row.done,
        "total": row.total,
        "force": bool(row.force),
        "filters": orjson.loads(row.filters),
    }


def cancel(engine: Engine, job_id: int) -> bool:
    """Stop a running job after its current batch; ``False`` if it was not running. What it has
    queued stays queued."""
    with engine.begin() as conn:
        changed = conn.execute(
            update(replay_jobs)
            .where(replay_jobs.c.id == job_id, replay_jobs.c.status == RUNNING)
            .values(status=CANCELLED, holder=None, lease_expires_at=None, updated_at=time.time())
        ).rowcount
    return bool(changed)


def _free(store_now: ColumnElement[float], holder: str) -> ColumnElement[bool]:
    """The job's lease is free for ``holder``: nobody's, already its own, or expired."""
    return or_(
        replay_jobs.c.holder.is_(None), replay_jobs.c.holder == holder, replay_jobs.c.lease_expires_at <= store_now
    )


def adoptable(engine: Engine) -> list[int]:
    """Running jobs that nobody holds a live lease on, oldest first."""
    # The store's clock, as every lease uses it. Imported here: only the CLI and the workers run
    # jobs, and the intake (which only creates, reads and cancels them) never loads the workers.
    from workers.leases import store_time

    query = (
        select(replay_jobs.c.id)
        .where(
            replay_jobs.c.status == RUNNING,
            or_(replay_jobs.c.holder.is_(None), replay_jobs.c.lease_expires_at <= store_time()),
        )
        .order_by(replay_jobs.c.id)
    )
    with engine.connect() as conn:
        return list(conn.scalars(query))


def _take(engine: Engine, job_id: int, holder: str, lease_seconds: float) -> bool:
    from workers.leases import store_time

    with engine.begin() as conn:
        return bool(
            conn.execute(
                update(replay_jobs)
                .where(replay_jobs.c.id == job_id, replay_jobs.c.status == RUNNING, _free(store_time(), holder))
                .values(holder=holder, lease_expires_at=store_time() + lease_seconds)
            ).rowcount
        )


def _release(engine: Engine, job_id: int, holder: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(replay_jobs)
            .where(replay_jobs.c.id == job_id, replay_jobs.c.holder == holder)
            .values(holder=None, lease_expires_at=None)
        )


def _batch(conn: Connection, job_id: int, holder: str, batch_size: int, lease_seconds: float) -> str | None:
    """Queue the next batch of the job's events and say whether the job is still ``running`` or
    now ``done`` (no event was left); ``None`` when it may not go on: it was cancelled, or
    another runner took it over."""
    from workers.leases import store_time

    now = time.time()
    mine = and_(replay_jobs.c.id == job_id, replay_jobs.c.status == RUNNING, replay_jobs.c.holder == holder)
    # The job row first: it fences the batch (a cancel committed before this point stops it) and,
    # locked from here to the commit, a cancel waits for the batch instead of racing it.
    renewed = conn.execute(
        update(replay_jobs).where(mine).values(lease_expires_at=store_time() + lease_seconds, updated_at=now)
    ).rowcount
    if not renewed:
        return None
    job = conn.execute(select(replay_jobs).where(replay_jobs.c.id == job_id)).one()
    # Only events as they were when the job started: one that failed since is not part of it.
    matching = [
        *_matching(EventFilter.from_params(orjson.loads(job.filters)), job.force),
        events.c.updated_at <= job.created_at,
    ]
    ids = list(
        conn.scalars(
            select(events.c.id)
            .where(*matching, events.c.id < job.cursor)
            .order_by(events.c.id.desc())
            .limit(batch_size)
        )
    )
    if not ids:
        conn.execute(update(replay_jobs).where(mine).values(status=DONE, holder=None, lease_expires_at=None))
        return DONE
    # The same terms again: an event that changed since it was read is left alone.
    queued = conn.execute(
        update(events)
        .where(events.c.id.in_(ids), *matching)
        .values(**replay_values(now, force=job.force, trigger=BULK_REPLAY))
    ).rowcount
    conn.execute(update(replay_jobs).where(mine).values(cursor=min(ids), done=replay_jobs.c.done + queued))
    return RUNNING


def run(
    engine: Engine,
    job_id: int,
    *,
    progress: Progress | None = None,
    keep_going: Callable[[], bool] = lambda: True,
    holder: str | None = None,
    batch_size: int = BATCH_SIZE,
    lease_seconds: float = LEASE_SECONDS,
) -> str | None:
    """Run a job under its lease until it is done or cancelled, or until ``keep_going()`` says
    stop (checked between batches; the lease is then given back for another runner).

    ``progress(done, total)`` is called after each batch, the last one (which finds nothing
    left) included. Returns the job's status at the end
    (``running`` if it stopped early), or ``None`` when another live runner holds it or it is
    not running.
    """
    holder = holder or runner_name()
    if not _take(engine, job_id, holder, lease_seconds):
        return None
    try:
        while keep_going():
            with engine.begin() as conn:
                after = _batch(conn, job_id, holder, batch_size, lease_seconds)
            if after is None:
                break
            if progress is not None:
                state = status(engine, job_id)
                assert state is not None
                progress(state["done"], state["total"])
            if after == DONE:
                break
    finally:
        _release(engine, job_id, holder)
    final = status(engine, job_id)
    return None if final is None else str(final["status"])
