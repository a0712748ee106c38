"""``/metrics`` of real processes, scraped over HTTP: the intake's (``serve``), a ``hookgate
worker`` group's exporter (one process or several), and ``hookgate run``'s, which shows both."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from gateway.errors import ConfigError
from gateway.metrics_export import metrics_port, multiprocess_dir, serve_worker_metrics
from gateway.models import FAILED, PROCESSED, PRUNED, events
from gateway.retention import DAY
from tests.conftest import Hookgate
from tests.support.fake_api import FakeApi
from tests.support.log_scenario import ServeProcess
from tests.support.rows import insert_waiting
from tests.support.servers import WorkerProcess, wait_for
from tests.test_cli import free_port
from tests.test_retention import configure_retention

HANDLERS = "tests.support.handlers"


def scrape(url: str) -> dict[str, float]:
    """Every sample of ``url``/metrics, keyed as ``name{label="value",…}`` (labels sorted)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


def wait_for_series(url: str, expected: dict[str, float], timeout: float = 30) -> dict[str, float]:
    """Scrape until every expected series has its value (absent counts as 0); all samples seen."""
    seen: dict[str, float] = {}

    def matches() -> bool:
        nonlocal seen
        seen = scrape(url)
        return all(seen.get(name, 0.0) == value for name, value in expected.items())

    try:
        wait_for(matches, timeout, interval=0.2, what="the metrics")
    except AssertionError:
        assert {name: seen.get(name, 0.0) for name in expected} == expected
    return seen


def metrics_worker(hookgate: Hookgate, port: int, **kwargs: Any) -> WorkerProcess:
    """``hookgate worker`` with ``/metrics`` on ``port``, once its exporter answers."""
    worker = hookgate.start_worker(metrics_port=port, **kwargs)
    wait_for(lambda: answers(port, worker), 60, interval=0.1, what="the worker's /metrics")
    return worker


def answers(port: int, worker: WorkerProcess) -> bool:
    assert worker.process.poll() is None, worker.log.read_text()
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def post(hookgate: Hookgate, provider: str, event_type: str, event_id: str, data: dict[str, Any] | None = None) -> None:
    body, headers = hookgate.signed(provider, event_type, event_id, data)
    assert hookgate.post(provider, body, headers).json() == {"status": "accepted", "id": event_id}


def test_a_worker_counts_what_became_of_each_event(hookgate: Hookgate, fake_api: FakeApi) -> None:
    fake_api.states["/v1/things/r1"] = {"id": "r1", "version": 2}  # r-gone is not there: 404
    api = {"base_url": fake_api.url, "token": "api-token", "resource_path": "/v1/things/{resource}"}
    hookgate.configure_provider("acme", api=api)
    hookgate.start_intake()
    port = free_port()
    metrics_worker(hookgate, port)
    url = f"http://127.0.0.1:{port}"

    post(hookgate, "stripe", "customer.created", "evt_ok")
    post(hookgate, "acme", "fail.always", "always-1")  # 3 tries (max_attempts), 2 retries, then failed
    post(hookgate, "acme", "thing.updated", "r1-v2", {"id": "r1", "version": 2})
    post(hookgate, "acme", "thing.updated", "gone-1", {"id": "r-gone", "version": 1})
    hookgate.wait_status("acme", "r1-v2", PROCESSED)
    post(hookgate, "acme", "thing.updated", "r1-v1", {"id": "r1", "version": 1})  # older than applied
    insert_waiting(hookgate.engine, "lost-1", "a-message-redis-never-had", time.time())  # the sweep re-sends it
    for event_id, status in (("always-1", "failed"), ("r1-v1", "superseded"), ("lost-1", PROCESSED)):
        hookgate.wait_status("acme", event_id, status)
    hookgate.wait_status("stripe", "evt_ok", PROCESSED)

    seen = wait_for_series(
        url,
        {
            'hookgate_events_processed_total{provider="stripe"}': 1,
            'hookgate_events_processed_total{provider="acme"}': 3,  # r1-v2, gone-1, lost-1
            'hookgate_events_superseded_total{provider="acme"}': 1,
            'hookgate_events_failed_total{provider="acme"}': 1,
            'hookgate_events_retried_total{provider="acme"}': 2,
            'hookgate_events_failed_total{provider="stripe"}': 0,
            f'hookgate_handler_duration_seconds_count{{handler="{HANDLERS}.acme_handler"}}': 6,  # 3 + 3 events
            f'hookgate_handler_failures_total{{handler="{HANDLERS}.acme_handler"}}': 3,
            f'hookgate_handler_duration_seconds_count{{handler="{HANDLERS}.acme_sibling"}}': 1,  # not run again
            f'hookgate_handler_duration_seconds_count{{handler="{HANDLERS}.acme_audit"}}': 4,  # superseded too
            f'hookgate_handler_duration_seconds_count{{handler="{HANDLERS}.stripe_handler"}}': 1,
            'hookgate_event_latency_seconds_count{provider="acme"}': 4,  # processed and superseded
            'hookgate_event_latency_seconds_count{provider="stripe"}': 1,
            'hookgate_reconcile_fetches_total{provider="acme",status="2xx"}': 1,  # one fetch per applied r1 event
            # gone-1, and each try of always-1, whose sample body names a resource the API lacks (obj_1)
            'hookgate_reconcile_fetches_total{provider="acme",status="4xx"}': 4,
            'hookgate_sweep_resent_total{reason="lost_message"}': 1,
            'hookgate_sweep_resent_total{reason="due"}': 2,  # the retries, sent when they came due
        },
    )
    # lost-1 was received 10 s before it was inserted: its latency is in the buckets above 10 s.
    assert seen['hookgate_event_latency_seconds_bucket{le="10.0",provider="acme"}'] == 3
    assert seen['hookgate_event_latency_seconds_sum{provider="acme"}'] >= 10
    assert not any("event_id" in name or "evt_ok" in name for name in seen)


def test_the_backlog_gauges_count_unfinished_events_and_the_age_of_the_oldest(hookgate: Hookgate) -> None:
    now = time.time()
    # Held for an hour (a window, a retry): the workers leave them alone; received 10 s ago.
    waiting = [insert_waiting(hookgate.engine, f"w-{i}", token, now, due=False) for i, token in enumerate((None, "t"))]
    port = free_port()
    metrics_worker(hookgate, port)
    seen = wait_for_series(
        f"http://127.0.0.1:{port}",
        {'hookgate_backlog_events{provider="acme"}': 2, 'hookgate_backlog_events{provider="stripe"}': 0},
    )
    assert 10 <= seen['hookgate_backlog_oldest_age_seconds{provider="acme"}'] < 3600
    assert seen['hookgate_backlog_oldest_age_seconds{provider="stripe"}'] == 0

    with hookgate.engine.begin() as conn:
        conn.execute(update(events).where(events.c.id == waiting[0]).values(status=PROCESSED))
    wait_for_series(f"http://127.0.0.1:{port}", {'hookgate_backlog_events{provider="acme"}': 1})


def test_rows_pruned_by_the_workers_are_counted_by_what_became_of_them(hookgate: Hookgate) -> None:
    configure_retention(hookgate, events_days=7, dedupe_days=30)
    hookgate.configure_workers(prune_interval_seconds=0.2)
    now = time.time()
    for event_id, status, age_days in (("old", PROCESSED, 40), ("recent", FAILED, 10), ("tombstone", PRUNED, 40)):
        pk = insert_waiting(hookgate.engine, event_id, None, now, due=False)
        with hookgate.engine.begin() as conn:
            aged = {"status": status, "received_at": now - age_days * DAY}
            conn.execute(update(events).where(events.c.id == pk).values(**aged))
    port = free_port()
    metrics_worker(hookgate, port)
    wait_for_series(
        f"http://127.0.0.1:{port}",
        {
            'hookgate_pruned_events_total{action="deleted"}': 1,  # past both limits
            'hookgate_pruned_events_total{action="tombstoned"}': 1,  # past events_days: its id stays
            'hookgate_pruned_events_total{action="forgotten"}': 1,  # a tombstone past dedupe_days
        },
    )


def test_one_scrape_sums_every_process_of_a_worker_group(hookgate: Hookgate) -> None:
    hookgate.start_intake()
    port = free_port()
    # One thread each: a process holds at most two messages (the running one and one prefetched),
    # so of four events that wait for a release, each process starts one.
    metrics_worker(hookgate, port, processes=2, threads=1)
    sent = [f"evt_slow_{i}" for i in range(4)]
    for event_id in sent:
        post(hookgate, "stripe", "slow.charge", event_id)
    wait_for(lambda: len({line[4] for line in hookgate.effects("started")}) == 2, 60, what="one start in each")
    (hookgate.dir / "release").touch()
    sent += [f"evt_{i}" for i in range(26)]
    for event_id in sent[4:]:
        post(hookgate, "stripe", "customer.created", event_id)
    for event_id in sent:
        hookgate.wait_status("stripe", event_id, PROCESSED)
    assert len({line[4] for line in hookgate.effects()}) == 2
    wait_for_series(
        f"http://127.0.0.1:{port}",
        {
            'hookgate_events_processed_total{provider="stripe"}': 30,
            f'hookgate_handler_duration_seconds_count{{handler="{HANDLERS}.stripe_handler"}}': 30,
            'hookgate_event_latency_seconds_count{provider="stripe"}': 30,
        },
    )


def test_a_second_worker_on_the_same_port_warns_and_processes_events(hookgate: Hookgate) -> None:
    hookgate.start_intake()
    port = free_port()
    first = metrics_worker(hookgate, port)
    second = hookgate.start_worker(metrics_port=port)
    warning = f"cannot listen on 127.0.0.1:{port}"
    wait_for(lambda: warning in second.log.read_text(), 60, interval=0.1, what="the second worker's warning")
    first.stop()
    post(hookgate, "stripe", "customer.created", "evt_second")
    hookgate.wait_status("stripe", "evt_second", PROCESSED)
    assert second.process.poll() is None
    assert [line[2] for line in hookgate.effects()] == ["evt_second"]


def test_serve_reports_the_size_and_duration_of_its_group_commits(hookgate: Hookgate) -> None:
    hookgate.start_intake()
    requests = [hookgate.signed("stripe", "customer.created", f"evt_{i}") for i in range(40)]

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=hookgate.url, timeout=30) as client:
            answers = await asyncio.gather(
                *(client.post("/webhooks/stripe", content=body, headers=headers) for body, headers in requests)
            )
        return [answer.status_code for answer in answers]

    assert set(asyncio.run(burst())) == {200}
    seen = scrape(hookgate.url)
    assert seen['hookgate_deliveries_total{outcome="accepted",provider="stripe"}'] == 40
    assert seen["hookgate_intake_commit_batch_size_sum"] == 40  # every event in exactly one commit
    commits = seen["hookgate_intake_commit_batch_size_count"]
    assert 1 <= commits <= 40
    assert seen["hookgate_intake_commit_duration_seconds_count"] == commits
    assert seen["hookgate_intake_commit_duration_seconds_sum"] > 0
    assert seen['hookgate_intake_commit_batch_size_bucket{le="512.0"}'] == commits


def test_hookgate_run_shows_the_worker_metrics_on_its_own_port(hookgate: Hookgate) -> None:
    run = ServeProcess(hookgate, "run", env=hookgate.env())
    try:
        body, headers = hookgate.signed("stripe", "customer.created", "evt_run")
        assert run.post("stripe", body, headers) == 200
        hookgate.wait_status("stripe", "evt_run", PROCESSED)
        wait_for_series(
            run.url,
            {
                'hookgate_deliveries_total{outcome="accepted",provider="stripe"}': 1,
                'hookgate_events_processed_total{provider="stripe"}': 1,
                'hookgate_backlog_events{provider="stripe"}': 0,
            },
        )
    finally:
        assert run.stop() == 0


@pytest.mark.parametrize(("option", "variable", "port"), [(None, None, 9191), (None, "9300", 9300), (0, "9300", 0)])
def test_the_metrics_port_is_the_option_else_the_variable_else_9191(
    option: int | None, variable: str | None, port: int
) -> None:
    assert metrics_port(option, {"HOOKGATE_METRICS_PORT": variable} if variable else {}) == port


@pytest.mark.parametrize(
    ("option", "variable", "problem"),
    [(None, "ninety", "HOOKGATE_METRICS_PORT='ninety'"), (-1, None, "--metrics-port='-1'"), (70000, "1", "='70000'")],
)
def test_a_metrics_port_that_is_not_a_port_is_refused(option: int | None, variable: str | None, problem: str) -> None:
    with pytest.raises(ConfigError, match=f"{problem} is not a port: give 0 to 65535"):
        metrics_port(option, {"HOOKGATE_METRICS_PORT": variable} if variable else {})


def test_the_files_of_an_exporter_killed_outright_are_removed_by_the_next(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: its pid names no process (until the kernel hands it out again)
    stale = tmp_path / f"hookgate-metrics-{dead.pid}-abc123"
    stale.mkdir()
    (stale / "counter_1.db").write_bytes(b"\0" * 16)
    alive = tmp_path / f"hookgate-metrics-{os.getpid()}-def456"
    alive.mkdir()
    with multiprocess_dir(tmp_path) as directory:
        assert directory.name.startswith(f"hookgate-metrics-{os.getpid()}-")
        assert not stale.exists()
        assert alive.exists()
    assert not directory.exists()


def test_metrics_port_0_starts_no_exporter(database_url: str) -> None:
    with serve_worker_metrics("127.0.0.1", 0, database_url, ["stripe"]) as env:
        assert env == {}  # the worker processes keep their values in memory, unread
