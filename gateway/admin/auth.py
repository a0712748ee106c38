"""Who may use the console: the API by bearer token, the pages by a session cookie.

There are no accounts: whoever holds ``HOOKGATE_ADMIN_TOKEN`` is the operator. The API takes the
token in ``Authorization: Bearer …`` and nowhere else: a token in a query string ends up in
proxy logs and browser history, so a request carrying one is refused even when it also has the
right header. The pages exchange the token once, at the login form, for a session cookie
(HttpOnly, SameSite=Strict, Path=/admin, Secure over https) that holds an issue time and an HMAC
of it keyed by the token: nothing is stored server-side, every process that has the token can
check it, and changing the token ends every session.

Every form that changes something carries a CSRF proof: an HMAC of the session, which a page on
another site cannot read. A browser's ``Sec-Fetch-Site: cross-site`` (or ``same-site``, a sibling
subdomain) on such a post is refused before the proof is even looked at.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from starlette.requests import Request

#: The session cookie; its path keeps it off the webhook URLs.
COOKIE = "hookgate_admin"
COOKIE_PATH = "/admin"
#: A session lasts this long after login.
SESSION_SECONDS = 12 * 3600
#: Query parameters that look like a token: their presence alone refuses the request.
TOKEN_PARAMS = ("token", "access_token")


class AdminAuth:
    """Checks bearer tokens, session cookies and CSRF proofs against one admin token."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def _mac(self, purpose: str, value: str) -> str:
        return hmac.new(self._token, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()

    def bearer_ok(self, request: Request) -> bool:
        """The request has ``Authorization: Bearer <token>`` (compared in constant time) and no
        token in its query string."""
        if token_in_query(request):
            return False
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return False
        return hmac.compare_digest(given.strip().encode(), self._token)

    def token_ok(self, given: str) -> bool:
        """``given`` (from the login form) is the token."""
        return hmac.compare_digest(given.strip().encode(), self._token)

    def new_session(self, now: float | None = None) -> str:
        issued = str(int(now if now is not None else time.time()))
        return f"{issued}.{self._mac('session', issued)}"

    def session(self, request: Request, now: float | None = None) -> str | None:
        """The request's valid session value, or ``None`` (absent, forged, expired, or made with
        another token)."""
        if token_in_query(request):
            return None
        value = request.cookies.get(COOKIE, "")
        issued, _, mac = value.partition(".")
        if not issued.isdigit() or not hmac.compare_digest(mac.encode(), self._mac("session", issued).encode()):
            return None
        age = (now if now is not None else time.time()) - int(issued)
        return value if 0 <= age < SESSION_SECONDS else None

    def csrf_token(self, session: str) -> str:
        """The proof a form of this session carries in its ``csrf`` field."""
        return self._mac("csrf", session)

    def csrf_ok(self, request: Request, session: str, given: str) -> bool:
        """A state-changing post is from one of our own pages: not marked cross-site by the
        browser, and carrying this session's proof."""
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return False
        return hmac.compare_digest(given.encode(), self.csrf_token(session).encode())


def token_in_query(request: Request) -> bool:
    return any(name in request.query_params for name in TOKEN_PARAMS)


def is_https(request: Request) -> bool:
    """Whether the browser reached us over https, directly or through a proxy that says so."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"
