from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dialplan.rating import (answered_seconds, billed_seconds, leg_cost, parse_increments,
                             rate_leg)

increments = st.sampled_from([(60, 60), (60, 6), (6, 6), (1, 1), (30, 6), (0, 1), (90, 30)])
seconds = st.integers(min_value=-10, max_value=100_000)


@pytest.mark.parametrize("s,inc,billed", [
    (0, (60, 60), 0), (-5, (60, 60), 0), (1, (60, 60), 60), (60, (60, 60), 60),
    (61, (60, 60), 120), (119, (60, 60), 120), (121, (60, 60), 180),
    (1, (60, 6), 60), (61, (60, 6), 66), (66, (60, 6), 66), (67, (60, 6), 72),
    (1, (6, 6), 6), (7, (6, 6), 12), (59, (1, 1), 59), (1, (1, 1), 1),
    (1, (30, 6), 30), (31, (30, 6), 36), (5, (0, 1), 5), (100, (90, 30), 120),
])
def test_billed_seconds_table(s, inc, billed):
    assert billed_seconds(s, *inc) == billed


@given(seconds, seconds, increments)
def test_billed_is_monotonic(a, b, inc):
    lo, hi = sorted((a, b))
    assert billed_seconds(lo, *inc) <= billed_seconds(hi, *inc)


@given(st.integers(min_value=1, max_value=100_000), increments)
def test_billed_covers_and_aligns(s, inc):
    initial, sub = inc
    b = billed_seconds(s, initial, sub)
    assert b >= s
    assert b >= initial
    assert (b - initial) % sub == 0
    assert b - s < max(initial, sub)          # never more than one increment over


@pytest.mark.parametrize("ms,s", [(None, 0), (0, 0), (-1, 0), (1, 1), (999, 1), (1000, 1),
                                  (1001, 2), (60000, 60), (60001, 61)])
def test_answered_seconds(ms, s):
    assert answered_seconds(ms) == s


@pytest.mark.parametrize("ms,rate,fee,inc,billed,cost", [
    (None, "0.0120", "0", (60, 60), 0, "0.000000"),           # unanswered
    (0, "0.0120", "0.05", (60, 60), 0, "0.000000"),           # no connect fee either
    (1, "0.0120", "0", (60, 60), 60, "0.012000"),
    (61000, "0.0120", "0", (60, 60), 120, "0.024000"),
    (61000, "0.0120", "0", (1, 1), 61, "0.012200"),
    (61000, "0.0120", "0", (60, 6), 66, "0.013200"),
    (30500, "0.0100", "0.0150", (1, 1), 31, "0.020167"),       # 0.0150 + 0.0051666.. half-up
    (1000, "0.0000005", "0", (1, 1), 1, "0.000000"),          # rounds once: 8.3e-9 → 0
    (3600000, "0.333333", "0", (1, 1), 3600, "19.999980"),
    (59000, "1", "0", (60, 60), 60, "1.000000"),
    (59000, "1", "0", (1, 1), 59, "0.983333"),
])
def test_leg_cost_examples(ms, rate, fee, inc, billed, cost):
    b, c = leg_cost(ms, Decimal(rate), Decimal(fee), *inc)
    assert (b, c) == (billed, Decimal(cost))
    assert isinstance(c, Decimal) and c.as_tuple().exponent == -6


def test_round_once_not_per_increment():
    # 0.0000049/min for 6 s increments: per-increment rounding would give 0 every time.
    b, c = leg_cost(3_600_000, Decimal("0.0000049"), Decimal("0"), 6, 6, places=6)
    assert b == 3600 and c == Decimal("0.000294")


def test_half_up():
    # 0.0000005 exactly → rounds up at 6 places
    _, c = leg_cost(60_000, Decimal("0.0000005"), Decimal("0"), 60, 60)
    assert c == Decimal("0.000001")


def test_places():
    _, c = leg_cost(60_000, Decimal("0.125"), Decimal("0"), 60, 60, places=2)
    assert c == Decimal("0.13")


@given(st.integers(min_value=-1, max_value=10**8),
       st.decimals(min_value=0, max_value=100, places=6, allow_nan=False),
       st.decimals(min_value=0, max_value=10, places=4, allow_nan=False), increments)
def test_cost_is_decimal_and_consistent(ms, rate, fee, inc):
    b, c = leg_cost(ms, rate, fee, *inc)
    assert isinstance(c, Decimal) and not isinstance(c, float)
    assert c >= 0
    if b == 0:
        assert c == 0
    else:
        exact = fee + rate * b / 60
        assert abs(c - exact) <= Decimal("0.0000005")


@given(st.integers(min_value=1, max_value=10**7), st.integers(min_value=1, max_value=10**7),
       st.decimals(min_value=0, max_value=10, places=4, allow_nan=False), increments)
def test_cost_monotonic_in_duration(a, b, rate, inc):
    lo, hi = sorted((a, b))
    assert leg_cost(lo, rate, 0, *inc)[1] <= leg_cost(hi, rate, 0, *inc)[1]


def test_60_60_versus_1_1():
    assert leg_cost(61_000, Decimal("0.60"), 0, 60, 60) == (120, Decimal("1.200000"))
    assert leg_cost(61_000, Decimal("0.60"), 0, 1, 1) == (61, Decimal("0.610000"))


@pytest.mark.parametrize("bad", [0.01, True])
def test_floats_refused(bad):
    with pytest.raises(TypeError):
        leg_cost(1000, bad, Decimal(0), 60, 60)
    with pytest.raises(TypeError):
        leg_cost(1000, Decimal("0.01"), bad, 60, 60)


def test_negative_money_refused():
    with pytest.raises(ValueError):
        leg_cost(1000, Decimal("-0.01"), Decimal(0), 60, 60)


def test_rate_object():
    class R:
        rate_per_min, connect_fee = Decimal("0.06"), Decimal("0.01")
        initial_increment, subsequent_increment = 60, 6
    assert rate_leg(61_000, R()) == (66, Decimal("0.076000"))


@pytest.mark.parametrize("text,out", [("60/6", (60, 6)), ("1/1", (1, 1)), (" 60 / 60 ", (60, 60)),
                                      ("0/1", (0, 1))])
def test_parse_increments(text, out):
    assert parse_increments(text) == out


@pytest.mark.parametrize("text", ["60", "60/", "/6", "60/0", "a/b", "60/6/1", "-1/6", "1.5/6",
                                  "60/99999", "", "６０/6"])
def test_parse_increments_errors(text):
    with pytest.raises(ValueError) as e:
        parse_increments(text)
    assert "increment" in str(e.value)


@pytest.mark.parametrize("args", [(10, 60, 0), (10, -1, 6), (10, 60, 4000), (1.5, 60, 60)])
def test_billed_seconds_bad_args(args):
    with pytest.raises((ValueError, TypeError)):
        billed_seconds(*args)
