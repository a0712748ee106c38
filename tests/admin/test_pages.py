"""The console's pages over HTTP, as a browser without script sees them (the browser tests
drive them in Chromium): the table, its search, its pages, the event page, escaping."""

from __future__ import annotations

import re

import httpx
import pytest

from gateway.admin.views import optional
from tests.admin.conftest import log_in, store_event, store_resource
from tests.conftest import Hookgate
from tests.support.servers import wait_for


def rows(html: str) -> list[str]:
    return re.findall(r'<tr class="(\w+)">', html)


def test_the_event_table_searches_filters_and_pages(console: Hookgate) -> None:
    for n in range(60):
        store_event(console.engine, f"evt-{n:02}", status="failed" if n == 7 else "processed", resource=f"cus-{n}")
    browser = log_in(console.url)
    page = browser.get("/admin").text
    assert 'name="q"' in page
    assert len(rows(page)) == 50
    assert 'href="/admin/events/stripe/evt-59"' in page  # each row links to its page
    assert 'href="/admin/resources/stripe/cus-59"' in page
    assert ">processed</span> 59<" in page  # the status counts
    assert ">failed</span> 1<" in page
    assert "Oldest unfinished event: none" in page
    nxt = re.search(r'<a href="([^"]+)" rel="next">', page)
    assert nxt is not None
    assert "cursor=" in nxt.group(1)
    assert "offset" not in nxt.group(1)
    second = browser.get(nxt.group(1).replace("&amp;", "&")).text
    assert len(rows(second)) == 10
    assert 'rel="next"' not in second

    found = browser.get("/admin", params={"q": "evt-07"}).text
    assert rows(found) == ["failed"]  # failed rows are marked (and styled) as such
    assert browser.get("/admin", params={"q": "cus-8"}).text.count("evt-08") >= 1
    filtered = browser.get("/admin", params={"status": "failed"}).text
    assert rows(filtered) == ["failed"]
    bad = browser.get("/admin", params={"status": "bogus"})
    assert bad.status_code == 400
    assert "unknown status" in bad.text


def test_the_event_page(console: Hookgate) -> None:
    store_resource(console.engine, "stripe", "cus_1", '{"version": 4, "plan": "pro"}', sequence=4)
    store_event(
        console.engine,
        "evt_page",
        status="failed",
        resource="cus_1",
        last_error="tests.support.handlers.stripe_handler: ValueError: boom",
        body=b'{"id":"evt_page","data":{"object":{"id":"cus_1"}}}',
    )
    browser = log_in(console.url)
    page = browser.get("/admin/events/stripe/evt_page").text
    assert re.search(r"<button[^>]*>Replay</button>", page)
    assert "ValueError: boom" in page
    assert '"data": {\n    "object"' in page.replace("&#34;", '"')  # the payload, pretty-printed
    assert "&#34;plan&#34;: &#34;pro&#34;" in page  # the reconciled state
    assert "stripe-signature" in page
    assert browser.get("/admin/events/stripe/none").status_code == 404
    resource = browser.get("/admin/resources/stripe/cus_1").text
    assert 'href="/admin/events/stripe/evt_page"' in resource


def test_a_refused_replay_says_why_and_a_queued_one_says_so(console: Hookgate) -> None:
    store_event(console.engine, "evt_done", status="processed")
    browser = log_in(console.url)
    refused = browser.post("/admin/events/stripe/evt_done/replay", data={"csrf": browser.csrf})
    assert refused.status_code == 409
    assert "already processed" in refused.text
    forced = browser.post("/admin/events/stripe/evt_done/replay", data={"csrf": browser.csrf, "force": "1"})
    assert forced.status_code == 303
    assert "Queued again" in browser.get(forced.headers["location"]).text


def test_everything_shown_is_escaped(console: Hookgate) -> None:
    hostile = "<script>alert(1)</script>"
    store_event(
        console.engine,
        f"evt{hostile}",
        event_type=f"x.{hostile}",
        status="failed",
        last_error=hostile,
        body=hostile.encode(),
        headers='{"x-h": "<img src=x onerror=alert(1)>"}',
    )
    browser = log_in(console.url)
    for path in ("/admin", "/admin/events/stripe/evt<script>alert(1)</script>"):
        page = browser.get(path).text
        assert "<script>" not in page, path
        assert "<img" not in page
        assert "&lt;script&gt;" in page
    answer = browser.get("/admin")
    assert "default-src 'none'" in answer.headers["content-security-policy"]  # and no script would run
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    assert answer.headers["cache-control"] == "no-store"


def requires(module: str) -> None:
    if optional(module) is None:
        pytest.skip(f"pending: {module} is not in this build yet")


def test_pause_and_resume_from_the_providers_page(console: Hookgate) -> None:
    requires("gateway.pausing")
    browser = log_in(console.url)
    page = browser.get("/admin/providers").text
    assert 'action="/admin/providers/stripe/pause"' in page
    assert browser.post("/admin/providers/stripe/pause", data={}).status_code == 403  # no CSRF proof
    done = browser.post("/admin/providers/stripe/pause", data={"csrf": browser.csrf})
    assert done.status_code == 303
    page = browser.get("/admin/providers").text
    assert 'action="/admin/providers/stripe/resume"' in page
    assert browser.post("/admin/providers/stripe/resume", data={"csrf": browser.csrf}).status_code == 303
    assert 'action="/admin/providers/stripe/pause"' in browser.get("/admin/providers").text


def test_bulk_replay_shows_the_count_then_asks_for_confirmation(console: Hookgate) -> None:
    requires("gateway.replays")
    for n in range(2):
        store_event(console.engine, f"b-{n}", status="failed", last_error="boom")
    store_event(console.engine, "b-done", status="processed")
    browser = log_in(console.url)
    preview = browser.get("/admin/replays/new", params={"provider": "stripe"}).text
    assert '<strong id="replay-count">2</strong>' in preview
    assert "Replay 2 events" in preview
    assert console.event("stripe", "b-0").status == "failed"  # the preview changes nothing
    assert browser.post("/admin/replays", data={"provider": "stripe"}).status_code == 403
    started = browser.post("/admin/replays", data={"provider": "stripe", "csrf": browser.csrf})
    assert started.status_code == 303
    job = browser.get(started.headers["location"]).text
    assert 'id="job-status"' in job
    assert "of 2" in job


def test_ages_read_as_a_person_says_them() -> None:
    from gateway.admin.pages import age

    assert [age(s) for s in (-1, 45, 125, 3700, 2 * 86400 + 4 * 3600 + 5)] == [
        "0 s",
        "45 s",
        "2 min",
        "1 h 01 min",
        "2 d 4 h",
    ]


def test_the_rejections_page_lists_a_refused_request(console: Hookgate) -> None:
    requires("gateway.rejections")
    body, headers = console.signed("github", "issues.opened", "evt_forged")
    headers["X-Hub-Signature-256"] = "sha256=" + "0" * 64
    assert console.post("github", body, headers).status_code == 401
    browser = log_in(console.url)

    def listed() -> str | None:
        page = browser.get("/admin/rejections", params={"provider": "github"}).text
        return page if "signature_mismatch" in page else None

    page = wait_for(listed, 10, what="the refusal on the rejections page")
    assert f"{len(body)} bytes" in page
    assert "0" * 64 not in page


def test_an_id_with_dot_segments_links_and_replays_only_its_own_event(console: Hookgate) -> None:
    """Ids are the sender's: ``x/../../stripe/evt_victim`` must not become, once the browser
    resolves its ``..``, a link or a Replay form pointing at stripe's ``evt_victim``."""
    store_event(console.engine, "evt_victim", provider="stripe", status="processed")
    store_event(console.engine, "x/../../stripe/evt_victim", provider="acme", status="failed", last_error="boom")
    browser = log_in(console.url)
    base = httpx.URL(console.url + "/admin/")
    listing = browser.get("/admin", params={"provider": "acme"}).text
    links = re.findall(r'href="(/admin/(?:events|resources)/acme/[^"]+)"', listing)
    assert links
    for link in links:
        assert base.join(link).path.startswith(("/admin/events/acme/x/", "/admin/resources/acme/")), link
    page = browser.get(base.join(links[0]))
    assert page.status_code == 200
    assert "x/../../stripe/evt_victim" in page.text
    [action] = re.findall(r'action="(/admin/events/[^"]+/replay)"', page.text)
    assert base.join(action).path == "/admin/events/acme/x/../../stripe/evt_victim/replay"
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    replayed = browser.post(base.join(action), data={"csrf": csrf[1]})
    assert replayed.status_code == 303
    assert base.join(replayed.headers["location"]).path == "/admin/events/acme/x/../../stripe/evt_victim"
    assert console.event("acme", "x/../../stripe/evt_victim").status == "queued"
    assert console.event("stripe", "evt_victim").status == "processed"
