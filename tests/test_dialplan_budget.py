"""The share rule and its arithmetic (dialplan/budget.py), without I/O."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from dialplan import budget as rules
from dialplan.policy import budget_seconds
from dialplan.rating import leg_cost


@dataclass(frozen=True)
class R:
    rate_per_min: Decimal
    connect_fee: Decimal = Decimal(0)
    initial_increment: int = 60
    subsequent_increment: int = 60


money = st.decimals(min_value=0, max_value=1000, places=6, allow_nan=False, allow_infinity=False)
rates = st.builds(R, st.decimals(min_value=Decimal("0.001"), max_value=5, places=6),
                  st.decimals(min_value=0, max_value=Decimal("0.5"), places=6),
                  st.sampled_from([1, 6, 30, 60]), st.sampled_from([1, 6, 60]))


def test_grant_is_the_smaller_of_what_is_free_and_the_ceiling():
    assert rules.grant(Decimal(10), Decimal(4), Decimal(3), Decimal(2)) == Decimal(2)
    assert rules.grant(Decimal(10), Decimal(4), Decimal(3), Decimal(5)) == Decimal(3)
    assert rules.grant(Decimal(10), Decimal(4), Decimal(3), None) == Decimal(3)
    assert rules.grant(Decimal(10), Decimal(8), Decimal(3), None) == Decimal(0)   # over: nothing


@given(money, money, st.lists(money, max_size=8), money)
def test_parallel_calls_never_reserve_more_than_is_left(budget, spent, _unused, ceiling):
    """N calls reserving one after another by the rule never hold more than budget − spent."""
    held: list[Decimal] = []
    for _ in range(8):
        held.append(rules.grant(budget, spent, sum(held, Decimal(0)), ceiling))
    assert sum(held, Decimal(0)) <= max(Decimal(0), budget - spent)
    assert all(h <= ceiling for h in held)


@given(rates, st.integers(min_value=1, max_value=7200))
def test_a_ceiling_buys_the_full_tenant_limit(rate, limit):
    ceiling = rules.ceiling_cost(rate, limit)
    assert budget_seconds(ceiling, rate) >= limit
    share = rules.share(ceiling, rate, limit)
    assert share.seconds == limit and not share.cut


@given(rates, money, st.integers(min_value=1, max_value=7200))
def test_a_shares_duration_never_costs_more_than_the_share(rate, amount, limit):
    """Cut at its limit (billed up to limit + the guard second), a call costs at most its
    reservation: the sum of the calls' costs stays within the sum of their shares."""
    share = rules.share(amount, rate, limit)
    assert 0 <= share.seconds <= limit
    if share.seconds:
        billed_ms = (share.seconds + 1) * 1000
        _, cost = leg_cost(billed_ms, rate.rate_per_min, rate.connect_fee,
                           rate.initial_increment, rate.subsequent_increment)
        assert cost <= amount
    assert share.cut == (budget_seconds(amount, rate) < limit)


def test_grow_never_shrinks_a_live_call():
    assert rules.grow(Decimal(5), Decimal(10), Decimal(9), Decimal(0), None) == Decimal(5)
    assert rules.grow(Decimal(1), Decimal(10), Decimal(2), Decimal(3), Decimal(4)) == Decimal(4)


def test_thresholds_are_75_90_100_and_each_is_crossed_by_one_move():
    assert rules.THRESHOLDS == (75, 90, 100)
    assert rules.thresholds_crossed(Decimal(0), Decimal("0.9"), Decimal(1)) == [75, 90]
    assert rules.thresholds_crossed(Decimal("0.9"), Decimal("0.95"), Decimal(1)) == []
    assert rules.thresholds_crossed(Decimal("0.95"), Decimal(1), Decimal(1)) == [100]
    assert rules.thresholds_crossed(Decimal(0), Decimal(5), None) == []


@given(st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=20),
       st.integers(min_value=1, max_value=10**6))
def test_a_run_of_settlements_crosses_each_threshold_exactly_once(costs, budget):
    spent, crossed = 0, []
    for cost in costs:
        crossed += rules.thresholds_crossed(spent, spent + cost, budget)
        spent += cost
    assert crossed == [t for t in rules.THRESHOLDS if spent * 100 >= budget * t]


def test_extension_seconds_never_passes_the_limit():
    assert rules.extension_seconds(60, 10_000_000) == 50
    assert rules.extension_seconds(60, 10_400_000) == 49      # +49 fires by 59.4 s
    assert rules.extension_seconds(60, 59_900_000) is None    # nothing left to schedule
    assert rules.extension_seconds(10, -5) == 10


def test_micros_round_trip_and_month_of_start():
    assert rules.to_micros(Decimal("1.2345678")) == 1234567
    assert rules.to_micros(Decimal("1.2345671"), round_up=True) == 1234568
    assert rules.from_micros(1234567) == Decimal("1.234567")
    late = datetime(2026, 11, 30, 23, 59, 59, tzinfo=timezone.utc)
    assert rules.month_key(late) == "2026-11"
    assert rules.month_of(late) == datetime(2026, 11, 1, tzinfo=timezone.utc)


@given(st.integers(0, 10**12), st.integers(0, 10**12), st.integers(0, 10**12),
       st.none() | st.integers(0, 10**12))
def test_the_integer_rule_is_the_decimal_rule(budget, spent, others, ceiling):
    assert rules.grant_micros(budget, spent, others, ceiling) == \
        rules.grant(budget, spent, others, ceiling)


@given(rates, st.integers(min_value=0, max_value=7200))
def test_ceiling_micros_is_the_ceiling_cost_in_micros(rate, limit):
    assert rules.ceiling_micros(rate, limit) == rules.to_micros(rules.ceiling_cost(rate, limit))
