"""The admin API: JSON under ``/admin/api/``, behind the bearer token (see :mod:`.auth`).

The endpoints of parts built separately (rejections, pause and resume, bulk replay jobs, failure
groups) answer 501 in a build that lacks them.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import eventlog
from gateway.eventlog import FilterError
from providers.errors import PayloadRejected
from providers.payload import parse_json_object

from . import views
from .console import Console, json_response, parse_filter

PREFIX = "/admin/api"
DEFAULT_LIMIT = 50


class BadRequest(Exception):
    """A request the API cannot use; answered 400 with the message."""


def page_limit(request: Request) -> int:
    raw = request.query_params.get("limit") or str(DEFAULT_LIMIT)
    if not raw.isdigit() or not 1 <= int(raw) <= eventlog.MAX_PAGE:
        raise BadRequest(f"limit: a whole number from 1 to {eventlog.MAX_PAGE}")
    return int(raw)


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; an empty body is ``{}``."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        return parse_json_object(raw)
    except PayloadRejected as exc:
        raise BadRequest(str(exc)) from None


def flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise BadRequest(f"{name}: true or false")
    return value


def missing(what: str) -> Response:
    return json_response(501, {"error": f"{what} is not part of this build"})


def routes(console: Console) -> list[Route]:
    """The API's routes, each behind :meth:`Console.api`."""
    engine = console.engine

    async def list_events(request: Request) -> Response:
        where = parse_filter(request.query_params)
        page = await run_in_threadpool(
            views.event_page, engine, where, request.query_params.get("cursor") or None, page_limit(request)
        )
        return json_response(200, page)

    async def show_event(request: Request) -> Response:
        provider, event_id = request.path_params["provider"], request.path_params["event_id"]
        detail = await run_in_threadpool(views.event_detail, engine, provider, event_id)
        if detail is None:
            return json_response(404, {"error": f"no event {provider}/{event_id}"})
        return json_response(200, detail)

    async def replay_event(request: Request) -> Response:
        provider, event_id = request.path_params["provider"], request.path_params["event_id"]
        force = flag(await json_body(request), "force")
        if await run_in_threadpool(eventlog.find_event, engine, event_id, provider) is None:
            return json_response(404, {"error": f"no event {provider}/{event_id}"})
        done = await run_in_threadpool(eventlog.replay, engine, [event_id], provider=provider, force=force)
        if not done.queued:
            return json_response(409, {"error": done.refused[0][1]})
        return json_response(202, {"status": "queued", "provider": provider, "event_id": event_id, "force": force})

    async def show_resource(request: Request) -> Response:
        provider, resource_id = request.path_params["provider"], request.path_params["resource_id"]
        cursor = request.query_params.get("cursor") or None
        detail = await run_in_threadpool(views.resource_detail, engine, provider, resource_id, cursor)
        if detail is None:
            return json_response(404, {"error": f"no resource {provider}/{resource_id}"})
        return json_response(200, detail)

    async def stats(request: Request) -> Response:
        return json_response(200, await run_in_threadpool(views.stats, engine, console.providers))

    async def failure_groups(request: Request) -> Response:
        groups = await run_in_threadpool(views.failure_groups, engine)
        return missing("failure groups") if groups is None else json_response(200, {"groups": groups})

    async def rejections(request: Request) -> Response:
        module = views.optional("gateway.rejections")
        if module is None:
            return missing("the rejection log")
        provider = request.query_params.get("provider") or None
        found = await run_in_threadpool(module.recent, engine, provider, page_limit(request))
        return json_response(200, {"rejections": found})

    async def providers(request: Request) -> Response:
        module = views.optional("gateway.pausing")
        states = await run_in_threadpool(module.states, engine, console.providers) if module else {}
        listed = [{"name": name, "state": states.get(name)} for name in console.providers]
        return json_response(200, {"providers": listed})

    async def pause_or_resume(request: Request) -> Response:
        name, action = request.path_params["name"], request.path_params["action"]
        module = views.optional("gateway.pausing")
        if action not in ("pause", "resume"):
            return json_response(404, {"error": f"no action {action}: pause or resume"})
        if module is None:
            return missing("pausing providers")
        if name not in console.config.providers:
            return json_response(404, {"error": f"no provider {name}"})
        changed = await run_in_threadpool(getattr(module, action), engine, name)
        state = "paused" if action == "pause" else "active"
        return json_response(200, {"provider": name, "state": state, "changed": changed})

    async def start_replay(request: Request) -> Response:
        module = views.optional("gateway.replays")
        if module is None:
            return missing("bulk replay")
        body = await json_body(request)
        force, dry_run = flag(body, "force"), flag(body, "dry_run")
        where = parse_filter(body)
        if dry_run:
            return json_response(200, {"count": await run_in_threadpool(module.count, engine, where, force=force)})
        job_id, count = await run_in_threadpool(module.start, engine, where, force=force)
        return json_response(202, {"id": job_id, "count": count})

    async def replay_job(request: Request) -> Response:
        module = views.optional("gateway.replays")
        if module is None:
            return missing("bulk replay")
        job_id = request.path_params["id"]
        if request.method == "DELETE":
            await run_in_threadpool(module.cancel, engine, job_id)
        status = await run_in_threadpool(module.status, engine, job_id)
        if status is None:
            return json_response(404, {"error": f"no replay job {job_id}"})
        return json_response(200, status)

    def route(path: str, endpoint: Any, methods: list[str]) -> Route:
        return Route(PREFIX + path, console.api(answer_errors(endpoint)), methods=methods)

    return [
        route("/events", list_events, ["GET"]),
        route("/events/{provider}/{event_id:path}/replay", replay_event, ["POST"]),
        route("/events/{provider}/{event_id:path}", show_event, ["GET"]),
        route("/resources/{provider}/{resource_id:path}", show_resource, ["GET"]),
        route("/stats", stats, ["GET"]),
        route("/failure-groups", failure_groups, ["GET"]),
        route("/rejections", rejections, ["GET"]),
        route("/providers", providers, ["GET"]),
        route("/providers/{name}/{action:str}", pause_or_resume, ["POST"]),
        route("/replays", start_replay, ["POST"]),
        route("/replays/{id:int}", replay_job, ["GET", "DELETE"]),
    ]


def answer_errors(handler: Any) -> Any:
    """A bad filter, cursor, limit or body is a 400 with the reason, never a 500."""

    async def answered(request: Request) -> Response:
        try:
            response: Response = await handler(request)
        except (FilterError, BadRequest) as exc:
            return json_response(400, {"error": str(exc)})
        return response

    return answered
