"""The console in a real headless Chromium: Debian's ``chromium`` driven by Playwright through
``executable_path`` (never ``playwright install``).

Without chromium or the playwright package these tests are skipped, saying why; with
``HOOKGATE_TEST_REQUIRE_BROWSER=1`` (as ``.ci/run`` sets) they fail instead. With
``HOOKGATE_TEST_SCREENSHOTS=1`` they also refresh the README's screenshots under ``docs/``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.admin.views import optional
from tests.admin.conftest import TOKEN
from tests.conftest import Hookgate
from tests.support.servers import ROOT, wait_for

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("HOOKGATE_TEST_CHROMIUM", "/usr/bin/chromium")


def unavailable(reason: str) -> None:
    if os.environ.get("HOOKGATE_TEST_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (HOOKGATE_TEST_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """A headless Chromium, shared by the module's tests (each gets its own context)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright package is not installed (pip install -e '.[dev]')")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        unavailable(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Any, console: Hookgate) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, base_url=console.url)
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def screenshot(page: Any, name: str, tmp_path: Path) -> None:
    """The README's screenshot ``docs/<name>`` when refreshing them, else a copy under ``tmp_path``."""
    keep = os.environ.get("HOOKGATE_TEST_SCREENSHOTS") == "1"
    page.screenshot(path=str((ROOT / "docs" if keep else tmp_path) / name), full_page=True)


def log_in(page: Any) -> None:
    page.goto("/admin")
    assert page.locator('input[name="token"]').get_attribute("type") == "password"
    page.fill('input[name="token"]', TOKEN)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_selector('input[name="q"]')


def requires(module: str, what: str) -> None:
    if optional(module) is None:
        pytest.skip(f"pending: {what} ({module}) is not in this build yet")


def test_find_a_failed_event_read_its_error_replay_it_after_the_fix(
    console: Hookgate, page: Any, tmp_path: Path
) -> None:
    requires("gateway.attempts", "the attempt history")
    console.start_worker()
    assert console.post("acme", *console.signed("acme", "fail.until_fixed", "evt_fix_me")).status_code == 200
    for n in range(3):  # other events around it
        assert console.post("acme", *console.signed("acme", "thing.updated", f"evt_ok_{n}")).status_code == 200
    console.wait_status("acme", "evt_fix_me", "failed")

    log_in(page)
    page.fill('input[name="q"]', "evt_fix_me")
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("tbody tr")
    assert rows.count() == 1
    assert rows.first.get_attribute("class") == "failed"
    rows.first.get_by_role("link", name="evt_fix_me").click()

    failed_tries = page.locator("ol.timeline li.outcome-failed, ol.timeline li.outcome-retry")
    failed_tries.first.wait_for()
    assert failed_tries.count() == 3
    assert "ValueError: not fixed yet on try 3" in failed_tries.last.inner_text()
    screenshot(page, "console-event.png", tmp_path)

    (console.dir / "fixed").touch()  # the handler is fixed
    page.get_by_role("button", name="Replay").click()
    page.get_by_text("Queued again").wait_for()

    def shown_processed() -> bool:
        page.reload()
        return page.locator("h1 .status").inner_text() == "processed"

    wait_for(shown_processed, 30, interval=0.3, what="the event page to show processed")
    assert "outcome-processed" in (page.locator("ol.timeline li").last.get_attribute("class") or "")
    assert [line[2] for line in console.effects("sibling")] == ["evt_fix_me"]  # it had succeeded: not run again


def test_bulk_replay_a_failure_group(console: Hookgate, page: Any, tmp_path: Path) -> None:
    requires("gateway.attempts", "failure groups")
    requires("gateway.replays", "bulk replay jobs")
    console.start_worker()
    group = [f"evt_group_{n}" for n in range(3)]
    for event_id in group:
        assert console.post("acme", *console.signed("acme", "fail.until_fixed", event_id)).status_code == 200
    assert console.post("acme", *console.signed("acme", "fail.always", "evt_other")).status_code == 200
    for event_id in [*group, "evt_other"]:
        console.wait_status("acme", event_id, "failed")

    log_in(page)
    page.get_by_role("link", name="Failure groups").click()
    row = page.locator("tbody tr", has_text="fail.until_fixed")
    assert row.locator("td").nth(3).inner_text() == "3"
    assert page.locator("tbody tr", has_text="fail.always").count() == 1
    screenshot(page, "console-failure-groups.png", tmp_path)

    (console.dir / "fixed").touch()
    row.get_by_role("link", name="Replay this group…").click()
    assert page.locator("#replay-count").inner_text() == "3"
    page.get_by_role("button", name="Replay 3 events").click()  # the confirmation
    page.locator("#job-status").wait_for()

    def job_done() -> bool:
        page.reload()
        return page.locator("#job-status").inner_text() == "done"

    wait_for(job_done, 30, interval=0.3, what="the bulk replay job to be done")
    for event_id in group:
        console.wait_status("acme", event_id, "processed")
    assert console.event("acme", "evt_other").status == "failed"  # another group: left alone
