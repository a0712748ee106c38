"""When the intake's committer waits a little for more rows before it writes a small batch.

At a steady few hundred deliveries a second, each would otherwise be a batch of its own: a
commit, a sync, a broker message and, on the workers' side, a message to fetch and acknowledge,
for every event. Waiting :data:`LINGER_SECONDS` for company, as PostgreSQL's ``commit_delay``
does, lets one commit and one message serve a few (bench/README.md, step 18). The committer
sleeps through the wait and then takes what came: woken for each row, it would take the GIL from
the event loop each time, which cost more than the batch saved.

A wait is only worth it when more rows are likely to come meanwhile:

* the committer is *busy*: the batch's first row came within ``busy_within`` of the end of the
  batch before (a lone request, or one after a pause, never waits);
* but not saturated: the batch before had fewer than half of :data:`gateway.queue.MESSAGE_EVENTS`
  rows. When the load forms large batches by itself, a wait only slows the answers down: under
  bench/intake.py's 64-connection closed loop, waits there cost 6-8% of the throughput;
* the batch is smaller than a full broker message;
* waiting has paid lately: a sender that sends its next request only after the answer to the
  last one (a replay script, a queue drained one by one) looks busy, yet no row ever comes
  while the committer waits for it. An average of how often a wait gained a row stops the waits
  when it falls below :data:`MIN_GAIN`; one busy batch in :data:`PROBE_EVERY` still waits, so
  the waits resume when the load changes.
"""

from __future__ import annotations

from .queue import MESSAGE_EVENTS

#: How long a busy committer waits for more rows before it writes a small batch.
LINGER_SECONDS = 0.002
#: The weight of the latest wait in the average of waits that gained a row.
GAIN_WEIGHT = 0.25
#: Below this share of waits that gained a row, the committer stops waiting (but probes).
MIN_GAIN = 0.25
#: While waits do not pay, one busy batch in this many still waits, to notice when they would.
PROBE_EVERY = 16


class Linger:
    """The committer's policy: how long to wait for more rows before writing a batch.

    ``rows``: a batch this large is written at once, without a wait; ``busy_within``: a row this
    soon after the last batch finds the committer busy (default: ``2 * seconds``). Used by the
    committer thread only, so it needs no lock.
    """

    def __init__(
        self, seconds: float = LINGER_SECONDS, *, rows: int = MESSAGE_EVENTS, busy_within: float | None = None
    ) -> None:
        self.seconds = seconds
        self.rows = rows
        self.busy_within = 2 * seconds if busy_within is None else busy_within
        #: The share of recent waits that gained at least one row (an exponential average).
        self.gain = 1.0
        #: Waits so far (for tests and the curious).
        self.waits = 0
        self._skipped = 0

    def wait_for(self, since_last: float, taken: int, *, last_batch: int = 0) -> float:
        """Seconds to wait for more rows, for a batch of ``taken`` rows whose first came
        ``since_last`` seconds after the end of the batch before, of ``last_batch`` rows (0: write
        it now)."""
        if self.seconds <= 0 or taken >= self.rows or last_batch >= self.rows // 2 or since_last >= self.busy_within:
            return 0.0
        if self.gain < MIN_GAIN:
            self._skipped += 1
            if self._skipped < PROBE_EVERY:
                return 0.0
        self._skipped = 0
        self.waits += 1
        return self.seconds

    def gained(self, rows: int) -> None:
        """A wait ended with ``rows`` more rows."""
        self.gain += GAIN_WEIGHT * ((1.0 if rows else 0.0) - self.gain)
