"""The backlog gauges: unfinished events, and the age of the oldest, read from the store.

They describe the store, not a process, so the exporter of a worker group computes them when it
is scraped (see :mod:`gateway.metrics_export`), at most once per :attr:`BacklogCollector.max_age`
however many scrapers ask. The query reads only unfinished events, through their indexes
(``ix_hookgate_events_sweep`` on (status, sweep_after), or the partial index of unfinished
events): its cost grows with the backlog, never with the finished events of a big table.
Counting in the same query also keeps the planner off a walk of the received-time index in
search of the oldest unfinished row, which on a table of finished events reads most of it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, bindparam, func, select

from .models import UNFINISHED, events

log = logging.getLogger("hookgate.metrics")


@dataclass(frozen=True, slots=True)
class ProviderBacklog:
    """One provider's unfinished events, and when the oldest of them was received."""

    provider: str
    unfinished: int
    oldest_received_at: float


#: Per provider with unfinished events: how many, and the oldest one's receipt time. On SQLite
#: through the partial index of unfinished events, named: its planner, whose statistics know only
#: that ``status`` has few values, otherwise scans a whole index of every event for the grouping.
#: The statuses are written into the SQL, not bound: a partial index serves only a query whose
#: terms match its WHERE to the letter.
BACKLOG_QUERY = (
    select(events.c.provider, func.count(), func.min(events.c.received_at))
    .with_hint(events, "INDEXED BY ix_hookgate_events_unfinished_order_sqlite", dialect_name="sqlite")
    .where(
        events.c.status.in_(bindparam("unfinished_statuses", list(UNFINISHED), expanding=True, literal_execute=True))
    )
    .group_by(events.c.provider)
)


def read_backlog(engine: Engine) -> list[ProviderBacklog]:
    """Per provider with unfinished events: how many, and the oldest one's receipt time."""
    with engine.connect() as conn:
        return [ProviderBacklog(provider, count, oldest) for provider, count, oldest in conn.execute(BACKLOG_QUERY)]


class BacklogCollector(Collector):
    """``hookgate_backlog_events`` and ``hookgate_backlog_oldest_age_seconds`` by provider.

    Every configured provider has both series, 0 when it has nothing waiting, so that an alert on
    them sees the backlog drain rather than the series vanish. When the store does not answer,
    the scrape goes on without them (and the failure is logged).

    Args:
        engine: the store; the collector's own (a scrape never takes a connection another part
            of the process waits for).
        providers: the names in providers.yaml.
        max_age: seconds a result is served again before the store is asked anew.
    """

    def __init__(self, engine: Engine, providers: Iterable[str], *, max_age: float = 5.0) -> None:
        self.engine = engine
        self.providers = tuple(providers)
        self.max_age = max_age
        self._lock = threading.Lock()
        self._read: tuple[float, list[ProviderBacklog]] | None = None

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # names are not checked for clashes: nothing else in Hookgate defines them

    def collect(self) -> Iterator[GaugeMetricFamily]:
        found = self._current()
        if found is None:
            return
        size = GaugeMetricFamily(
            "hookgate_backlog_events", "Unfinished events (received, queued or processing).", labels=["provider"]
        )
        age = GaugeMetricFamily(
            "hookgate_backlog_oldest_age_seconds",
            "Age of the oldest unfinished event (0 when there is none).",
            labels=["provider"],
        )
        now = time.time()
        by_provider = {row.provider: row for row in found}
        for provider in sorted(set(self.providers) | set(by_provider)):
            row = by_provider.get(provider)
            size.add_metric([provider], row.unfinished if row else 0)
            age.add_metric([provider], max(0.0, now - row.oldest_received_at) if row else 0.0)
        yield size
        yield age

    def _current(self) -> list[ProviderBacklog] | None:
        with self._lock:  # concurrent scrapes wait for one query instead of each running theirs
            if self._read is not None and time.monotonic() - self._read[0] < self.max_age:
                return self._read[1]
            try:
                found = read_backlog(self.engine)
            except Exception as exc:
                log.warning("the backlog could not be read from the store: %s", type(exc).__name__)
                return None
            self._read = (time.monotonic(), found)
            return found

    def close(self) -> None:
        self.engine.dispose()
