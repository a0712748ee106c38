"""The log of refused requests, over real HTTP against a real store: what each refusal records,
what it never records, the bound per provider, drops under overload and a dead store."""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from gateway.database import create_store_engine
from gateway.intake import create_app
from gateway.models import rejections
from gateway.queue import EventQueue, create_broker
from gateway.rejections import (
    BAD_REQUEST,
    MAX_HEADERS,
    MAX_NAME,
    MISSING_HEADER,
    REDACTED,
    SIGNATURE_MISMATCH,
    STALE_TIMESTAMP,
    TOO_LARGE,
    UNKNOWN,
    UNKNOWN_PROVIDER,
    UNPARSEABLE_BODY,
    cause_of,
    count_since,
    recent,
)
from gateway.settings import ServerLimits
from providers import PayloadRejected, SignatureRejected
from tests.conftest import Hookgate
from tests.support.servers import ServerThread, wait_for

MARKER = "BODY-MARKER-7f3a"
WRONG_SECRETS = {"stripe": "whsec_wrong", "standard": "whsec_" + base64.b64encode(b"not the secret").decode()}


@pytest.fixture
def servers(hookgate: Hookgate) -> Iterator[list[ServerThread]]:
    started: list[ServerThread] = []
    yield started
    for server in started:
        server.stop()


def serve(hookgate: Hookgate, started: list[ServerThread], database_url: str | None = None, **limits: Any) -> str:
    """A real intake on the test's store with ``limits``; its base URL."""
    engine = create_store_engine(database_url or hookgate.database_url)
    broker = EventQueue(create_broker(hookgate.broker_url))
    app = create_app(hookgate.config, engine, broker, limits=ServerLimits(**limits))
    server = ServerThread(app).start()
    started.append(server)
    return server.url


def wrong_signature(hookgate: Hookgate, provider: str, **options: Any) -> tuple[bytes, dict[str, str]]:
    """A request of ``provider`` carrying :data:`MARKER` in its body, signed with a wrong secret."""
    entry = hookgate.config.providers[provider]
    options.setdefault("secret", WRONG_SECRETS.get(provider, "wrong-secret"))
    data = {"id": "obj_1", "note": MARKER}
    return entry.provider.signed_request("invoice.paid", data, event_id=f"evt_{uuid.uuid4().hex}", **options)


def rows_text(engine: Any) -> list[str]:
    with engine.connect() as conn:
        return [repr(tuple(row)) for row in conn.execute(select(rejections))]


def wait_rows(engine: Any, count: int, provider: str | None = None) -> list[dict[str, Any]]:
    return wait_for(
        lambda: (rows := recent(engine, provider, limit=1000)) and len(rows) >= count and rows,
        20,
        what=f"{count} refused requests to be recorded",
    )


def test_each_refusal_is_recorded_with_its_status_and_cause(hookgate: Hookgate, servers: list[ServerThread]) -> None:
    url = serve(hookgate, servers)
    started = time.time()
    stripe = hookgate.config.providers["stripe"].provider
    good_body, good_headers = hookgate.signed("stripe", "invoice.paid")
    body, headers = wrong_signature(hookgate, "stripe")
    stale = stripe.signed_request("invoice.paid", None, event_id="evt_stale", timestamp=math.floor(time.time()) - 301)
    broken = b'{"id": "evt_x", "type": '
    broken_headers = stripe.sign(broken, {}, secret=stripe.settings.secrets[0], timestamp=int(time.time()))
    large = b"x" * 70_000
    gzipped = good_headers | {"Content-Encoding": "gzip"}
    sent = [
        (httpx.post(f"{url}/webhooks/stripe", content=body, headers=headers), SIGNATURE_MISMATCH, body),
        (httpx.post(f"{url}/webhooks/stripe", content=stale[0], headers=stale[1]), STALE_TIMESTAMP, stale[0]),
        (httpx.post(f"{url}/webhooks/stripe", content=good_body), MISSING_HEADER, good_body),
        (httpx.post(f"{url}/webhooks/stripe", content=broken, headers=broken_headers), UNPARSEABLE_BODY, broken),
        (httpx.post(f"{url}/webhooks/stripe", content=large, headers=good_headers), TOO_LARGE, None),
        (httpx.post(f"{url}/webhooks/no-such-thing", content=b"{}"), UNKNOWN_PROVIDER, None),
        (httpx.get(f"{url}/webhooks/stripe"), BAD_REQUEST, None),
        (httpx.post(f"{url}/webhooks/stripe", content=good_body, headers=gzipped), BAD_REQUEST, None),
        (httpx.post(f"{url}/webhooks/stripe", content=iter([b"x" * 1024] * 100)), TOO_LARGE, None),  # chunked
    ]
    assert [response.status_code for response, _, _ in sent] == [401, 401, 401, 400, 413, 404, 405, 415, 413]
    rows = list(reversed(wait_rows(hookgate.engine, len(sent))))
    assert [(row["status"], row["cause"]) for row in rows] == [(r.status_code, cause) for r, cause, _ in sent]
    assert [row["provider"] for row in rows] == ["stripe"] * 5 + [UNKNOWN] + ["stripe"] * 3
    for row, (_, _, raw) in zip(rows, sent, strict=True):
        assert row["source"] == "127.0.0.1"
        assert started <= row["at"] <= time.time()
        if raw is not None:  # read whole: its size and hash
            assert (row["body_bytes"], row["body_sha256"]) == (len(raw), hashlib.sha256(raw).hexdigest())
    mismatch, too_large, unknown, unread, streamed = rows[0], rows[4], rows[5], rows[7], rows[8]
    assert mismatch["detail"] == "signature does not match"
    assert mismatch["headers"]["stripe-signature"] == REDACTED
    assert mismatch["headers"]["user-agent"] == headers["User-Agent"]
    assert (too_large["body_bytes"], too_large["body_sha256"]) == (len(large), None)  # as declared, not read
    assert (unread["body_bytes"], unread["body_sha256"]) == (len(good_body), None)
    assert 65_536 < streamed["body_bytes"] <= 100 * 1024  # what was read when the limit was passed
    assert streamed["body_sha256"] is None
    assert "no-such-thing" in unknown["detail"]
    assert count_since(hookgate.engine, "stripe", SIGNATURE_MISMATCH, started) == 1
    assert count_since(hookgate.engine, None, BAD_REQUEST, started) == 2
    assert count_since(hookgate.engine, "stripe", SIGNATURE_MISMATCH, time.time() + 1) == 0
    assert [row["cause"] for row in recent(hookgate.engine, UNKNOWN)] == [UNKNOWN_PROVIDER]
    assert len(recent(hookgate.engine, limit=3)) == 3


def test_no_signature_value_no_body_and_no_credentials_are_stored(
    hookgate: Hookgate, servers: list[ServerThread]
) -> None:
    url = serve(hookgate, servers)
    signatures: list[str] = []
    for provider in ("stripe", "github", "standard", "slack", "shopify", "acme"):
        body, headers = wrong_signature(hookgate, provider)
        signatures += [value for name, value in headers.items() if "sig" in name.lower() or "hmac" in name.lower()]
        headers |= {"Authorization": "Bearer tok-9d1e", "Cookie": "session=c00k1e", "X-Gitlab-Token": "glt-55aa"}
        assert httpx.post(f"{url}/webhooks/{provider}", content=body, headers=headers).status_code == 401
    late = hookgate.config.providers["acme"].provider.signed_request(
        "invoice.paid", {"id": "r", "note": MARKER}, event_id="e-late", timestamp=int(time.time()) - 3600
    )
    assert httpx.post(f"{url}/webhooks/acme", content=late[0], headers=late[1]).status_code == 401
    signatures += [late[1]["X-Acme-Signature"]]
    rows = wait_rows(hookgate.engine, 7)
    assert len(signatures) >= 7
    text = "\n".join(rows_text(hookgate.engine))
    for secret in [MARKER, "tok-9d1e", "c00k1e", "glt-55aa", *signatures]:
        assert secret not in text
    assert "authorization" not in text.lower()
    assert "cookie" not in text.lower()
    for row in rows:
        signed = [name for name in row["headers"] if "sig" in name or "hmac" in name or "token" in name]
        assert signed
        assert all(row["headers"][name] == REDACTED for name in signed)
    acme = recent(hookgate.engine, "acme")
    assert [row["cause"] for row in acme] == [STALE_TIMESTAMP, SIGNATURE_MISMATCH]
    assert acme[0]["headers"]["x-acme-timestamp"] == late[1]["X-Acme-Timestamp"]  # kept: it shows the clock skew


def test_the_newest_n_per_provider_are_kept(hookgate: Hookgate, servers: list[ServerThread]) -> None:
    url = serve(hookgate, servers, rejections_per_provider=5)
    body, headers = wrong_signature(hookgate, "stripe")
    for index in range(12):
        httpx.post(f"{url}/webhooks/stripe", content=body, headers={**headers, "User-Agent": f"ua-{index}"})
        httpx.post(f"{url}/webhooks/random-{index}-{uuid.uuid4().hex}", content=b"{}")
    github_body, github_headers = wrong_signature(hookgate, "github")
    for _ in range(3):
        httpx.post(f"{url}/webhooks/github", content=github_body, headers=github_headers)

    log = servers[0].app.intake.rejection_log
    wait_for(lambda: log.written == 27, 20, what="the 27 refusals to be written")
    agents = [row["headers"]["user-agent"] for row in recent(hookgate.engine, "stripe")]
    assert agents == [f"ua-{index}" for index in range(11, 6, -1)]
    details = [row["detail"] for row in recent(hookgate.engine, UNKNOWN)]
    assert [detail.split("-")[1] for detail in details] == [str(index) for index in range(11, 6, -1)]
    assert len(recent(hookgate.engine, "github")) == 3
    with hookgate.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(rejections)).scalar_one() == 13


def test_two_intakes_writing_together_keep_the_bound(hookgate: Hookgate, servers: list[ServerThread]) -> None:
    urls = [serve(hookgate, servers, rejections_per_provider=5) for _ in range(2)]
    body, headers = wrong_signature(hookgate, "stripe")

    def send(url: str) -> None:
        with httpx.Client() as client:
            for _ in range(30):
                assert client.post(f"{url}/webhooks/stripe", content=body, headers=headers).status_code == 401

    threads = [threading.Thread(target=send, args=(url,)) for url in urls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    logs = [server.app.intake.rejection_log for server in servers]
    wait_for(lambda: sum(log.written for log in logs) == 60, 20, what="both intakes to write their 30 refusals")
    assert all(log.written == 30 for log in logs)  # each intake wrote its own share, none dropped
    assert len(recent(hookgate.engine, "stripe")) == 5


@pytest.fixture
def held_writer(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Makes the first batch of every rejection writer wait until ``release`` is set."""
    from gateway.rejections import RejectionLog

    entered, release = threading.Event(), threading.Event()
    write = RejectionLog.write

    def held(self: RejectionLog, batch: list[dict[str, Any]]) -> None:
        entered.set()
        release.wait(30)
        write(self, batch)

    monkeypatch.setattr(RejectionLog, "write", held)
    return entered, release


def test_a_full_queue_drops_entries_and_counts_them(
    hookgate: Hookgate,
    servers: list[ServerThread],
    held_writer: tuple[threading.Event, threading.Event],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="hookgate.intake")
    entered, release = held_writer
    url = serve(hookgate, servers, rejections_max_waiting=3)
    body, headers = wrong_signature(hookgate, "stripe")
    assert httpx.post(f"{url}/webhooks/stripe", content=body, headers=headers).status_code == 401
    assert entered.wait(10)  # the writer holds that first entry
    for _ in range(10):
        assert httpx.post(f"{url}/webhooks/stripe", content=body, headers=headers).status_code == 401
    metrics = httpx.get(f"{url}/metrics").text
    assert 'hookgate_rejections_dropped_total{reason="queue_full"} 7.0' in metrics
    release.set()
    wait_rows(hookgate.engine, 4)
    log = servers[0].app.intake.rejection_log
    wait_for(lambda: log.written == 4, 10, what="the held and the three queued entries to be written")
    wait_for(lambda: "left out of the rejection log" in caplog.text, 10, what="the warning about the drops")
    warnings = [r.getMessage() for r in caplog.records if "left out of the rejection log" in r.getMessage()]
    assert warnings == ["refused requests left out of the rejection log: 7 (queue_full)"]
    assert len(recent(hookgate.engine, "stripe")) == 4


def dropped(url: str, reason: str) -> float:
    """``hookgate_rejections_dropped_total`` for ``reason``, read from the intake's ``/metrics``."""
    prefix = f'hookgate_rejections_dropped_total{{reason="{reason}"}} '
    lines = [line for line in httpx.get(f"{url}/metrics").text.splitlines() if line.startswith(prefix)]
    return float(lines[0].removeprefix(prefix)) if lines else 0.0


def test_a_dead_store_still_gets_its_refusals_answered(
    hookgate: Hookgate, servers: list[ServerThread], store_outage: Any
) -> None:
    database_url, outage = store_outage
    url = serve(hookgate, servers, database_url)
    log = servers[0].app.intake.rejection_log
    body, headers = wrong_signature(hookgate, "stripe")
    with outage(), httpx.Client(timeout=5) as client:
        for _ in range(20):
            began = time.monotonic()
            assert client.post(f"{url}/webhooks/stripe", content=body, headers=headers).status_code == 401
            assert time.monotonic() - began < 1
        wait_for(lambda: dropped(url, "store_error") > 0, 20, what="a batch the store refused to be counted")
    total = lambda: log.written + dropped(url, "store_error") + dropped(url, "queue_full")  # noqa: E731
    wait_for(lambda: total() == 20, 20, what="every refusal to be written or counted as dropped")
    assert len(recent(hookgate.engine, "stripe")) == log.written


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (SignatureRejected("signature does not match"), SIGNATURE_MISMATCH),
        (SignatureRejected("malformed stripe-signature header"), SIGNATURE_MISMATCH),
        (SignatureRejected("timestamp outside the tolerance"), STALE_TIMESTAMP),
        (SignatureRejected("missing svix-id header"), MISSING_HEADER),
        (PayloadRejected("missing X-GitHub-Event or X-GitHub-Delivery header"), MISSING_HEADER),
        (PayloadRejected("body is not valid JSON"), UNPARSEABLE_BODY),
        (PayloadRejected("body lacks the event's id or type"), UNPARSEABLE_BODY),
        (PayloadRejected("request URL is malformed"), BAD_REQUEST),
    ],
)
def test_a_provider_refusal_maps_to_its_cause(error: Any, cause: str) -> None:
    assert cause_of(error) == cause


def test_a_configured_signature_header_is_redacted_whatever_its_name(
    hookgate: Hookgate, servers: list[ServerThread]
) -> None:
    acme = hookgate.config.providers["acme"].provider.settings.options
    hookgate.configure_provider(
        "proof",
        type="hmac",
        secrets=["proof-secret-one"],
        signature={"header": "X-Proof", "algorithm": "sha256", "encoding": "hex"},
        event=dict(acme["event"]),
    )
    url = serve(hookgate, servers)
    body, headers = wrong_signature(hookgate, "proof")
    assert httpx.post(f"{url}/webhooks/proof", content=body, headers=headers).status_code == 401
    [row] = wait_rows(hookgate.engine, 1)
    assert row["headers"]["x-proof"] == REDACTED
    assert headers["X-Proof"] not in "\n".join(rows_text(hookgate.engine))


def test_a_refusal_keeps_a_bounded_set_of_headers(hookgate: Hookgate, servers: list[ServerThread]) -> None:
    url = serve(hookgate, servers)
    body, headers = wrong_signature(hookgate, "stripe")
    flood = {f"x-sig-{index}": "v" for index in range(100)} | {"x-" + "sig" * 30: "v"}
    assert httpx.post(f"{url}/webhooks/stripe", content=body, headers=headers | flood).status_code == 401
    [row] = wait_rows(hookgate.engine, 1)
    assert len(row["headers"]) == MAX_HEADERS
    assert all(len(name) <= MAX_NAME for name in row["headers"])
