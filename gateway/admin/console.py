"""The console's shared state and the guards every admin endpoint goes through."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from gateway.config import Config
from gateway.eventlog import EventFilter

from .auth import AdminAuth

Endpoint = Callable[[Request], Awaitable[Response]]
TEMPLATES = Path(__file__).parent / "templates"


def json_response(status: int, content: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def parse_filter(params: Any) -> EventFilter:
    """An :class:`EventFilter` from a query string or a JSON body. Raises FilterError."""
    return EventFilter.from_params(params)


class Console:
    """The store, the configuration and the token the console serves and checks."""

    def __init__(self, config: Config, engine: Engine, token: str) -> None:
        self.config = config
        self.engine = engine
        self.auth = AdminAuth(token)
        self.templates = Jinja2Templates(directory=TEMPLATES)

    @property
    def providers(self) -> list[str]:
        return sorted(self.config.providers)

    def api(self, handler: Endpoint) -> Endpoint:
        """``handler`` behind the bearer token: 401 without it (or with a token in the query)."""

        async def guarded(request: Request) -> Response:
            if not self.auth.bearer_ok(request):
                return json_response(
                    401,
                    {"error": "give the admin token as Authorization: Bearer <token> (never in the URL)"},
                    {"WWW-Authenticate": 'Bearer realm="hookgate-admin"'},
                )
            response = await handler(request)
            response.headers["Cache-Control"] = "no-store"
            return response

        return guarded
