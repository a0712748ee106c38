"""The event log's filter and its keyset pages, on the store the run uses (SQLite or PostgreSQL)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import insert

from gateway.eventlog import EventFilter, FilterError, decode_cursor, list_events, parse_time
from gateway.models import FAILED, PROCESSED, PRUNED, QUEUED, events


def add(engine: Any, n: int, **values: Any) -> None:
    """Event ``evt_n``: an acme ``thing.updated`` of resource ``res_{n % 3}``, processed, unless
    ``values`` say otherwise."""
    row = {
        "provider": "acme",
        "event_id": f"evt_{n}",
        "event_type": "thing.updated",
        "resource_id": f"res_{n % 3}",
        "body": b"{}",
        "headers": "{}",
        "received_at": 1_000_000.0 + n,
        "status": PROCESSED,
        "attempts": 1,
        "updated_at": 1_000_000.0 + n,
        **values,
    }
    with engine.begin() as conn:
        conn.execute(insert(events).values(**row))


def ids(engine: Any, where: EventFilter, limit: int = 50) -> list[str]:
    return [row.event_id for row in list_events(engine, where, limit=limit).rows]


def test_keyset_pages_hold_every_event_once_while_events_arrive(engine: Any) -> None:
    for n in range(25):
        add(engine, n)
    seen: list[str] = []
    cursor = None
    arriving = 100
    while True:
        page = list_events(engine, EventFilter(provider="acme"), cursor=cursor, limit=7)
        seen += [row.event_id for row in page.rows]
        add(engine, arriving)  # newer than everything listed: it belongs before the first page
        arriving += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [f"evt_{n}" for n in reversed(range(25))]
    assert ids(engine, EventFilter(), limit=2) == [f"evt_{arriving - 1}", f"evt_{arriving - 2}"]


def test_filters_combine_and_types_match_as_handler_patterns_do(engine: Any) -> None:
    add(engine, 1, event_type="invoice.paid", status=FAILED, last_error="app.h: KeyError: 'plan'", error_group="g1")
    add(engine, 2, event_type="invoice.created", provider="stripe")
    add(engine, 3, event_type="invoicex", status=QUEUED, last_error="TimeoutError: SMTP did not answer")
    add(engine, 4, event_type="orders/create", provider="shopify")
    add(engine, 5, event_type="invoice.paid", status=PRUNED)
    assert ids(engine, EventFilter(type="invoice.*")) == ["evt_2", "evt_1"]
    assert ids(engine, EventFilter(type="orders/*")) == ["evt_4"]
    assert ids(engine, EventFilter(type="invoicex")) == ["evt_3"]
    assert ids(engine, EventFilter(type="*")) == ["evt_4", "evt_3", "evt_2", "evt_1"]
    assert ids(engine, EventFilter(type="invoice.*", provider="acme")) == ["evt_1"]
    assert ids(engine, EventFilter(status=FAILED)) == ["evt_1"]
    assert ids(engine, EventFilter(error="smtp")) == ["evt_3"]
    assert ids(engine, EventFilter(error="%")) == []  # LIKE's wildcards are plain text
    assert ids(engine, EventFilter(group="g1")) == ["evt_1"]
    assert ids(engine, EventFilter(q="evt_2")) == ["evt_2"]
    assert ids(engine, EventFilter(q="res_1")) == ["evt_4", "evt_1"]
    assert ids(engine, EventFilter(resource_id="res_0")) == ["evt_3"]
    assert ids(engine, EventFilter(event_id="evt_5")) == []  # pruned: only its id is kept
    assert ids(engine, EventFilter(received_from=1_000_002, received_to=1_000_004)) == ["evt_3", "evt_2"]


def test_filters_read_from_request_parameters_and_back() -> None:
    where = EventFilter.from_params(
        {"provider": "stripe", "type": "invoice.*", "status": "", "since": "2026-12-05T10:00:00Z", "x": "1"}
    )
    assert where == EventFilter(provider="stripe", type="invoice.*", received_from=1_796_464_800.0)
    assert EventFilter.from_params(where.to_params()) == where
    assert parse_time("2026-12-05T10:00:00") == parse_time("1796464800")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"status": "done"}, "unknown status 'done'"),
        ({"type": "invoice*"}, "use an exact type, 'prefix.*', or '*'"),
        ({"type": "*.paid"}, "use an exact type"),
        ({"until": "yesterday"}, "is not a time"),
    ],
)
def test_unusable_filters_are_refused_with_the_reason(params: dict[str, str], message: str) -> None:
    with pytest.raises(FilterError, match=message):
        EventFilter.from_params(params)


@pytest.mark.parametrize("cursor", ["", "abc", "aWQ6eA", "bm9wZTox"])
def test_a_cursor_this_list_did_not_make_is_refused(cursor: str) -> None:
    with pytest.raises(FilterError, match="not a cursor"):
        decode_cursor(cursor)


def test_a_page_is_capped_and_the_last_has_no_cursor(engine: Any) -> None:
    now = time.time()
    for n in range(3):
        add(engine, n, received_at=now)
    page = list_events(engine, EventFilter(), limit=3)
    assert len(page.rows) == 3
    assert page.next_cursor is None
    assert list_events(engine, EventFilter(), limit=2).next_cursor is not None
