"""Spend guards against a real PostgreSQL with a controlled clock and hand-computed figures:
the hourly spike (fraud guard) and the month-end forecast, each alerting once per period
(log line, counter, webhook in the outbox), across restarts."""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from switchd import metrics
from switchd.accounting import spend_watch
from switchd.adapters.db.cdr_writer import CallRecord, write_batch
from switchd.admin.provision import provision
from switchd.api import webhooks
from switchd.config import load_config

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "provision.toml"
UTC = timezone.utc
NOW = datetime(2025, 4, 3, 10, 30, tzinfo=UTC)      # 58.5 h into April (720 h)


def _call(uuid_, cost, ended, started=None, tenant="acme"):
    started = started or ended - timedelta(minutes=2)
    return ("call", CallRecord(call_uuid=uuid_, direction="outbound", tenant=tenant,
                               started_at=started, answered_at=started + timedelta(seconds=5),
                               ended_at=ended, hangup_cause="NORMAL_CLEARING", carrier="alpha",
                               attempts=1, billed_seconds=60, cost=Decimal(cost)))


@pytest.fixture
def db(migrated_pg_url):
    provision(migrated_pg_url, EXAMPLE)                 # acme: monthly_budget 500
    with psycopg.connect(migrated_pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO webhooks (tenant_id, url, secret) SELECT id, "
                     "'http://127.0.0.1:9/hook', 'whsec_test' FROM tenants WHERE name = 'acme'")
        write_batch(conn, [
            # started in March: not April's spend, and before the baseline window
            _call("march", "7", datetime(2025, 4, 1, 0, 1, tzinfo=UTC),
                  started=datetime(2025, 3, 31, 23, 59, tzinfo=UTC)),
            # April, before the 24 h baseline window (which starts Apr 2 10:00)
            _call("early", "100", datetime(2025, 4, 1, 9, 0, tzinfo=UTC)),
            # the baseline: 4 × 12 = 48 in the 24 h before 10:00 -> 2 per hour
            *[_call(f"base{i}", "12", datetime(2025, 4, 2, 10 + 4 * i, 15, tzinfo=UTC))
              for i in range(4)],
            # this hour so far: 5 × 1.70 = 8.50 (under the floor of 20)
            *[_call(f"now{i}", "1.70", datetime(2025, 4, 3, 10, 1 + i, tzinfo=UTC))
              for i in range(5)],
            _call("other", "999", datetime(2025, 4, 3, 10, 2, tzinfo=UTC), tenant="zeta"),
        ])
    return migrated_pg_url


def _watch(url, clock, alerts):
    return spend_watch.SpendWatch(url, factor=Decimal(4), floor=Decimal(20), baseline_hours=24,
                                  forecast_min=timedelta(hours=48), alert=alerts.append,
                                  now=lambda: clock[0])


def _sample(name, **labels):
    return metrics.REGISTRY.get_sample_value(name, labels)


def test_spike_and_forecast_alert_once_per_period(db, caplog):
    clock, alerts = [NOW], []
    spikes = _sample("switchd_spend_alerts_total", tenant="acme", kind="spike") or 0
    watch = _watch(db, clock, alerts)
    with caplog.at_level(logging.WARNING, logger="switchd.accounting.spend_watch"):
        (forecast,) = watch.check()
    # April-started spend: 100 + 48 + 8.50 = 156.50; × 720 h / 58.5 h = 1926.153846…
    assert (forecast.tenant, forecast.kind) == ("acme", "forecast")
    assert forecast.value == Decimal("1926.153846") and forecast.threshold == Decimal(500)
    assert forecast.spent == Decimal("156.50")
    assert forecast.period_start == datetime(2025, 4, 1, tzinfo=UTC)
    assert "month-end forecast 1926.153846 exceeds its budget 500" in caplog.text
    assert _sample("switchd_tenant_hour_spend", tenant="acme") == 8.5
    assert _sample("switchd_tenant_hour_spend_baseline", tenant="acme") == 2.0
    assert _sample("switchd_tenant_month_forecast", tenant="acme") == pytest.approx(1926.153846)

    # 3 × 4.00 more this hour: 20.50 >= the floor of 20 and > 4 × 2.
    with psycopg.connect(db, autocommit=True) as conn:
        write_batch(conn, [_call(f"fraud{i}", "4.00", datetime(2025, 4, 3, 10, 20 + i, tzinfo=UTC))
                           for i in range(3)])
    (spike,) = watch.check()
    assert (spike.kind, spike.value, spike.baseline, spike.threshold) == \
        ("spike", Decimal("20.50"), Decimal("2.000000"), Decimal(20))
    assert spike.period_start == datetime(2025, 4, 3, 10, tzinfo=UTC)
    assert spend_watch.webhook_data(spike) == {
        "hour": "2025-04-03T10:00:00+00:00", "spent": "20.500000",
        "baseline_per_hour": "2.000000", "threshold": "20"}
    assert spend_watch.period_key(spike) == "2025-04-03T10"
    assert _sample("switchd_spend_alerts_total", tenant="acme", kind="spike") == spikes + 1

    assert watch.check() == []                                   # once per period
    assert _watch(db, clock, []).check() == []                   # a restart, another daemon
    clock[0] = datetime(2025, 4, 3, 11, 5, tzinfo=UTC)           # a new hour starts at 0
    assert watch.check() == []
    assert _sample("switchd_tenant_hour_spend", tenant="acme") == 0.0
    with psycopg.connect(db) as conn:
        stored = conn.execute("SELECT tenant, kind, value, threshold FROM spend_alerts "
                              "ORDER BY kind").fetchall()
    assert stored == [("acme", "forecast", Decimal("1926.153846"), Decimal("500.000000")),
                      ("acme", "spike", Decimal("20.500000"), Decimal("20.000000"))]


def test_a_tenant_without_a_budget_never_gets_a_forecast_alert(db):
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("UPDATE tenants SET monthly_budget = NULL WHERE name = 'acme'")
    assert _watch(db, [NOW], []).check() == []
    # the forecast is still measured
    assert _sample("switchd_tenant_month_forecast", tenant="acme") == pytest.approx(1926.153846)


def test_a_disabled_tenant_leaves_the_gauges(db):
    watch = _watch(db, [NOW], [])
    watch.check()
    assert _sample("switchd_tenant_hour_spend", tenant="acme") == 8.5
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("UPDATE tenants SET enabled = false WHERE name = 'acme'")
    assert watch.check() == []
    assert _sample("switchd_tenant_hour_spend", tenant="acme") is None
    assert _sample("switchd_tenant_month_forecast", tenant="acme") is None


def test_forecast_waits_for_the_minimum_part_of_the_month(db):
    early = datetime(2025, 4, 2, 23, 0, tzinfo=UTC)              # 47 h in: under 48
    assert [a.kind for a in _watch(db, [early], []).check()] == []


def test_alerts_reach_the_outbox_as_signed_webhooks(db):
    events = webhooks.CallEvents()
    cfg = load_config(None, {"SWITCHD_SPEND_WATCH_BASELINE_HOURS": "24"})
    watch = spend_watch.from_config(cfg, db, events)
    watch.now = lambda: NOW
    assert [a.kind for a in watch.check()] == ["forecast"]
    with psycopg.connect(db, autocommit=True) as conn:
        assert webhooks.write_events(conn, events.take(10), 3600) == 1
        event, call_uuid, body = conn.execute(
            "SELECT event, call_uuid, body FROM webhook_outbox").fetchone()
    assert (event, call_uuid) == ("spend.forecast", "spend:forecast:2025-04")
    assert body["data"] == {"month": "2025-04", "forecast": "1926.153846", "spent": "156.500000",
                            "monthly_budget": "500.000000"}
    assert spend_watch.from_config(load_config(None, {"SWITCHD_SPEND_WATCH_INTERVAL": "0"}),
                                   db, events) is None
