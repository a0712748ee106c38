"""The console's pages: server-rendered HTML (Jinja2, autoescaped), plain forms, no script.

A page without a valid session shows the login form; a form that changes something is a POST
that must carry the session's CSRF proof and must not come from another site (see :mod:`.auth`).
After a change the browser is sent on with a 303, so that reloading never posts twice.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from gateway import eventlog
from gateway.eventlog import EventFilter, FilterError
from gateway.models import STATUSES

from . import views
from .auth import COOKIE, COOKIE_PATH, SESSION_SECONDS, is_https, token_in_query
from .console import Console, Endpoint, parse_filter

HOME = "/admin"
#: Sent with every page: no script runs (a payload that slipped past escaping could do nothing),
#: no other site frames the console (clickjacking), and nothing it shows is cached.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
}
#: What the list's filter form holds, in its order.
FILTER_FIELDS = ("q", "provider", "type", "status", "since", "until", "event_id", "resource_id", "error")


def when(timestamp: float | None) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S") if timestamp else "-"


def age(seconds: float) -> str:
    """``seconds`` as a person reads an age: 45 s, 12 min, 3 h 05 min, 2 d 4 h."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60:02} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


def pretty(text: str) -> str:
    """JSON text indented for reading; anything else as it is."""
    try:
        return orjson.dumps(orjson.loads(text), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:
        return text


def pretty_value(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def safe_next(target: str) -> str:
    """Where to go after login: one of our own pages, never another site."""
    return target if target.startswith(HOME) and not target.startswith("//") and "\\" not in target else HOME


#: The console's forms are a few fields; a larger body is not one of them.
MAX_FORM_BYTES = 64 * 1024


async def read_form(request: Request) -> dict[str, str]:
    """The fields of a posted form (``application/x-www-form-urlencoded``, what every form here
    sends); empty for anything else, which then fails the CSRF check."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return {}
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def form_text(form: dict[str, str], name: str) -> str:
    return form.get(name, "")


def path_segment(value: Any) -> str:
    """``value`` as one segment of a URL's path: its ``/`` encoded too (Jinja's ``urlencode``
    keeps it), so that an id a sender chose, such as ``x/../../stripe/evt_1``, cannot make a
    link or a form's action point at another event once the browser resolves the ``..``.
    uvicorn decodes ``%2F`` back before routing, and the ``:path`` routes take it whole."""
    return quote(str(value), safe="")


class Pages:
    """The page endpoints of one console."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.engine = console.engine
        self.auth = console.auth
        env = console.templates.env
        env.filters["when"] = when
        env.filters["pretty"] = pretty
        env.filters["pretty_value"] = pretty_value
        env.filters["pathseg"] = path_segment
        env.globals["statuses"] = STATUSES

    # -- rendering and guards ------------------------------------------------------------

    def render(self, request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
        session = getattr(request.state, "session", None)
        csrf = self.auth.csrf_token(session) if session else ""
        return self.console.templates.TemplateResponse(
            request,
            name,
            {"csrf": csrf, "providers": self.console.providers, **context},
            status_code=status,
            headers=PAGE_HEADERS,
        )

    def login_form(self, request: Request, status: int = 200, error: str | None = None) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return self.render(request, "login.html", {"next": safe_next(target), "error": error}, status)

    def page(self, handler: Endpoint, *, changes: bool = False) -> Endpoint:
        """``handler`` behind the session; with ``changes``, also behind the CSRF proof."""

        async def guarded(request: Request) -> Response:
            if token_in_query(request):
                return PlainTextResponse("the admin token is never taken from a URL", 401)
            session = self.auth.session(request)
            if session is None:
                if changes:
                    return PlainTextResponse("not logged in", 403)
                return self.login_form(request)
            if changes:
                form = await read_form(request)
                if not self.auth.csrf_ok(request, session, form_text(form, "csrf")):
                    return PlainTextResponse("refused: a cross-site request, or a form without its CSRF proof", 403)
                request.state.form = form
            request.state.session = session
            return await handler(request)

        return guarded

    # -- login ---------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return PlainTextResponse("refused: a cross-site login", 403)
        form = await read_form(request)
        target = safe_next(form_text(form, "next"))
        if not self.auth.token_ok(form_text(form, "token")):
            request.state.session = None
            return self.render(request, "login.html", {"next": target, "error": "That is not the admin token."}, 401)
        response = RedirectResponse(target, 303)
        response.set_cookie(
            COOKIE,
            self.auth.new_session(),
            max_age=SESSION_SECONDS,
            path=COOKIE_PATH,
            secure=is_https(request),
            httponly=True,
            samesite="strict",
        )
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse(HOME, 303)
        response.delete_cookie(COOKIE, path=COOKIE_PATH, secure=is_https(request), httponly=True, samesite="strict")
        return response

    # -- events --------------------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        params = request.query_params
        values = {name: params.get(name, "") for name in (*FILTER_FIELDS, "group")}
        try:
            where = parse_filter(params)
            page = await run_in_threadpool(
                views.event_page, self.engine, where, params.get("cursor") or None, views_limit(params)
            )
            error = None
        except FilterError as exc:
            where, page, error = EventFilter(), {"events": [], "next_cursor": None}, str(exc)
        counts = await run_in_threadpool(views.status_counts, self.engine)
        oldest = await run_in_threadpool(views.oldest_unfinished, self.engine)
        failures = await run_in_threadpool(views.failures_last_hour, self.engine, time.time())
        query = where.to_params()
        next_url = f"{HOME}?{urlencode({**query, 'cursor': page['next_cursor']})}" if page["next_cursor"] else None
        return self.render(
            request,
            "events.html",
            {
                "values": values,
                "page": page,
                "error": error,
                "counts": counts.for_provider(where.provider),
                "status_links": {s: f"{HOME}?{urlencode({**query, 'status': s})}" for s in STATUSES},
                "next_url": next_url,
                "replay_url": f"{HOME}/replays/new?{urlencode(query)}",
                "backlog_age": None if oldest is None else age(time.time() - oldest),
                "failures_last_hour": failures,
            },
            400 if error else 200,
        )

    async def event(self, request: Request, refusal: str | None = None) -> Response:
        provider, event_id = request.path_params["provider"], request.path_params["event_id"]
        detail = await run_in_threadpool(views.event_detail, self.engine, provider, event_id)
        if detail is None:
            return self.render(request, "missing.html", {"what": f"event {provider}/{event_id}"}, 404)
        context = {"event": detail, "notice": request.query_params.get("notice"), "refusal": refusal}
        return self.render(request, "event.html", context, 409 if refusal else 200)

    async def replay_event(self, request: Request) -> Response:
        provider, event_id = request.path_params["provider"], request.path_params["event_id"]
        force = form_text(request.state.form, "force") == "1"
        done = await run_in_threadpool(eventlog.replay, self.engine, [event_id], provider=provider, force=force)
        if not done.queued:
            return await self.event(request, refusal=done.refused[0][1] if done.refused else "not replayed")
        page = f"{HOME}/events/{path_segment(provider)}/{path_segment(event_id)}"
        return RedirectResponse(f"{page}?notice=queued", 303)

    async def resource(self, request: Request) -> Response:
        provider, resource_id = request.path_params["provider"], request.path_params["resource_id"]
        cursor = request.query_params.get("cursor") or None
        try:
            detail = await run_in_threadpool(views.resource_detail, self.engine, provider, resource_id, cursor)
        except FilterError as exc:
            return self.render(request, "missing.html", {"what": str(exc)}, 400)
        if detail is None:
            return self.render(request, "missing.html", {"what": f"resource {provider}/{resource_id}"}, 404)
        return self.render(request, "resource.html", {"resource": detail})

    # -- failure groups, bulk replay -----------------------------------------------------

    async def failure_groups(self, request: Request) -> Response:
        groups = await run_in_threadpool(views.failure_groups, self.engine)
        for group in groups or []:
            query = {"provider": group["provider"], "type": group["type"], "group": group["group"]}
            group["replay_url"] = f"{HOME}/replays/new?{urlencode(query)}"
            group["list_url"] = f"{HOME}?{urlencode(query)}"
        return self.render(request, "failure_groups.html", {"groups": groups})

    async def replay_preview(self, request: Request) -> Response:
        module = views.optional("gateway.replays")
        force = request.query_params.get("force") == "1"
        try:
            where = parse_filter(request.query_params)
        except FilterError as exc:
            return self.render(request, "replay_new.html", {"error": str(exc), "filters": {}, "module": module}, 400)
        count = await run_in_threadpool(module.count, self.engine, where, force=force) if module else None
        context = {"filters": where.to_params(), "count": count, "force": force, "module": module, "error": None}
        return self.render(request, "replay_new.html", context)

    async def start_replay(self, request: Request) -> Response:
        module = views.optional("gateway.replays")
        form = request.state.form
        if module is None:
            return PlainTextResponse("bulk replay is not part of this build", 501)
        try:
            where = parse_filter({name: form_text(form, name) for name in EventFilter.PARAMS})
        except FilterError as exc:
            return PlainTextResponse(str(exc), 400)
        job_id, _ = await run_in_threadpool(module.start, self.engine, where, force=form_text(form, "force") == "1")
        return RedirectResponse(f"{HOME}/replays/{job_id}", 303)

    async def replay_job(self, request: Request) -> Response:
        module = views.optional("gateway.replays")
        job = await run_in_threadpool(module.status, self.engine, request.path_params["id"]) if module else None
        if job is None:
            return self.render(request, "missing.html", {"what": f"replay job {request.path_params['id']}"}, 404)
        return self.render(request, "replay_job.html", {"job": job})

    async def cancel_replay(self, request: Request) -> Response:
        module = views.optional("gateway.replays")
        if module is not None:
            await run_in_threadpool(module.cancel, self.engine, request.path_params["id"])
        return RedirectResponse(f"{HOME}/replays/{request.path_params['id']}", 303)

    # -- providers, rejections -----------------------------------------------------------

    async def providers(self, request: Request) -> Response:
        module = views.optional("gateway.pausing")
        states = await run_in_threadpool(module.states, self.engine, self.console.providers) if module else None
        return self.render(request, "providers.html", {"states": states})

    async def pause_or_resume(self, request: Request) -> Response:
        module = views.optional("gateway.pausing")
        name, action = request.path_params["name"], request.path_params["action"]
        if module is None or action not in ("pause", "resume") or name not in self.console.config.providers:
            return PlainTextResponse(f"cannot {action} {name}", 404)
        await run_in_threadpool(getattr(module, action), self.engine, name)
        return RedirectResponse(f"{HOME}/providers", 303)

    async def rejections(self, request: Request) -> Response:
        module = views.optional("gateway.rejections")
        provider = request.query_params.get("provider") or None
        found = await run_in_threadpool(module.recent, self.engine, provider, 200) if module else None
        return self.render(request, "rejections.html", {"rejections": found, "provider": provider})

    def routes(self) -> list[Route]:
        page = self.page
        return [
            Route(HOME, page(self.events)),
            Route(f"{HOME}/login", self.login, methods=["POST"]),
            Route(f"{HOME}/logout", page(self.logout, changes=True), methods=["POST"]),
            Route(
                f"{HOME}/events/{{provider}}/{{event_id:path}}/replay",
                page(self.replay_event, changes=True),
                methods=["POST"],
            ),
            Route(f"{HOME}/events/{{provider}}/{{event_id:path}}", page(self.event)),
            Route(f"{HOME}/resources/{{provider}}/{{resource_id:path}}", page(self.resource)),
            Route(f"{HOME}/failure-groups", page(self.failure_groups)),
            Route(f"{HOME}/replays/new", page(self.replay_preview)),
            Route(f"{HOME}/replays", page(self.start_replay, changes=True), methods=["POST"]),
            Route(f"{HOME}/replays/{{id:int}}", page(self.replay_job)),
            Route(f"{HOME}/replays/{{id:int}}/cancel", page(self.cancel_replay, changes=True), methods=["POST"]),
            Route(f"{HOME}/providers", page(self.providers)),
            Route(f"{HOME}/providers/{{name}}/{{action}}", page(self.pause_or_resume, changes=True), methods=["POST"]),
            Route(f"{HOME}/rejections", page(self.rejections)),
        ]


def views_limit(params: Any) -> int:
    raw = params.get("limit", "")
    return min(int(raw), eventlog.MAX_PAGE) if raw.isdigit() and int(raw) > 0 else 50
