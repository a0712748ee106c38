"""The peer stack's endpoint: what a user writes by hand without Hookgate.

A bare Starlette app with one POST endpoint that verifies the Stripe signature with the official
SDK (``stripe.Webhook.construct_event``) and hands the event to a Dramatiq actor with
``actor.send()``, one message per request. No store, no dedupe, no ordering, no reconciliation:
the yardstick bench/side_by_side.py measures Hookgate against.

    PEER_WEBHOOK_SECRET=whsec_… PEER_REDIS_URL=redis://… uvicorn bench.peer.app:app
"""

from __future__ import annotations

import os
import time

import stripe
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.peer.tasks import customer_updated

SECRET = os.environ.get("PEER_WEBHOOK_SECRET", "")


async def webhook(request: Request) -> JSONResponse:
    received = time.time()
    body = await request.body()
    try:
        event = stripe.Webhook.construct_event(body, request.headers.get("stripe-signature", ""), SECRET)
    except (ValueError, stripe.SignatureVerificationError) as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    customer = event["data"]["object"]
    customer_updated.send(event["id"], customer["id"], int(customer["metadata"]["version"]), received)
    return JSONResponse({"status": "accepted"})


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[Route("/webhooks/stripe", webhook, methods=["POST"]), Route("/healthz", healthz, methods=["GET"])]
)
