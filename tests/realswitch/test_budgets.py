"""Budgets on the real switch: parallel calls share a tight month, FreeSWITCH itself cuts
them, and what it billed never passes the budget (docs/budgets.md).

Tenant `tight`: 8 s per call, a month of 0.002500. UK goes to alpha at 0.0100/min billed
1/1, so a full 8 s call reserves 9 s (limit + guard second) = 0.001500 and the second of two
parallel calls gets the 0.001000 left, which buys 5 s. FreeSWITCH's `sched_hangup +N` fires
on whole seconds, between N-1 and N+0.5 s after the answer (test_max_duration.py).
"""
from __future__ import annotations

from decimal import Decimal

import psycopg
import pytest

from . import world
from .common import poll

pytestmark = pytest.mark.realswitch

BUDGET = Decimal("0.002500")
RATE_PER_S = Decimal("0.0100") / 60
UK = world.DESTINATIONS[0][0]


@pytest.fixture
def tight(rs_world_url, make_rs_daemon):
    with psycopg.connect(rs_world_url, autocommit=True) as conn:
        conn.execute("INSERT INTO tenants (name, accountcode, default_region, max_call_seconds, "
                     "monthly_budget) VALUES ('tight', 'tight', 'GB', 8, %s)", (BUDGET,))
    return make_rs_daemon()


def _two_calls(switch, first_hold_ms: int, second_hold_ms: int):
    first = switch.call_async(UK, tenant="tight", hold_ms=first_hold_ms)
    poll(lambda: switch.channel_count() >= 2, 10, "the first call up (caller and carrier legs)")
    second = switch.call_async(UK, tenant="tight", hold_ms=second_hold_ms)
    a, b = first.wait(), second.wait()
    assert a.code == 200 and b.code == 200, (a, b)
    return switch.wait_call(a, timeout=30), switch.wait_call(b, timeout=30)


def _carrier_leg(legs):
    (leg,) = [h for h in legs if h.direction == "outbound"]
    assert leg.gateway == "gw_a"
    return leg


def test_two_parallel_calls_are_both_cut_within_the_budget(realswitch, tight):
    first, second = _two_calls(realswitch, 30_000, 30_000)
    a, b = _carrier_leg(first), _carrier_leg(second)
    # FreeSWITCH cut both (the callers would have talked 30 s), each at its share.
    assert first[0].cause == second[0].cause == "ALLOTTED_TIMEOUT", (first[0].cause, second[0].cause)
    assert first[0].switchd["switchd_max_duration"] == "8"
    assert second[0].switchd["switchd_max_duration"] == "5"
    assert 7_000 <= a.billmsec <= 8_500 and 4_000 <= b.billmsec <= 5_500, (a.billmsec, b.billmsec)
    billed = RATE_PER_S * (a.billsec + b.billsec)          # 1/1 increments, no fee
    assert billed <= BUDGET, (a.billsec, b.billsec)
    # and what switchd charged agrees
    costs = tight.wait_until(lambda: (lambda r: r if len(r) == 2 and None not in r else None)(
        [c for (c,) in tight.rows("SELECT cost FROM calls WHERE tenant = 'tight' "
                                  "AND answered_at IS NOT NULL")]), what="both CDRs")
    assert sum(costs) <= BUDGET


def test_a_call_ending_early_extends_the_other_on_the_switch(realswitch, tight):
    first, second = _two_calls(realswitch, 2_000, 30_000)
    a, b = _carrier_leg(first), _carrier_leg(second)
    assert first[0].cause != "ALLOTTED_TIMEOUT"               # its caller hung up after 2 s
    # The second call started with 5 s; the money the first did not use moved its
    # scheduled hangup on the switch to the tenant's full 8 s.
    assert second[0].cause == "ALLOTTED_TIMEOUT"
    assert second[0].switchd["switchd_max_duration"] == "8"
    assert 7_000 <= b.billmsec <= 8_500, b.billmsec
    assert RATE_PER_S * (a.billsec + b.billsec) <= BUDGET, (a.billsec, b.billsec)
    # the clock switchd asked the switch for, to count N from its answer time
    assert realswitch.api("strmicroepoch").strip().isdigit()
