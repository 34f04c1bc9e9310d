"""dialplan/quality.py and dialplan/spend.py: report ratios and spend guards, by hand."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from dialplan import quality, spend

UTC = timezone.utc


def test_asr_is_answered_over_attempts_in_percent():
    assert quality.asr(1, 3) == Decimal("33.33")
    assert quality.asr(2, 3) == Decimal("66.67")        # half-up
    assert quality.asr(0, 5) == Decimal("0.00")
    assert quality.asr(0, 0) is None                    # no attempts: no ratio


def test_ner_counts_only_network_failures_against_the_network():
    # 10 attempts: 4 answered, 2 busy/declined, 1 rang out, 1 caller cancel, 1 carrier
    # failure, 1 our own switch -> 8 delivered of 10.
    counts = {"answered": 3, "max_duration": 1, "callee": 2, "no_answer": 1, "cancelled": 1,
              "carrier_failure": 1, "local": 1}
    assert quality.ner(counts) == Decimal("80.00")
    assert quality.ner({"carrier_failure": 3}) == Decimal("0.00")
    assert quality.ner({}) is None
    assert quality.NETWORK_FAILURES == {"carrier_failure", "local"}


def test_leg_disposition_falls_back_to_the_cause_rules():
    assert quality.leg_disposition("callee", "NORMAL_TEMPORARY_FAILURE", 503, False) == "callee"
    assert quality.leg_disposition(None, "USER_BUSY", 486, False) == "callee"
    assert quality.leg_disposition(None, "NORMAL_TEMPORARY_FAILURE", 503, False) == "carrier_failure"
    assert quality.leg_disposition(None, "NO_ANSWER", None, False) == "no_answer"
    assert quality.leg_disposition(None, "NORMAL_CLEARING", None, True) == "answered"


def test_acd_and_pdd_means():
    assert quality.acd(Decimal("191"), 4) == Decimal("47.8")      # 47.75 half-up
    assert quality.acd(0, 0) is None
    assert quality.mean_pdd_ms(9000, 4) == 2250
    assert quality.mean_pdd_ms(5, 2) == 3                          # 2.5 half-up
    assert quality.mean_pdd_ms(0, 0) is None


def test_top_causes_most_frequent_first_ties_by_name():
    counts = {"USER_BUSY": 2, "NO_ANSWER": 2, None: 1, "NORMAL_TEMPORARY_FAILURE": 5}
    assert quality.top_causes(counts, 3) == [("NORMAL_TEMPORARY_FAILURE", 5), ("NO_ANSWER", 2),
                                             ("USER_BUSY", 2)]
    assert quality.top_causes(counts, 9)[-1] == ("UNKNOWN", 1)
    assert quality.top_causes(counts, 0) == []


def test_spike_needs_the_floor_and_the_factor():
    factor, floor = Decimal(4), Decimal(20)
    assert spend.is_spike(Decimal("40.01"), Decimal(10), factor, floor)
    assert not spend.is_spike(Decimal("40"), Decimal(10), factor, floor)     # exactly 4×: no
    assert not spend.is_spike(Decimal("19.99"), Decimal(0), factor, floor)   # under the floor
    assert spend.is_spike(Decimal("20"), Decimal(0), factor, floor)          # no history
    with pytest.raises(TypeError):
        spend.is_spike(40.5, Decimal(10), factor, floor)


def test_baseline_is_the_mean_hour():
    assert spend.baseline_per_hour(Decimal("240"), 24) == Decimal("10.000000")
    assert spend.baseline_per_hour(Decimal("1"), 3) == Decimal("0.333333")
    with pytest.raises(ValueError):
        spend.baseline_per_hour(Decimal(1), 0)


def test_month_bounds_and_hour_start():
    assert spend.month_bounds(datetime(2025, 12, 31, 23, 59, tzinfo=UTC)) == \
        (datetime(2025, 12, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC))
    assert spend.month_bounds(datetime(2024, 2, 10, tzinfo=UTC))[1] == datetime(2024, 3, 1, tzinfo=UTC)
    assert spend.hour_start(datetime(2025, 3, 10, 12, 34, 56, 7, tzinfo=UTC)) == \
        datetime(2025, 3, 10, 12, tzinfo=UTC)


def test_month_forecast_is_linear():
    # April has 30 days: 100 spent by the end of day 10 -> 300 by the month's end.
    now = datetime(2025, 4, 11, tzinfo=UTC)
    assert spend.month_forecast(Decimal(100), now) == Decimal("300.000000")
    # 6 hours into March (744 hours): 3 spent -> 3 × 744 / 6 = 372
    assert spend.month_forecast(Decimal(3), datetime(2025, 3, 1, 6, tzinfo=UTC)) == Decimal("372.000000")
    assert spend.month_forecast(Decimal(5), datetime(2025, 3, 1, tzinfo=UTC)) == Decimal(5)


def test_forecast_alerts_only_over_a_budget_after_the_minimum_elapsed():
    day2 = datetime(2025, 4, 3, tzinfo=UTC)                        # 48 h into April
    two_days = timedelta(hours=48)
    assert spend.forecast_exceeds(Decimal("501"), Decimal(500), day2, two_days)
    assert not spend.forecast_exceeds(Decimal("500"), Decimal(500), day2, two_days)
    assert not spend.forecast_exceeds(Decimal("501"), None, day2, two_days)
    assert not spend.forecast_exceeds(Decimal("501"), Decimal(500), day2 - timedelta(seconds=1),
                                      two_days)
