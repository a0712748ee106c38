"""The operations console: the admin API (``/admin/api/``) and its pages (``/admin``).

It exists only when ``HOOKGATE_ADMIN_TOKEN`` is set; without the token there are no ``/admin``
routes at all, so every such path is a 404. ``hookgate serve`` puts it beside the webhook
endpoint by default; ``hookgate serve --admin-only`` serves it (and ``/healthz``) alone on its
own listener, and ``--no-admin`` keeps it off a public one.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.config import Config

from . import api
from .console import Console, json_response
from .pages import Pages


def admin_routes(config: Config, engine: Engine, token: str) -> list[BaseRoute]:
    """The console's routes (API and pages) for one store and token."""
    console = Console(config, engine, token)
    return [*api.routes(console), *Pages(console).routes()]


def create_admin_app(config: Config, engine: Engine, token: str, *, prepare_schema: bool = True) -> Starlette:
    """The console alone, with ``/healthz``: what ``hookgate serve --admin-only`` serves."""
    from gateway.schema import prepare_store

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if prepare_schema:  # as the intake: a store that is behind stops the start
            await run_in_threadpool(prepare_store, engine, upgrade=False)
        try:
            yield
        finally:
            engine.dispose()

    async def healthz(request: Request) -> Response:
        return json_response(200, {"status": "ok"})

    return Starlette(routes=[Route("/healthz", healthz), *admin_routes(config, engine, token)], lifespan=lifespan)
