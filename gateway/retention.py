"""Retention: finished events are deleted after ``events_days``; their ids stay ``duplicate``
for ``dedupe_days``.

A provider may send an event again long after it was processed (Stripe retries for three days,
GitHub's redeliveries are allowed for three), so an id must be remembered for at least that
long, even when its body is no longer wanted. When ``dedupe_days`` outlasts ``events_days`` the
event row stays as a *tombstone*: status ``pruned``, body, headers, error and failure group
cleared, handler runs and attempts deleted. It is invisible to the event log, and its unique
key keeps answering duplicates at no cost to the intake, whose one INSERT already dedupes on
that key. Unfinished events are never touched.

Rows go in small batches, each its own short transaction whose size adapts to stay near
:attr:`Pruner.target_seconds`: SQLite has one writer, and the intake's commits wait behind a
prune's. The pages freed are reused by later inserts, so a SQLite file stops growing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, and_, delete, func, or_, select, true, update

from providers.base import Clock

from .config import Config, Retention
from .models import FAILED, PROCESSED, PRUNED, SUPERSEDED, attempts, events, handler_runs

log = logging.getLogger("hookgate.retention")

DAY = 86_400.0
FINISHED = (PROCESSED, SUPERSEDED, FAILED)


@dataclass
class PruneReport:
    """What one pass removed (or, dry, would remove)."""

    #: Events gone entirely.
    deleted: int = 0
    #: Events whose bodies went while their ids stay to answer duplicates.
    tombstoned: int = 0
    #: Ids forgotten: a re-sent event with one of them is accepted as new.
    forgotten: int = 0
    #: The longest single write transaction, in seconds.
    longest_write: float = 0.0
    batches: int = 0
    by_provider: dict[str, int] = field(default_factory=dict)

    @property
    def events(self) -> int:
        """Events gone from the event log."""
        return self.deleted + self.tombstoned

    def describe(self, *, dry_run: bool = False) -> str:
        verb = "would prune" if dry_run else "pruned"
        text = f"{verb} {self.events} events"
        details = [
            f"{self.tombstoned} kept as ids for dedupe" if self.tombstoned else "",
            f"{'would forget' if dry_run else 'forgot'} {self.forgotten} ids" if self.forgotten else "",
        ]
        if details := [d for d in details if d]:
            text += f" ({', '.join(details)})"
        if not dry_run and self.batches:
            text += f" in {self.batches} batches, the longest write {self.longest_write * 1000:.0f} ms"
        return text


@dataclass(frozen=True, slots=True)
class _Policy:
    """One retention applied to a set of providers (``None``: every provider not listed elsewhere)."""

    retention: Retention
    providers: tuple[str, ...] | None
    others: tuple[str, ...] = ()

    def owns(self) -> Any:
        if self.providers is not None:
            return events.c.provider.in_(self.providers)
        return events.c.provider.not_in(self.others) if self.others else true()


def policies(config: Config) -> list[_Policy]:
    """The top-level retention for every provider without its own, and one per distinct setting
    of those that have one (events of providers no longer configured get the top-level one)."""
    default, by_provider = config.retention, config.retention_by_provider
    grouped: dict[Retention, list[str]] = {}
    for name, retention in sorted(by_provider.items()):
        grouped.setdefault(retention, []).append(name)
    own = tuple(sorted(by_provider))
    return [_Policy(default, None, own)] + [_Policy(r, tuple(names)) for r, names in grouped.items()]


class Pruner:
    """Applies the retention policies to the store in batches."""

    #: Aim for write transactions this short; SQLite's single writer makes the intake wait.
    target_seconds = 0.015
    min_batch, max_batch = 10, 5_000

    def __init__(self, engine: Engine, config: Config, *, clock: Clock = time.time) -> None:
        self.engine = engine
        self.policies = policies(config)
        self.clock = clock
        self.batch = 100
        self.keep_going: Callable[[], bool] = lambda: True

    def run(self, *, dry_run: bool = False, keep_going: Callable[[], bool] = lambda: True) -> PruneReport:
        """One pass over every policy; no batch starts once ``keep_going()`` is false."""
        self.keep_going = keep_going
        report = PruneReport()
        now = self.clock()
        for policy in self.policies:
            doomed, expired = self._conditions(policy, now)
            if dry_run:
                deleted = self._count(and_(doomed, events.c.status.in_(FINISHED)))
                report.deleted += deleted
                report.forgotten += self._count(and_(doomed, events.c.status == PRUNED))
                report.tombstoned += self._count(expired) - deleted  # the deleted ones are expired too
                continue
            self._in_batches(doomed, report)
            self._in_batches(expired, report, tombstone=True)
        return report

    def _conditions(self, policy: _Policy, now: float) -> tuple[Any, Any]:
        """Rows to delete (finished ones past both limits, tombstones past ``dedupe_days``), and
        finished rows to turn into tombstones."""
        retention = policy.retention
        keep_ids_until = now - max(retention.events_days, retention.dedupe_days) * DAY
        forgotten = and_(events.c.status == PRUNED, events.c.received_at < now - retention.dedupe_days * DAY)
        doomed = and_(
            policy.owns(),
            or_(and_(events.c.status.in_(FINISHED), events.c.received_at < keep_ids_until), forgotten),
        )
        expired = and_(
            policy.owns(),
            events.c.status.in_(FINISHED),
            events.c.received_at < now - retention.events_days * DAY,
        )
        return doomed, expired

    def _count(self, condition: Any) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(events).where(condition)).scalar_one())

    def _in_batches(self, condition: Any, report: PruneReport, *, tombstone: bool = False) -> None:
        while self.keep_going():
            with self.engine.connect() as conn:  # the candidates are read outside the write
                rows = conn.execute(
                    select(events.c.id, events.c.provider, events.c.status).where(condition).limit(self.batch)
                ).all()
            if not rows:
                return
            ids = [row.id for row in rows]
            started = time.perf_counter()
            with self.engine.begin() as conn:
                # The condition again, in the statement that locks the rows: an event replayed
                # since it was read is no longer finished, and keeps its handler runs.
                chosen = and_(events.c.id.in_(ids), condition)
                if tombstone:
                    done = conn.execute(
                        update(events)
                        .where(chosen)
                        .values(
                            status=PRUNED, body=b"", headers="{}", last_error=None, message_id=None, error_group=None
                        )
                        .returning(events.c.id)
                    ).all()
                else:  # the handler runs and attempts go with their event (ON DELETE CASCADE), but say so
                    done = conn.execute(delete(events).where(chosen).returning(events.c.id, events.c.status)).all()
                if done:
                    gone = [row.id for row in done]
                    conn.execute(delete(handler_runs).where(handler_runs.c.event_pk.in_(gone)))
                    conn.execute(delete(attempts).where(attempts.c.event_pk.in_(gone)))
            elapsed = time.perf_counter() - started
            self._record(report, rows, done, tombstone=tombstone)
            report.longest_write = max(report.longest_write, elapsed)
            report.batches += 1
            self._resize(elapsed)

    @staticmethod
    def _record(report: PruneReport, rows: Sequence[Any], done: Sequence[Any], *, tombstone: bool) -> None:
        providers = {row.id: row.provider for row in rows}
        for row in done:
            if tombstone:
                report.tombstoned += 1
            elif row.status == PRUNED:
                report.forgotten += 1
                continue
            else:
                report.deleted += 1
            provider = providers[row.id]
            report.by_provider[provider] = report.by_provider.get(provider, 0) + 1

    def _resize(self, elapsed: float) -> None:
        """Halve the batch after a write that held the lock too long; grow it after a quick one."""
        if elapsed > 2 * self.target_seconds:
            self.batch = max(self.min_batch, self.batch // 2)
        elif elapsed < self.target_seconds / 2:
            self.batch = min(self.max_batch, int(self.batch * 1.5))
