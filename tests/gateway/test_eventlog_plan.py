"""The "waiting behind event N" of events list and the sweep: one index probe per event, however long the backlog.

Measured before: with 20,000 unfinished events on one resource among 300,000, ``events list``
took 280 ms and a sweep pass 2.3 s on SQLite (1.6 s on PostgreSQL), every pass of every worker;
after, 9 ms and 4 ms. SQLite uses a partial index only when the query spells its condition to
the letter, so the plan is what is asserted here (on SQLite, which the planner decides alike for
any table size); the figures come from a one-off measurement and are not asserted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from gateway.database import create_store_engine
from gateway.eventlog import EventFilter, waiting_behind
from gateway.models import QUEUED, RECEIVED, events
from gateway.schema import prepare_store


def test_the_waiting_behind_probe_uses_the_unfinished_order_index_without_sorting(tmp_path: Path) -> None:
    engine = create_store_engine(f"sqlite:///{tmp_path}/plan.db")
    prepare_store(engine, upgrade=True)
    query = select(events.c.id, waiting_behind().label("behind")).where(
        events.c.status.in_((RECEIVED, QUEUED)), events.c.sweep_after <= 1.0
    )
    compiled = query.compile(engine, compile_kwargs={"render_postcompile": True})
    params = tuple(compiled.params[name] for name in compiled.positiontup or ())
    with engine.connect() as conn:
        plan = [row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", params)]
    subquery = plan[plan.index("CORRELATED SCALAR SUBQUERY 1") + 1 :]
    assert any("ix_hookgate_events_unfinished_order_sqlite" in step for step in subquery), plan
    assert not any("TEMP B-TREE" in step for step in subquery), plan


@pytest.mark.parametrize(
    ("params", "index"),
    [
        ({"provider": "stripe", "resource_id": "res_1"}, "ix_hookgate_events_resource_id"),
        ({"status": "failed", "event_id": "evt_1"}, "ix_hookgate_events_event_id"),
        ({"provider": "stripe", "status": "failed", "group": "h:KeyError"}, "ix_hookgate_events_error_group"),
        ({"provider": "stripe"}, "ix_hookgate_events_provider_id"),
        ({"status": "failed"}, "ix_hookgate_events_status_id"),
    ],
)
def test_a_filter_naming_a_few_events_reads_their_index(tmp_path: Path, params: dict[str, str], index: str) -> None:
    """Measured on 1,000,000 events (bench/admin_list.py): provider + resource id took 200 ms on
    (provider, id), 3 ms on the resource's index; a provider or a status alone reads its own."""
    engine = create_store_engine(f"sqlite:///{tmp_path}/plan.db")
    prepare_store(engine, upgrade=True)
    query = select(events.c.id).where(*EventFilter.from_params(params).conditions()).order_by(events.c.id.desc())
    compiled = query.compile(engine, compile_kwargs={"render_postcompile": True})
    values = tuple(compiled.params[name] for name in compiled.positiontup or ())
    with engine.connect() as conn:
        plan = " / ".join(row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", values))
    assert f"INDEX {index} " in plan, plan


def test_the_failure_group_index_holds_only_events_in_a_group(engine: Engine) -> None:
    """Every change of an ungrouped event's status (nearly all changes) used to move its entry in
    this index too: partial, it holds only failing events, which every query by group implies."""
    index = "ix_hookgate_events_error_group"
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            found = conn.exec_driver_sql("SELECT indexdef FROM pg_indexes WHERE indexname = %s", (index,))
        else:
            found = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?", (index,))
        definition = found.scalar_one()
    assert "error_group IS NOT NULL" in definition, definition
