"""The baseline: a bare Starlette endpoint that reads the body and answers JSON."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def receive(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"status": "accepted"})


app = Starlette(routes=[Route("/webhooks/{provider}", receive, methods=["POST"])])
