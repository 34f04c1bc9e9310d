from __future__ import annotations

import dataclasses

from dataclasses import dataclass
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dialplan.causes import FREESWITCH_CAUSES
from dialplan.numbers import normalise
from dialplan.policy import (REFUSALS, Refusal, budget_seconds, check_destination,
                             decide_duration, max_duration, refusal)
from dialplan.model import Tenant
from dialplan.rating import leg_cost

UK = normalise("+442079460000", "GB")
UK_PREMIUM = normalise("+449098790000", "GB")
US = normalise("+12125551234", "US")
FREEPHONE = normalise("+80012345678", "US")


@dataclass(frozen=True)
class R:
    rate_per_min: Decimal
    connect_fee: Decimal = Decimal(0)
    initial_increment: int = 60
    subsequent_increment: int = 60


def test_catalogue():
    expected = {"no_route": (404, "NO_ROUTE_DESTINATION"),
                "forbidden_destination": (403, "CALL_REJECTED"),
                "unknown_tenant": (403, "CALL_REJECTED"),
                "budget_exhausted": (402, "OUTGOING_CALL_BARRED"),
                "cap_reached": (503, "SWITCH_CONGESTION"),
                "carriers_full": (503, "NORMAL_CIRCUIT_CONGESTION"),
                "bad_number": (484, "INVALID_NUMBER_FORMAT")}
    for reason, (code, cause) in expected.items():
        assert (REFUSALS[reason].sip_code, REFUSALS[reason].cause) == (code, cause)
    for r in REFUSALS.values():
        assert r.cause in FREESWITCH_CAUSES
    with pytest.raises(dataclasses.FrozenInstanceError):
        REFUSALS["no_route"].sip_code = 200  # type: ignore[misc]
    assert refusal("no_route", "x").detail == "x"


def test_open_tenant_allows_everything():
    t = Tenant(name="t")
    assert check_destination(t, UK) is None and check_destination(t, FREEPHONE) is None


def test_allowed_countries():
    t = Tenant(name="t", allowed_countries=("gb",))
    assert check_destination(t, UK) is None
    r = check_destination(t, US)
    assert isinstance(r, Refusal) and r.sip_code == 403 and r.reason == "forbidden_destination"
    assert check_destination(t, FREEPHONE) is not None      # no region: not in the list


def test_allowed_and_blocked_prefixes():
    t = Tenant(name="t", allowed_prefixes=("44",), blocked_prefixes=("+449",))
    assert check_destination(t, UK) is None
    assert "blocked" in check_destination(t, UK_PREMIUM).detail
    assert check_destination(t, US).detail == "prefix not allowed"


def test_blocked_beats_allowed_country():
    t = Tenant(name="t", allowed_countries=("GB",), blocked_prefixes=("4490",))
    assert check_destination(t, UK_PREMIUM).sip_code == 403


@pytest.mark.parametrize("budget,rate,out", [
    (None, R(Decimal("0.60")), None),
    (Decimal("0"), R(Decimal("0.60")), 0),
    (Decimal("-1"), R(Decimal("0.60")), 0),
    (Decimal("0.90"), R(Decimal("0.60")), 59),        # 90 s of money, 60/60: 60 fits, minus guard
    (Decimal("0.90"), R(Decimal("0.60"), initial_increment=1, subsequent_increment=1), 89),
    (Decimal("0.90"), R(Decimal("0.60"), initial_increment=60, subsequent_increment=6), 89),
    (Decimal("0.50"), R(Decimal("0.60")), 0),         # cannot pay the first increment
    (Decimal("1.00"), R(Decimal("0.60"), Decimal("0.40")), 59),
    (Decimal("1.00"), R(Decimal("0.60"), Decimal("1.00")), 0),
    (Decimal("5"), R(Decimal("0")), None),            # free destination
])
def test_budget_seconds(budget, rate, out):
    assert budget_seconds(budget, rate) == out


@given(st.decimals(min_value=0, max_value=50, places=4, allow_nan=False),
       st.decimals(min_value=Decimal("0.0001"), max_value=5, places=4, allow_nan=False),
       st.decimals(min_value=0, max_value=1, places=4, allow_nan=False),
       st.sampled_from([(60, 60), (60, 6), (6, 6), (1, 1), (30, 6)]))
def test_budget_limit_never_overspends(budget, per_min, fee, inc):
    rate = R(per_min, fee, *inc)
    s = budget_seconds(budget, rate)
    assert s is not None and s >= 0
    if s > 0:
        # hung up up to a second late, the call is still within budget
        _, cost = leg_cost((s + 1) * 1000, per_min, fee, *inc, places=12)
        assert cost <= budget


def test_max_duration_is_the_minimum():
    rate = R(Decimal("0.60"))
    assert max_duration(None, 3600, None, rate) == 3600
    assert max_duration(600, 3600, None, rate) == 600
    assert max_duration(600, 300, None, rate) == 300
    assert max_duration(600, 3600, Decimal("1.20"), rate) == 119
    assert max_duration(600, 3600, Decimal("0"), rate) == 0


def test_decide_duration_refusals():
    rate = R(Decimal("0.60"))
    assert decide_duration(None, 3600, Decimal("10"), rate) == 959
    r = decide_duration(None, 3600, Decimal("0.10"), rate)
    assert isinstance(r, Refusal) and r.sip_code == 402 and r.cause == "OUTGOING_CALL_BARRED"
    r = decide_duration(0, 3600, None, rate)
    assert isinstance(r, Refusal) and r.reason == "no_duration"


def test_float_budget_refused():
    with pytest.raises(TypeError):
        budget_seconds(1.5, R(Decimal("0.6")))
