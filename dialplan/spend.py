"""Spend guards (docs/reports.md, "Spend spikes and forecast"): pure rules, Decimal only.

- Hourly spike (fraud guard): this clock hour's spend so far against the tenant's
  baseline, the mean spend per hour over the previous complete hours (hours without
  calls count as 0). A spike is `this_hour >= floor` and `this_hour > factor × baseline`:
  the floor keeps small tenants from alerting on cents; a tenant with no history alerts
  as soon as an hour reaches the floor.
- Month-end forecast: month-to-date spend extrapolated linearly over the whole month,
  `spent × month_length / elapsed`. It alerts when it exceeds the monthly budget, and only
  once `min_elapsed` of the month has passed (one early call says little about a month).
"""
from __future__ import annotations

from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

__all__ = ["hour_start", "month_bounds", "baseline_per_hour", "is_spike", "month_forecast",
           "forecast_exceeds"]

_US = timedelta(microseconds=1)


def hour_start(at: datetime) -> datetime:
    """The start of the clock hour holding `at` (in `at`'s time zone; switchd uses UTC)."""
    return at.replace(minute=0, second=0, microsecond=0)


def month_bounds(at: datetime) -> tuple[datetime, datetime]:
    """[first instant of `at`'s month, first instant of the next month)."""
    start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    nxt = start.replace(year=start.year + 1, month=1) if start.month == 12 \
        else start.replace(month=start.month + 1)
    return start, nxt


def baseline_per_hour(spent: Decimal, hours: int, places: int = 6) -> Decimal:
    """Mean spend per hour over `hours` complete hours."""
    if hours <= 0:
        raise ValueError(f"baseline hours must be > 0, got {hours}")
    quantum = Decimal(1).scaleb(-places)
    return (Decimal(spent) / hours).quantize(quantum, rounding=ROUND_HALF_UP)


def is_spike(this_hour: Decimal, baseline: Decimal, factor: Decimal, floor: Decimal) -> bool:
    """True when this hour's spend is at least `floor` and more than `factor` × baseline."""
    for name, value in (("this_hour", this_hour), ("baseline", baseline), ("factor", factor),
                        ("floor", floor)):
        if not isinstance(value, (Decimal, int)) or isinstance(value, bool):
            raise TypeError(f"{name} must be Decimal or int, not {type(value).__name__}")
    return this_hour >= floor and this_hour > factor * baseline


def month_forecast(spent: Decimal, now: datetime, places: int = 6) -> Decimal:
    """Month-to-date spend extrapolated to the end of `now`'s month (linear)."""
    start, end = month_bounds(now)
    elapsed = (now - start) // _US
    total = (end - start) // _US
    if elapsed <= 0:
        return Decimal(spent)
    quantum = Decimal(1).scaleb(-places)
    return (Decimal(spent) * total / elapsed).quantize(quantum, rounding=ROUND_HALF_UP)


def forecast_exceeds(forecast: Decimal, budget: Decimal | None, now: datetime,
                     min_elapsed: timedelta) -> bool:
    """Should the forecast alert: a budget is set, enough of the month has passed, and
    the forecast is over the budget."""
    if budget is None:
        return False
    start, _ = month_bounds(now)
    return now - start >= min_elapsed and forecast > budget
