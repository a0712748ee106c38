"""Who may use the console: the token, where it may be given, sessions and CSRF."""

from __future__ import annotations

import httpx
import pytest

from gateway.admin.auth import COOKIE
from tests.admin.conftest import AUTH, TOKEN, log_in, store_event
from tests.conftest import Hookgate


def test_without_a_token_configured_there_is_no_console(hookgate: Hookgate) -> None:
    hookgate.start_intake()
    for path in ("/admin", "/admin/api/events", "/admin/api/stats", "/admin/failure-groups"):
        assert httpx.get(hookgate.url + path, headers=AUTH).status_code == 404, path
    assert httpx.post(hookgate.url + "/admin/login", data={"token": TOKEN}).status_code == 404


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({}, ""),  # no token
        ({"Authorization": "Bearer wrong-token"}, ""),
        ({"Authorization": f"Bearer {TOKEN}x"}, ""),
        ({"Authorization": f"Basic {TOKEN}"}, ""),
        ({"Authorization": "Bearer"}, ""),
        ({}, f"?token={TOKEN}"),  # never in a URL
        ({}, f"?access_token={TOKEN}"),
        (AUTH, f"?token={TOKEN}"),  # not even beside the right header
    ],
)
def test_the_api_refuses_a_missing_wrong_or_misplaced_token(console: Hookgate, headers: dict, query: str) -> None:
    answer = httpx.get(f"{console.url}/admin/api/events{query}", headers=headers)
    assert answer.status_code == 401
    assert "error" in answer.json()
    assert answer.headers["www-authenticate"].startswith("Bearer")


def test_the_api_answers_the_right_token(console: Hookgate) -> None:
    for path in ("/events", "/stats", "/events?status=failed&limit=200"):
        answer = httpx.get(f"{console.url}/admin/api{path}", headers=AUTH)
        assert answer.status_code == 200, (path, answer.text)
    # A session cookie is for the pages: it opens no API endpoint.
    browser = log_in(console.url)
    assert browser.get("/admin/api/events").status_code == 401


def test_without_a_session_every_page_shows_the_login_form(console: Hookgate) -> None:
    for path in ("/admin", "/admin/failure-groups", "/admin/events/stripe/evt_1"):
        page = httpx.get(console.url + path)
        assert page.status_code == 200
        assert page.text.count('type="password"') == 1
        assert 'name="token"' in page.text
        assert f'name="next" value="{path}"' in page.text  # back to the page asked for after login


def test_login_sets_a_strict_http_only_cookie_and_a_wrong_token_is_refused(console: Hookgate) -> None:
    refused = httpx.post(console.url + "/admin/login", data={"token": "nope", "next": "/admin"})
    assert refused.status_code == 401
    assert COOKIE not in refused.cookies
    answer = httpx.post(console.url + "/admin/login", data={"token": TOKEN, "next": "https://evil.example/"})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/admin"  # never sent to another site
    cookie = answer.headers["set-cookie"]
    for attribute in ("HttpOnly", "SameSite=strict", "Path=/admin"):
        assert attribute.lower() in cookie.lower(), cookie
    assert TOKEN not in cookie
    assert "secure" not in cookie.lower()  # plain http here
    over_https = httpx.post(console.url + "/admin/login", data={"token": TOKEN}, headers={"X-Forwarded-Proto": "https"})
    assert "secure" in over_https.headers["set-cookie"].lower()


def test_a_page_refuses_a_token_in_its_url_even_with_a_session(console: Hookgate) -> None:
    browser = log_in(console.url)
    for name in ("token", "access_token"):
        assert browser.get("/admin", params={name: TOKEN}).status_code == 401


def test_a_forged_or_foreign_session_cookie_is_no_session(console: Hookgate) -> None:
    for value in ("1.abc", "", "9999999999.00", "x.y"):
        page = httpx.get(console.url + "/admin", cookies={COOKIE: value})
        assert 'type="password"' in page.text, value


def test_a_cross_site_form_post_is_refused(console: Hookgate) -> None:
    pk = store_event(console.engine, "evt_failed", status="failed", last_error="boom")
    browser = log_in(console.url)
    path = "/admin/events/stripe/evt_failed/replay"
    # No CSRF proof (what a form on another site posts, carrying the cookie if the browser sent it).
    assert browser.post(path, data={}).status_code == 403
    assert browser.post(path, data={"csrf": "forged"}).status_code == 403
    # The right proof, but the browser says the post comes from another site.
    cross = browser.post(path, data={"csrf": browser.csrf}, headers={"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403
    assert console.event("stripe", "evt_failed").status == "failed"
    # No session at all.
    assert httpx.post(console.url + path, data={"csrf": browser.csrf}).status_code == 403
    # Our own page's form.
    done = browser.post(path, data={"csrf": browser.csrf})
    assert done.status_code == 303
    assert console.event("stripe", "evt_failed").status == "queued"
    assert pk


def test_a_cross_site_login_is_refused(console: Hookgate) -> None:
    answer = httpx.post(console.url + "/admin/login", data={"token": TOKEN}, headers={"Sec-Fetch-Site": "cross-site"})
    assert answer.status_code == 403
    assert "set-cookie" not in answer.headers


def test_logging_out_ends_the_session_in_the_browser(console: Hookgate) -> None:
    browser = log_in(console.url)
    answer = browser.post("/admin/logout", data={"csrf": browser.csrf})
    assert answer.status_code == 303
    assert 'type="password"' in browser.get("/admin").text


@pytest.mark.parametrize(("value", "token"), [("s3cret-token\n", "s3cret-token"), ("  \n", None), ("", None)])
def test_the_token_is_read_without_the_whitespace_a_secret_file_leaves(value: str, token: str | None) -> None:
    """A token mounted from a file usually ends in a newline, which no login could ever match."""
    from gateway.settings import Settings

    assert Settings.from_env({"HOOKGATE_ADMIN_TOKEN": value}).admin_token == token
