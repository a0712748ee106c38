"""Alerts: rules measured against a real store, messages POSTed to a real HTTP sink on
127.0.0.1, and one firing and one resolved message from two worker processes."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import insert, update

from gateway.config import AlertRule, load_config
from gateway.errors import ConfigError
from gateway.models import PROCESSED, attempts, events, rejections
from tests.conftest import Hookgate
from tests.support.rows import insert_waiting
from tests.support.servers import wait_for
from workers.alerts import AlertEvaluator


class AlertSink:
    """A webhook receiver: records the JSON body of every POST; answers ``failures`` 500s first."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.failures = 0
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with sink._lock:
                    failing = sink.failures > 0
                    sink.failures -= failing
                    if not failing:
                        sink.received.append(json.loads(body))
                        sink.paths.append(self.path)
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def messages(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.received)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def sink() -> Iterator[AlertSink]:
    server = AlertSink()
    yield server
    server.stop()


def rule(sink: AlertSink, kind: str = "failures", **settings: Any) -> AlertRule:
    values: dict[str, Any] = {
        "name": f"{kind}-rule",
        "threshold": 3,
        "window_seconds": 60.0 if kind != "backlog" else 0.0,
    }
    values.update(settings)
    return AlertRule(kind=kind, destination="webhook", url=f"{sink.url}/hooks/s3cr3t-path", **values)


def add_failed_tries(engine: Any, pk: int, count: int, finished_at: float, outcome: str = "retry") -> None:
    rows = [
        {
            "event_pk": pk,
            "attempt": n + 1,
            "round": 0,
            "started_at": finished_at - 0.1,
            "finished_at": finished_at,
            "outcome": outcome,
            "trigger": "initial",
            "worker": "host:1",
        }
        for n in range(count)
    ]
    with engine.begin() as conn:
        conn.execute(insert(attempts), rows)


def stripe_event(engine: Any, now: float) -> int:
    pk = insert_waiting(engine, "evt-stripe", None, now)
    with engine.begin() as conn:
        conn.execute(update(events).where(events.c.id == pk).values(provider="stripe"))
    return pk


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_failed_tries_fire_once_and_resolve_once_when_the_window_has_passed(engine: Any, sink: AlertSink) -> None:
    now = time.time()
    clock = Clock(now)
    acme = insert_waiting(engine, "evt-acme", None, now)
    stripe = stripe_event(engine, now)
    rules = [rule(sink, provider="acme"), rule(sink, name="all-providers", threshold=5)]
    evaluator = AlertEvaluator(engine, rules, clock=clock)
    add_failed_tries(engine, acme, 2, now - 1)
    add_failed_tries(engine, stripe, 2, now - 1, outcome="failed")
    add_failed_tries(engine, stripe, 5, now - 1, outcome="processed")  # not failures
    assert evaluator.run() == 0
    add_failed_tries(engine, acme, 1, now - 0.5)
    assert evaluator.run() == 2  # acme reaches 3; every provider reaches 5
    assert evaluator.run() == 0  # still firing: no second message
    assert [(m["rule"], m["status"], m["value"]) for m in sink.messages()] == [
        ("failures-rule", "firing", 3),
        ("all-providers", "firing", 5),
    ]
    assert sink.messages()[0]["provider"] == "acme"
    assert sink.messages()[1]["provider"] is None
    clock.now = now + 61  # the failures have left the window
    assert evaluator.run() == 2
    resolved = sink.messages()[2:]
    assert [(m["rule"], m["status"]) for m in resolved] == [
        ("failures-rule", "resolved"),
        ("all-providers", "resolved"),
    ]
    assert all("resolved" in m["text"] for m in resolved)
    assert evaluator.run() == 0


def test_an_evaluator_whose_lease_was_taken_over_sends_nothing_more(engine: Any, sink: AlertSink) -> None:
    """The lease is renewed before each rule: a worker that lost it to slow sinks stops there,
    rather than send what the new holder sends too (found in review)."""
    now = time.time()
    acme = insert_waiting(engine, "evt-acme", None, now)
    add_failed_tries(engine, acme, 3, now - 1)
    rules = [rule(sink, name="first"), rule(sink, name="second")]
    held = iter([True, False])
    assert AlertEvaluator(engine, rules, clock=Clock(now)).run(lambda: next(held)) == 1
    assert [m["rule"] for m in sink.messages()] == ["first"]


def test_a_message_that_cannot_be_sent_is_sent_at_the_next_evaluation_and_the_url_is_not_logged(
    engine: Any, sink: AlertSink, caplog: pytest.LogCaptureFixture
) -> None:
    now = time.time()
    pk = insert_waiting(engine, "evt", None, now)
    add_failed_tries(engine, pk, 3, now)
    evaluator = AlertEvaluator(engine, [rule(sink)], clock=Clock(now))
    sink.failures = 1
    with caplog.at_level(logging.WARNING, logger="hookgate.alerts"):
        assert evaluator.run() == 0
    assert "HTTP 500" in caplog.text
    assert "127.0.0.1" in caplog.text
    assert "s3cr3t" not in caplog.text
    assert evaluator.run() == 1
    assert [m["status"] for m in sink.messages()] == ["firing"]
    assert sink.paths == ["/hooks/s3cr3t-path"]


def test_after_a_firing_message_the_cooldown_holds_the_next_one(engine: Any, sink: AlertSink) -> None:
    now = time.time()
    clock = Clock(now)
    pk = insert_waiting(engine, "evt", None, now)
    evaluator = AlertEvaluator(engine, [rule(sink, window_seconds=10.0, cooldown_seconds=100.0)], clock=clock)
    add_failed_tries(engine, pk, 3, now)
    assert evaluator.run() == 1
    clock.now = now + 20
    assert evaluator.run() == 1  # resolved
    add_failed_tries(engine, pk, 3, clock.now)
    assert evaluator.run() == 0  # fires again within the cooldown: held
    clock.now = now + 101
    add_failed_tries(engine, pk, 3, clock.now)
    assert evaluator.run() == 1
    assert [m["status"] for m in sink.messages()] == ["firing", "resolved", "firing"]


def test_backlog_fires_on_the_age_of_the_oldest_unfinished_event(engine: Any, sink: AlertSink) -> None:
    now = time.time()
    pk = insert_waiting(engine, "old", None, now)  # received 10 s ago
    stripe_only = rule(sink, "backlog", name="stripe-backlog", provider="stripe", threshold=8)
    evaluator = AlertEvaluator(engine, [rule(sink, "backlog", threshold=8), stripe_only], clock=Clock(now))
    assert evaluator.run() == 1  # the acme event is no stripe backlog
    firing = sink.messages()[0]
    assert (firing["status"], firing["kind"], round(firing["value"])) == ("firing", "backlog", 10)
    with engine.begin() as conn:
        conn.execute(update(events).where(events.c.id == pk).values(status=PROCESSED))
    assert evaluator.run() == 1
    assert sink.messages()[1]["status"] == "resolved"


def test_signature_rejections_fire_per_provider(engine: Any, sink: AlertSink) -> None:
    now = time.time()
    rows = [
        {"at": now - 1, "provider": provider, "status": 401, "cause": cause, "headers": "{}", "body_bytes": 2}
        for provider, cause in [
            ("acme", "signature_mismatch"),
            ("acme", "signature_mismatch"),
            ("acme", "stale_timestamp"),
            ("stripe", "signature_mismatch"),
        ]
    ]
    with engine.begin() as conn:
        conn.execute(insert(rejections), rows)
    acme = rule(sink, "rejections", provider="acme", threshold=2)
    stripe = rule(sink, "rejections", name="stripe-rejections", provider="stripe", threshold=2)
    assert AlertEvaluator(engine, [acme, stripe], clock=Clock(now)).run() == 1
    (sent,) = sink.messages()
    assert (sent["rule"], sent["value"]) == ("rejections-rule", 2)
    assert "2 signature rejections" in sent["text"]


def test_a_slack_destination_gets_slacks_payload(engine: Any, sink: AlertSink) -> None:
    now = time.time()
    pk = insert_waiting(engine, "evt", None, now)
    add_failed_tries(engine, pk, 3, now)
    clock = Clock(now)
    slack = AlertRule(
        name="payments", kind="failures", threshold=3, destination="slack", url=sink.url, window_seconds=60
    )
    evaluator = AlertEvaluator(engine, [slack], clock=clock)
    evaluator.run()
    clock.now = now + 61
    evaluator.run()
    firing, resolved = sink.messages()
    assert list(firing) == ["text"]
    assert firing["text"].startswith("[hookgate] payments firing: 3 failed tries in the last 60 s")
    assert list(resolved) == ["text"]
    assert "payments resolved" in resolved["text"]


def configure_alerts(hookgate: Hookgate, rules: list[dict[str, Any]], **workers: float) -> None:
    data = yaml.safe_load(hookgate.config_path.read_text())
    data["alerts"] = rules
    data["workers"].update(workers)
    hookgate.config_path.write_text(yaml.safe_dump(data))


def test_a_failure_burst_with_two_worker_processes_sends_one_firing_and_one_resolved_message(
    hookgate: Hookgate, sink: AlertSink
) -> None:
    failing = {"name": "acme-failing", "when": {"failures": 3, "within_minutes": 0.05}, "send": {"webhook": sink.url}}
    configure_alerts(hookgate, [failing], alert_interval_seconds=0.1)
    hookgate.start_intake()
    hookgate.start_worker()
    hookgate.start_worker()
    for n in range(4):
        assert hookgate.post("acme", *hookgate.signed("acme", "fail.always", f"burst-{n}")).status_code == 200
    for n in range(4):
        hookgate.wait_status("acme", f"burst-{n}", "failed")
    wait_for(lambda: len(sink.messages()) >= 2, 30, what="the firing and the resolved message")
    deadline = time.monotonic() + 1.0  # about ten more evaluations in each process: still one of each
    while time.monotonic() < deadline:
        assert len(sink.messages()) == 2, sink.messages()
        time.sleep(0.05)
    statuses = [(m["rule"], m["status"]) for m in sink.messages()]
    assert statuses == [("acme-failing", "firing"), ("acme-failing", "resolved")]
    assert "resolved" in sink.messages()[1]["text"]


def write_alerts(tmp_path: Path, alerts: str) -> Path:
    path = tmp_path / "providers.yaml"
    path.write_text("providers:\n  stripe: {type: stripe, secrets: [whsec_12345678]}\nalerts:\n" + alerts)
    return path


def problems(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ or {})
    return info.value.problems


def test_alert_rules_are_read_from_providers_yaml_in_the_spec_format(tmp_path: Path) -> None:
    path = write_alerts(
        tmp_path,
        "  - when: {failures: 10, within_minutes: 5}\n"
        "    provider: stripe\n"
        "    send: {webhook: '${ALERT_URL}'}\n"
        "    cooldown_minutes: 30\n"
        "  - {when: {backlog_age_seconds: 300}, send: {slack: '${SLACK_URL}'}}\n"
        "  - {name: rotated, when: {rejections: 50, within_minutes: 0.5}, send: {webhook: 'https://a.example/'}}\n",
    )
    environ = {"ALERT_URL": "https://alerts.example/hook", "SLACK_URL": "https://hooks.slack.com/services/T/B/x"}
    failing, backlog, rotated = load_config(path, environ).alerts
    assert failing == AlertRule(
        name="failures≥10/5min stripe",
        kind="failures",
        threshold=10,
        destination="webhook",
        url="https://alerts.example/hook",
        provider="stripe",
        window_seconds=300,
        cooldown_seconds=1800,
    )
    assert (backlog.name, backlog.kind, backlog.threshold, backlog.window_seconds) == (
        "backlog≥300s",
        "backlog",
        300,
        0,
    )
    assert (backlog.provider, backlog.cooldown_seconds) == (None, 3600)
    assert (backlog.destination, backlog.url) == ("slack", "https://hooks.slack.com/services/T/B/x")
    assert (rotated.name, rotated.kind, rotated.threshold, rotated.window_seconds) == ("rotated", "rejections", 50, 30)


def test_a_rule_without_a_name_keeps_its_state_across_a_restart(tmp_path: Path, engine: Any, sink: AlertSink) -> None:
    path = write_alerts(
        tmp_path, f"  - {{when: {{failures: 3, within_minutes: 1}}, send: {{webhook: '{sink.url}'}}}}\n"
    )
    now = time.time()
    add_failed_tries(engine, insert_waiting(engine, "evt", None, now), 3, now)
    assert AlertEvaluator(engine, load_config(path, {}).alerts, clock=Clock(now)).run() == 1
    restarted = AlertEvaluator(engine, load_config(path, {}).alerts, clock=Clock(now + 1))
    assert restarted.run() == 0  # still firing, under the same name: no second message
    assert [(m["rule"], m["status"]) for m in sink.messages()] == [("failures≥3/1min", "firing")]


def test_alert_rule_problems_name_their_line(tmp_path: Path) -> None:
    path = write_alerts(
        tmp_path,
        "  - when: {failure: 10, within_minutes: 5}\n"  # line 4
        "    provder: stripe\n"
        "    send: {webhok: 'https://a.example/'}\n"
        "    cooldown_minute: 30\n"
        "  - when: {backlog_age_seconds: 300, within_minutes: 5}\n"  # line 8
        "    provider: strpe\n"
        "    send: {slack: not-a-url}\n"
        "  - {when: {failures: 0}, send: {webhook: 'https://a.example/', slack: 'https://b.example/'}}\n"  # line 11
        "  - {when: {failures: 5, rejections: 5, within_minutes: 1}, send: {}, cooldown_minutes: -1}\n"
        "  - {when: {rejections: 5, within_minutes: 1}, name: ''}\n"
        "  - {failures: 10, webhook: 'https://a.example/'}\n",  # line 14
    )
    assert problems(path) == [
        f"{path}:5: alerts[0].provder: unknown key: did you mean 'provider'?",
        f"{path}:7: alerts[0].cooldown_minute: unknown key: did you mean 'cooldown_minutes'?",
        f"{path}:4: alerts[0].when.failure: unknown key: did you mean 'failures'?",
        f"{path}:6: alerts[0].send.webhok: unknown key: did you mean 'webhook'?",
        f"{path}:8: alerts[1].when.within_minutes: a backlog condition has no window: it is an age in seconds",
        f"{path}:9: alerts[1].provider: unknown provider 'strpe': did you mean 'stripe'?",
        f"{path}:10: alerts[1].send.slack: must be an http:// or https:// URL",
        f"{path}:11: alerts[2].when.failures: must be a number > 0",
        f"{path}:11: alerts[2].when.within_minutes: required: a number > 0",
        f"{path}:11: alerts[2].send: needs one destination: webhook: URL or slack: URL (found webhook, slack)",
        f"{path}:12: alerts[3].when: needs one condition: failures: N or rejections: N with within_minutes: M, "
        "or backlog_age_seconds: S (found failures, rejections)",
        f"{path}:12: alerts[3].send: needs one destination: webhook: URL or slack: URL",
        f"{path}:12: alerts[3].cooldown_minutes: must be a number > 0",
        f"{path}:13: alerts[4].name: must be a name of at most 255 characters",
        f"{path}:13: alerts[4].send: required: one destination, {{webhook: URL}} or {{slack: URL}}",
        f"{path}:14: alerts[5].failures: unknown key: failures belongs in when:, e.g. when: "
        "{failures: 10, within_minutes: 5}",
        f"{path}:14: alerts[5].webhook: unknown key: webhook belongs in send:, e.g. send: {{webhook: URL}}",
        f"{path}:14: alerts[5].when: required: one condition, e.g. {{failures: 10, within_minutes: 5}}",
        f"{path}:14: alerts[5].send: required: one destination, {{webhook: URL}} or {{slack: URL}}",
    ]


def test_alert_names_are_unique_and_a_missing_variable_is_named_once(tmp_path: Path) -> None:
    webhook = "send: {webhook: 'https://a.example/'}"
    path = write_alerts(
        tmp_path,
        f"  - {{when: {{backlog_age_seconds: 5}}, {webhook}}}\n"
        "  - {when: {backlog_age_seconds: 9}, send: {slack: '${SLACK_URL}'}}\n",
    )
    assert problems(path) == [
        f"{path}:5: alerts[1].send.slack: environment variable SLACK_URL is not set",
    ]
    path = write_alerts(
        tmp_path,
        f"  - {{when: {{failures: 10, within_minutes: 5}}, provider: stripe, {webhook}}}\n"
        f"  - {{when: {{failures: 10, within_minutes: 5}}, provider: stripe, send: {{slack: 'https://b.example/'}}}}\n"
        f"  - {{name: same, when: {{backlog_age_seconds: 5}}, {webhook}}}\n"
        f"  - {{name: same, when: {{backlog_age_seconds: 9}}, {webhook}}}\n"
        f"  - {{name: other, when: {{failures: 10, within_minutes: 5}}, provider: stripe, {webhook}}}\n",
    )
    assert problems(path) == [
        f"{path}:5: alerts[1]: 'failures≥10/5min stripe' is also the name of alerts[0] (line 4): "
        "give one of them a name:",
        f"{path}:7: alerts[3].name: 'same' is also the name of alerts[2] (line 6): names must be unique",
    ]
