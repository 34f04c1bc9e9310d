"""store.py against a real PostgreSQL: health, decisions, spend, summary (reports:
test_reports.py)."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from switchd.adapters.db import store
from switchd.adapters.db.cdr_writer import CallRecord, write_batch
from switchd.admin.provision import provision

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "provision.toml"
T0 = datetime(2025, 3, 10, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def conn(migrated_pg_url):
    provision(migrated_pg_url, EXAMPLE)
    with psycopg.connect(migrated_pg_url, autocommit=True) as c:
        yield c


def _call(uuid_, carrier, first, answered=True, cost="0.100000", billed=60, start=T0,
          tenant="acme", talk=60):
    return CallRecord(
        call_uuid=uuid_, direction="outbound", tenant=tenant, destination="+442079460000",
        started_at=start, answered_at=start + timedelta(seconds=3) if answered else None,
        ended_at=start + timedelta(seconds=3 + (talk if answered else 0)),
        hangup_cause="NORMAL_CLEARING" if answered else "NO_ANSWER", carrier=carrier,
        first_choice_carrier=first, attempts=1, billed_seconds=billed if answered else 0,
        cost=Decimal(cost) if answered else Decimal(0))


def test_world_empty_database(migrated_pg_url):
    with psycopg.connect(migrated_pg_url) as c:
        world = store.load_world(c)
    assert world.tenants == {} and world.carriers == {}


def test_carrier_health_roundtrip(conn):
    health = store.load_carrier_health(conn)
    assert health["alpha"] == (100, 0, None)
    assert store.save_carrier_health(conn, "alpha", 45, 10, T0)
    assert store.load_carrier_health(conn)["alpha"] == (45, 10, T0)
    assert not store.save_carrier_health(conn, "nope", 1, 1, None)


def test_routing_decisions_batch_idempotent(conn):
    rid = uuid.uuid4()
    rows = [{"id": rid, "call_uuid": "c1", "tenant": "acme", "direction": "outbound",
             "destination": "+442079460000", "result": "routed", "reason": "lcr",
             "candidates": [{"carrier": "alpha", "rate": Decimal("0.0125")}],
             "chosen": ["alpha"], "elapsed_us": 120},
            {"id": uuid.uuid4(), "direction": "outbound", "result": "refused",
             "reason": "no_route", "sip_code": 404}]
    store.insert_routing_decisions(conn, rows)
    store.insert_routing_decisions(conn, rows[:1])   # replay: no error, no duplicate
    assert conn.execute("SELECT count(*) FROM routing_decisions").fetchone()[0] == 2
    cand = conn.execute("SELECT candidates FROM routing_decisions WHERE id = %s",
                        (rid,)).fetchone()[0]
    assert cand == [{"carrier": "alpha", "rate": "0.0125"}]   # exact, not a float
    with pytest.raises(ValueError, match="unknown keys"):
        store.insert_routing_decisions(conn, [{"id": uuid.uuid4(), "bogus": 1}])


def test_month_spend_is_decimal_and_charged_to_the_month_each_call_started(conn):
    from switchd.accounting.budgets import month_spend
    write_batch(conn, [
        ("call", _call("a", "alpha", "alpha", cost="1.100000")),
        ("call", _call("b", "alpha", "alpha", cost="2.200001")),
        ("call", _call("c", "alpha", "alpha", cost="9", start=T0 + timedelta(days=30))),
        ("call", _call("d", "alpha", "alpha", cost="5", tenant="other")),
        # started on the last evening of March, ended in April: March's money
        ("call", _call("e", "alpha", "alpha", cost="0.5", talk=3600,
                       start=datetime(2025, 3, 31, 23, 30, tzinfo=timezone.utc))),
    ])
    spend = month_spend(conn, datetime(2025, 4, 15, tzinfo=timezone.utc))
    assert spend == {("acme", "2025-03"): Decimal("3.800001"), ("acme", "2025-04"): Decimal("9"),
                     ("other", "2025-03"): Decimal("5")}
    assert all(isinstance(v, Decimal) for v in spend.values())


def test_summary_shape(conn):
    write_batch(conn, [
        ("call", _call("a", "alpha", "alpha", cost="0.100000")),
        ("call", _call("b", "bravo", "alpha", cost="0.200000", billed=61)),   # failover
        ("call", _call("c", "alpha", "alpha", answered=False)),
    ])
    s = store.summary(conn)
    assert s == {"calls": 3, "answered": 2, "failed": 1, "total_cost": "0.300000",
                 "failovers": 1, "cdrs_stored": 3,
                 "by_carrier": {
                     "alpha": {"calls": 2, "answered": 1, "billed_seconds": 60, "cost": "0.100000"},
                     "bravo": {"calls": 1, "answered": 1, "billed_seconds": 61, "cost": "0.200000"}}}
    later = store.summary(conn, since=T0 + timedelta(hours=1))
    assert later["calls"] == 0 and later["cdrs_stored"] == 3
