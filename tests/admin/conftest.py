"""Fixtures of the console tests: the intake with the console on, a logged-in HTTP client, rows."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import insert

from gateway.models import events, resources
from tests.conftest import Hookgate

TOKEN = "console-test-token-3f9a1c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def console(hookgate: Hookgate) -> Hookgate:
    """The intake with the console on (``HOOKGATE_ADMIN_TOKEN`` = :data:`TOKEN`)."""
    return hookgate.start_intake(admin_token=TOKEN)


@pytest.fixture
def api(console: Hookgate) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=console.url + "/admin/api", headers=AUTH, timeout=30) as client:
        yield client


def log_in(url: str) -> httpx.Client:
    """A browser-like client with a console session; its ``csrf`` attribute is the page's proof."""
    client = httpx.Client(base_url=url, timeout=30, headers={"Sec-Fetch-Site": "same-origin"})
    answer = client.post("/admin/login", data={"token": TOKEN, "next": "/admin"})
    assert answer.status_code == 303, answer.text
    page = client.get("/admin")
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text
    client.csrf = found.group(1)  # type: ignore[attr-defined]
    return client


def store_event(
    engine: Any,
    event_id: str,
    *,
    provider: str = "stripe",
    event_type: str = "invoice.paid",
    status: str = "processed",
    resource: str | None = None,
    last_error: str | None = None,
    body: bytes = b'{"id": "x"}',
    headers: str = '{"stripe-signature": "t=1,v1=abc"}',
    received_at: float | None = None,
) -> int:
    """An event row as the workers leave it; its store id."""
    now = time.time()
    with engine.begin() as conn:
        return int(
            conn.execute(
                insert(events)
                .values(
                    provider=provider,
                    event_id=event_id,
                    event_type=event_type,
                    resource_id=resource,
                    body=body,
                    headers=headers,
                    received_at=received_at or now,
                    status=status,
                    attempts=1 if status in ("processed", "failed") else 0,
                    last_error=last_error,
                    updated_at=now,
                    processed_at=now if status == "processed" else None,
                )
                .returning(events.c.id)
            ).scalar_one()
        )


def store_resource(engine: Any, provider: str, resource_id: str, state: str, sequence: int = 1) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(resources).values(
                provider=provider,
                resource_id=resource_id,
                resource_type="thing",
                applied_sequence=sequence,
                applied_event_id=f"evt-{sequence}",
                state=state,
                fetched_at=time.time(),
                deleted=False,
                updated_at=time.time(),
            )
        )
