"""The spend watch inside `switchd run`: the periodic job reads the CDRs, raises the
month-end forecast alert once, counts it on /metrics and queues its signed webhook into
the outbox (the daemon's Outbox greenlet writes it)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import psycopg
import pytest

from conftest import E2E_PASSWORD
from daemon_harness import DaemonProcess, metric
from switchd.adapters.db.cdr_writer import CallRecord, write_batch
from switchd.sim import Simulator


@pytest.fixture
def daemon(world_url, tmp_path):
    sim = Simulator(password=E2E_PASSWORD, heartbeat_interval=None)
    _, port = sim.start()
    proc = DaemonProcess(world_url, port, E2E_PASSWORD, tmp_path, extra_env={
        "SWITCHD_SPEND_WATCH_INTERVAL": "0.2", "SWITCHD_SPEND_WATCH_FORECAST_MIN_HOURS": "0"})
    try:
        yield proc.start()
    finally:
        rc = proc.terminate()
        sim.stop()
        assert rc == 0, proc.log()[-3000:]


def test_forecast_over_budget_alerts_once_from_the_daemon(world_url, daemon):
    now = datetime.now(timezone.utc)
    with psycopg.connect(world_url, autocommit=True) as conn:
        conn.execute("INSERT INTO webhooks (tenant_id, url, secret) SELECT id, "
                     "'http://127.0.0.1:9/hook', 'whsec_test' FROM tenants WHERE name = 'acme'")
        # acme's budget is 5000: a month-to-date spend of 5000.01 forecasts more than it.
        write_batch(conn, [("call", CallRecord(
            call_uuid="big", direction="outbound", tenant="acme",
            started_at=now - timedelta(seconds=70), answered_at=now - timedelta(seconds=60),
            ended_at=now - timedelta(seconds=1), hangup_cause="NORMAL_CLEARING",
            carrier="budgetel", attempts=1, billed_seconds=60, cost=Decimal("5000.01")))])

        def outbox():
            rows = conn.execute("SELECT event, body->'data'->>'spent' FROM webhook_outbox "
                                "WHERE tenant = 'acme' ORDER BY event").fetchall()
            return rows if ("spend.forecast", "5000.010000") in rows else None

        # Also a spike (5000.01 in one hour against no history), unless the clock hour
        # turned between the call's end and the check.
        rows = daemon.wait_until(outbox, what="the spend.forecast webhook in the outbox")
        assert rows in ([("spend.forecast", "5000.010000")],
                        [("spend.forecast", "5000.010000"), ("spend.spike", "5000.010000")])
        assert ("forecast",) in conn.execute("SELECT kind FROM spend_alerts "
                                             "WHERE tenant = 'acme'").fetchall()
    assert metric(daemon, "switchd_spend_alerts_total", tenant="acme", kind="forecast") == 1
    assert metric(daemon, "switchd_tenant_month_forecast", tenant="acme") >= 5000.01
    # Later checks of the same month raise nothing more.
    daemon.wait_until(lambda: metric(daemon, "switchd_tenant_hour_spend", tenant="acme")
                      >= 5000.01 or None, what="a later check")
    assert metric(daemon, "switchd_spend_alerts_total", tenant="acme", kind="forecast") == 1
