"""Spend guards of the daemon (docs/reports.md, "Spend spikes and forecast"): an hourly
spike check per tenant (a fraud guard) and a month-end forecast against the budget.

A periodic job (switchd/watchers.py Periodic) reads the tenants' spend from the CDRs, sets
the gauges, and alerts like a budget does: a log line, a counter and a signed webhook
queued on CallEvents (the outbox delivers it). Each alert fires once per period (the
clock hour for a spike, the month for the forecast), across restarts and daemons: the
daemon whose INSERT into `spend_alerts` wins is the one that alerts. The rules are
dialplan/spend.py's.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Callable

import psycopg

from dialplan import spend
from switchd import metrics
from switchd.adapters.db import green

log = logging.getLogger(__name__)

# Spend is the CDRs' cost. This hour and the baseline count calls by when they ended (when
# their cost became known); the month counts calls that started in it, as budgets do.
# What ended before this hour is summed once per hour (_PAST); each check then reads only
# the calls that ended since the hour began (_NOW), so a check stays cheap all month.
_PAST = """
SELECT tenant,
       COALESCE(sum(cost) FILTER (WHERE ended_at >= %(base_from)s), 0) AS baseline_total,
       COALESCE(sum(cost) FILTER (WHERE started_at >= %(month)s
                                    AND started_at < %(next_month)s), 0) AS month_before
FROM calls
WHERE tenant IS NOT NULL AND ended_at >= LEAST(%(base_from)s, %(month)s) AND ended_at < %(hour)s
GROUP BY tenant"""

_NOW = """
SELECT tenant, COALESCE(sum(cost), 0) AS this_hour,
       COALESCE(sum(cost) FILTER (WHERE started_at >= %(month)s
                                    AND started_at < %(next_month)s), 0) AS month_now
FROM calls
WHERE tenant IS NOT NULL AND ended_at >= %(hour)s AND ended_at < %(now)s
GROUP BY tenant"""

_TENANTS = "SELECT name, monthly_budget FROM tenants WHERE enabled ORDER BY name"

_CLAIM = """
INSERT INTO spend_alerts (tenant, kind, period_start, value, threshold)
VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING tenant"""


@dataclass(frozen=True)
class SpendAlert:
    tenant: str
    kind: str                  # 'spike' | 'forecast'
    period_start: datetime     # the hour, or the month
    value: Decimal             # this hour's spend, or the month-end forecast
    threshold: Decimal         # what it passed: factor × baseline (or the floor), the budget
    baseline: Decimal | None = None       # spike: mean spend per hour
    spent: Decimal | None = None          # forecast: month-to-date spend


class SpendWatch:
    """`check()` once per interval; `alert(SpendAlert)` is called for each new alert
    after its log line and counter (the daemon queues the webhook there)."""

    def __init__(self, db_url: str, *, factor: Decimal, floor: Decimal, baseline_hours: int,
                 forecast_min: timedelta, alert: Callable[[SpendAlert], None] | None = None,
                 precision: int = 6, now: Callable[[], datetime] | None = None):
        if baseline_hours <= 0:
            raise ValueError("baseline_hours must be > 0")
        self.db_url = db_url
        self.factor, self.floor = Decimal(factor), Decimal(floor)
        self.baseline_hours, self.forecast_min = baseline_hours, forecast_min
        self.alert, self.precision = alert, precision
        self.now = now or (lambda: datetime.now(timezone.utc))
        # (hour, {tenant: (baseline total, month spend of calls ended before the hour)}):
        # the past changes only when the hour turns, so it is summed once per hour.
        self._past: tuple[datetime, dict] | None = None
        self._shown: set[str] = set()       # tenants whose gauges are exposed

    def check(self) -> list[SpendAlert]:
        """Read every enabled tenant's figures, move the gauges, raise new alerts."""
        now = self.now()
        hour = spend.hour_start(now)
        month, next_month = spend.month_bounds(now)
        params = {"now": now, "hour": hour, "month": month, "next_month": next_month,
                  "base_from": hour - timedelta(hours=self.baseline_hours)}
        zero = (Decimal(0), Decimal(0))
        raised = []
        with green.connect(self.db_url, autocommit=True) as conn:
            if self._past is None or self._past[0] != hour:
                self._past = (hour, {t: (b, m) for t, b, m in conn.execute(_PAST, params)})
            past = self._past[1]
            current = {t: (h, m) for t, h, m in conn.execute(_NOW, params)}
            tenants = conn.execute(_TENANTS).fetchall()
            self._forget(self._shown - {t for t, _ in tenants})
            for tenant, budget in tenants:
                self._shown.add(tenant)
                base_total, month_before = past.get(tenant, zero)
                this_hour, month_now = current.get(tenant, zero)
                spent = month_before + month_now
                baseline = spend.baseline_per_hour(base_total, self.baseline_hours,
                                                   self.precision)
                forecast = spend.month_forecast(spent, now, self.precision)
                metrics.TENANT_HOUR_SPEND.labels(tenant).set(float(this_hour))
                metrics.TENANT_HOUR_BASELINE.labels(tenant).set(float(baseline))
                metrics.TENANT_MONTH_FORECAST.labels(tenant).set(float(forecast))
                found = []
                if spend.is_spike(this_hour, baseline, self.factor, self.floor):
                    found.append(SpendAlert(tenant, "spike", hour, this_hour,
                                            max(self.factor * baseline, self.floor),
                                            baseline=baseline))
                if spend.forecast_exceeds(forecast, budget, now, self.forecast_min):
                    found.append(SpendAlert(tenant, "forecast", month, forecast, budget,
                                            spent=spent))
                for candidate in found:
                    if self._claim(conn, candidate):
                        raised.append(candidate)
        for a in raised:
            self._announce(a)
        return raised

    def _forget(self, gone: set[str]) -> None:
        """Drop the gauges of tenants deleted or disabled since the last check."""
        for tenant in gone:
            for gauge in (metrics.TENANT_HOUR_SPEND, metrics.TENANT_HOUR_BASELINE,
                          metrics.TENANT_MONTH_FORECAST):
                try:
                    gauge.remove(tenant)
                except KeyError:
                    pass
        self._shown -= gone

    @staticmethod
    def _claim(conn: psycopg.Connection, a: SpendAlert) -> bool:
        return conn.execute(_CLAIM, (a.tenant, a.kind, a.period_start, a.value,
                                     a.threshold)).fetchone() is not None

    def _announce(self, a: SpendAlert) -> None:
        metrics.SPEND_ALERTS.labels(a.tenant, a.kind).inc()
        if a.kind == "spike":
            log.warning("tenant %s spend spike: %s this hour (from %s) against a baseline of "
                        "%s per hour; alert threshold %s", a.tenant, a.value,
                        a.period_start.isoformat(), a.baseline, a.threshold,
                        extra={"tenant": a.tenant})
        else:
            log.warning("tenant %s month-end forecast %s exceeds its budget %s (%s spent so "
                        "far in %s)", a.tenant, a.value, a.threshold, a.spent,
                        f"{a.period_start:%Y-%m}", extra={"tenant": a.tenant})
        if self.alert is not None:
            self.alert(a)


def webhook_data(a: SpendAlert) -> dict:
    """The `data` of the spend.spike / spend.forecast webhook (docs/reports.md)."""
    if a.kind == "spike":
        return {"hour": a.period_start.isoformat(), "spent": str(a.value),
                "baseline_per_hour": str(a.baseline), "threshold": str(a.threshold)}
    return {"month": f"{a.period_start:%Y-%m}", "forecast": str(a.value),
            "spent": str(a.spent), "monthly_budget": str(a.threshold)}


def period_key(a: SpendAlert) -> str:
    return f"{a.period_start:%Y-%m-%dT%H}" if a.kind == "spike" else f"{a.period_start:%Y-%m}"


def from_config(cfg, db_url: str | None, call_events) -> SpendWatch | None:
    """The daemon's SpendWatch (spend_watch.* settings), alerting through `call_events`
    (webhooks.CallEvents); None when turned off or without a database."""
    if not db_url or not cfg["spend_watch.interval"]:
        return None

    def queue(a: SpendAlert) -> None:
        call_events.spend_alert(a.tenant, a.kind, period_key(a), webhook_data(a),
                                datetime.now(timezone.utc))

    return SpendWatch(db_url, factor=Decimal(str(cfg["spend_watch.spike_factor"])),
                      floor=Decimal(cfg["spend_watch.spike_floor"]),
                      baseline_hours=cfg["spend_watch.baseline_hours"],
                      forecast_min=timedelta(hours=cfg["spend_watch.forecast_min_hours"]),
                      alert=queue, precision=cfg["rating.precision"])
