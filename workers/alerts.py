"""Alerts: the ``alerts:`` rules of providers.yaml, evaluated by the workers.

Every ``alert_interval_seconds`` one worker process, holding the store's ``alerts`` lease,
measures each rule and compares it with its threshold (the rule's ``when:`` in the file, read by
:mod:`gateway.config` into an :class:`~gateway.config.AlertRule`):

* ``failures``: failed tries (attempts that ended ``retry`` or ``failed``) that finished within
  the last ``window_seconds`` (``within_minutes``);
* ``backlog``: the age in seconds of the oldest unfinished event (``backlog_age_seconds``);
* ``rejections``: requests refused for a signature mismatch within the last ``window_seconds``
  (a provider that rotated its secret before Hookgate was given the new one).

A rule fires when its value reaches the threshold, and resolves when the value falls below it
again. Each change sends one message, to a generic webhook (a JSON object) or a Slack incoming
webhook (``{"text": …}``). Whether a rule is firing is kept in ``hookgate_alert_states``, read and
written under the lease, so one message goes out per change whatever the number of workers. A
message that cannot be sent is logged and sent at the next evaluation; the state changes only
once it was sent. After a firing message, the rule sends no other firing message for
``cooldown_seconds`` (``cooldown_minutes``): a condition that flaps sends a resolved message,
then stays quiet.

Alert URLs may hold a secret (a Slack webhook's path is one): the log shows only the scheme and
host.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Connection, Engine, func, select, update

from gateway.backlog import BACKLOG_QUERY
from gateway.config import AlertRule
from gateway.models import FAILED, alert_states, attempts, events, rejections
from gateway.periodic import Periodic
from gateway.queue import new_token
from providers.base import Clock

from .leases import insert_ignoring_conflict, release_named_lease, take_named_lease

log = logging.getLogger("hookgate.alerts")

LEASE_NAME = "alerts"
#: Longer than an evaluation can take (each message has :data:`SEND_TIMEOUT_SECONDS`).
LEASE_SECONDS = 120.0
SEND_TIMEOUT_SECONDS = 5.0
#: Attempt outcomes that are failed tries.
FAILED_OUTCOMES = ("retry", FAILED)
#: The rejection cause of a signature that matches none of the provider's secrets.
SIGNATURE_MISMATCH = "signature_mismatch"

Sender = Callable[[str, dict[str, Any]], None]


def shown_url(url: str) -> str:
    """The URL as logs may show it: scheme and host only, since the rest may be a secret."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}/…"


def failed_tries(conn: Connection, provider: str | None, since: float) -> int:
    """Tries that failed (``retry`` or ``failed``) and finished at or after ``since``."""
    query = (
        select(func.count())
        .select_from(attempts)
        .where(attempts.c.outcome.in_(FAILED_OUTCOMES), attempts.c.finished_at >= since)
    )
    if provider is not None:
        query = query.join(events, events.c.id == attempts.c.event_pk).where(events.c.provider == provider)
    return int(conn.execute(query).scalar_one())


def oldest_unfinished_age(conn: Connection, provider: str | None, now: float) -> float:
    """Seconds since the oldest unfinished event was received; 0 when there is none. Read with the
    backlog gauges' query, which reads only unfinished events (see :mod:`gateway.backlog`)."""
    oldest = [received for name, _, received in conn.execute(BACKLOG_QUERY) if provider in (None, name)]
    return max(0.0, now - min(oldest)) if oldest else 0.0


def signature_rejections(conn: Connection, provider: str | None, since: float) -> int:
    """Requests refused for a signature mismatch at or after ``since``."""
    query = select(func.count()).where(rejections.c.cause == SIGNATURE_MISMATCH, rejections.c.at >= since)
    if provider is not None:
        query = query.where(rejections.c.provider == provider)
    return int(conn.execute(query).scalar_one())


def measure(conn: Connection, rule: AlertRule, now: float) -> float:
    """The rule's current value: a count in its window, or the backlog's age in seconds."""
    if rule.kind == "failures":
        return failed_tries(conn, rule.provider, now - rule.window_seconds)
    if rule.kind == "rejections":
        return signature_rejections(conn, rule.provider, now - rule.window_seconds)
    return oldest_unfinished_age(conn, rule.provider, now)


def describe(rule: AlertRule, value: float) -> str:
    """What the rule measured, in words: ``7 failed tries in the last 300 s (stripe)``."""
    scope = rule.provider or "all providers"
    if rule.kind == "backlog":
        return f"the oldest unfinished event is {value:.0f} s old ({scope}; threshold {rule.threshold:g} s)"
    what = "failed tries" if rule.kind == "failures" else "signature rejections"
    return f"{value:g} {what} in the last {rule.window_seconds:g} s ({scope}; threshold {rule.threshold:g})"


def message(rule: AlertRule, firing: bool, value: float, now: float) -> dict[str, Any]:
    """The JSON body for the rule's destination: Slack's ``{"text"}``, or a generic object."""
    status = "firing" if firing else "resolved"
    text = f"[hookgate] {rule.name} {status}: {describe(rule, value)}"
    if rule.destination == "slack":
        return {"text": text}
    return {
        "rule": rule.name,
        "status": status,
        "kind": rule.kind,
        "provider": rule.provider,
        "value": value,
        "threshold": rule.threshold,
        "window_seconds": rule.window_seconds or None,
        "at": now,
        "text": text,
    }


def post_json(url: str, body: dict[str, Any]) -> None:
    """POST ``body``; raises on a connection error or a status that is not 2xx."""
    httpx.post(url, json=body, timeout=SEND_TIMEOUT_SECONDS).raise_for_status()


class AlertEvaluator:
    """Evaluates the rules once and sends what changed (the caller holds the ``alerts`` lease)."""

    def __init__(
        self, engine: Engine, rules: Sequence[AlertRule], *, send: Sender = post_json, clock: Clock = time.time
    ) -> None:
        self.engine = engine
        self.rules = rules
        self.send = send
        self.clock = clock

    def run(self, still_held: Callable[[], bool] = lambda: True) -> int:
        """Evaluate every rule while ``still_held()`` (the lease, renewed before each rule: slow
        sinks must not let it lapse, and another worker send the same message); how many
        messages were sent."""
        return sum(self.evaluate(rule) for rule in self.rules if still_held())

    def evaluate(self, rule: AlertRule) -> bool:
        """Measure the rule and send a firing or resolved message if its state changes."""
        now = self.clock()
        with self.engine.connect() as conn:
            value = measure(conn, rule, now)
            state = conn.execute(select(alert_states).where(alert_states.c.rule == rule.name)).one_or_none()
        firing = value >= rule.threshold
        if firing == bool(state is not None and state.firing):
            return False
        if firing and state is not None and state.since is not None and now - state.since < rule.cooldown_seconds:
            return False  # fired a moment ago: stay quiet until the cooldown ends
        status = "firing" if firing else "resolved"
        try:
            self.send(rule.url, message(rule, firing, value, now))
        except Exception as exc:
            reason = (
                f"HTTP {exc.response.status_code}" if isinstance(exc, httpx.HTTPStatusError) else type(exc).__name__
            )
            log.warning(
                "alert %s: the %s message to %s failed (%s); it is sent again at the next evaluation",
                rule.name,
                status,
                shown_url(rule.url),
                reason,
            )
            return False
        values: dict[str, Any] = {"firing": firing, "last_sent_at": now, "value": value}
        if firing:
            values["since"] = now
        with self.engine.begin() as conn:
            insert_ignoring_conflict(conn, alert_states, {"rule": rule.name, "firing": False})
            conn.execute(update(alert_states).where(alert_states.c.rule == rule.name).values(**values))
        log.log(
            logging.WARNING if firing else logging.INFO, "alert %s %s: %s", rule.name, status, describe(rule, value)
        )
        return True


class AlertLoop(Periodic):
    """Evaluates the alert rules at an interval, under the ``alerts`` lease."""

    name = "hookgate-alerts"

    def __init__(self, engine: Engine, rules: Sequence[AlertRule], interval: float) -> None:
        super().__init__(interval)
        self.evaluator = AlertEvaluator(engine, rules)
        self.engine = engine
        self.holder = new_token()

    def tick(self) -> None:
        if not self.evaluator.rules or not take_named_lease(self.engine, LEASE_NAME, self.holder, LEASE_SECONDS):
            return
        try:
            self.evaluator.run(lambda: take_named_lease(self.engine, LEASE_NAME, self.holder, LEASE_SECONDS))
        finally:
            release_named_lease(self.engine, LEASE_NAME, self.holder)
