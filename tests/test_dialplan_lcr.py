from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dialplan.health import CarrierHealth
from dialplan.lcr import CarrierCandidate, no_route_reason, rank
from dialplan.model import Carrier, Gateway, Tenant

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class R:                       # anything with Rate's attributes will do
    rate_per_min: Decimal
    connect_fee: Decimal = Decimal(0)
    initial_increment: int = 60
    subsequent_increment: int = 60
    prefix: str = "44"


def carrier(name, gws=1, priority=100, enabled=True):
    return Carrier(name=name, priority=priority, enabled=enabled,
                   gateways=tuple(Gateway(name=f"{name}_gw{i}", carrier=name, position=i)
                                  for i in range(gws)))


def cand(name, rate, gws=1, priority=100, score=100, **kw):
    health = kw.pop("health", CarrierHealth(score=score))
    return CarrierCandidate(carrier=carrier(name, gws, priority, kw.pop("enabled", True)),
                            rate=None if rate is None else R(Decimal(rate)),
                            health=health, **kw)


T = Tenant(name="acme")


def names(result):
    return [(r.carrier.name, r.gateway.name) for r in result.routes]


def test_cheapest_first_with_gateways_in_position_order():
    res = rank([cand("b", "0.02", gws=2), cand("a", "0.01", gws=2)], T, NOW)
    assert names(res) == [("a", "a_gw0"), ("a", "a_gw1"), ("b", "b_gw0"), ("b", "b_gw1")]
    assert res.reason == "lcr"
    assert [c["position"] for c in res.considered] == [2, 0]


def test_gateway_position_not_tuple_order():
    c = Carrier(name="x", gateways=(Gateway("x2", "x", position=2), Gateway("x1", "x", position=1),
                                    Gateway("x0", "x", position=0, enabled=False)))
    res = rank([CarrierCandidate(c, R(Decimal("0.01")))], T, NOW)
    assert [r.gateway.name for r in res.routes] == ["x1", "x2"]


def test_max_five_legs():
    cs = [cand(f"c{i}", f"0.0{i + 1}", gws=2) for i in range(5)]
    res = rank(cs, T, NOW)
    assert len(res.routes) == 5
    assert names(res)[-1] == ("c2", "c2_gw0")
    skipped = {c["carrier"]: c["skipped"] for c in res.considered}
    assert skipped["c3"] == skipped["c4"] == "over_max_routes"
    assert len(rank(cs, T, NOW, max_routes=1).routes) == 1


@pytest.mark.parametrize("candidate,tenant,why", [
    (cand("x", None), T, "no_rate"),
    (cand("x", "0.01", enabled=False), T, "carrier_disabled"),
    (cand("x", "0.01"), Tenant(name="t", allowed_carriers=("y",)), "not_allowed"),
    (cand("x", "0.50"), Tenant(name="t", max_rate_per_min=Decimal("0.10")), "rate_above_max"),
    (cand("x", "0.01", health=CarrierHealth(50, 10, NOW)), T, "unhealthy"),
    (cand("x", "0.01", at_capacity=True), T, "at_capacity"),
    (cand("x", "0.01", over_cps=True), T, "over_cps"),
    (cand("x", "0.01", gws=0), T, "no_gateway"),
    (cand("x", "0.01", down_gateways=frozenset({"x_gw0"})), T, "no_gateway"),
])
def test_skip_rules(candidate, tenant, why):
    res = rank([candidate], tenant, NOW)
    assert res.routes == [] and res.reason == "no_route"
    assert res.considered[0]["skipped"] == why and res.considered[0]["position"] is None


def test_no_route_reason_names_each_carrier_passed_over():
    every_carrier_unhealthy = rank([cand("a", "0.01", health=CarrierHealth(50, 10, NOW)),
                                    cand("b", None),
                                    cand("c", "0.02", down_gateways=frozenset({"c_gw0"}))],
                                   T, NOW)
    assert no_route_reason(every_carrier_unhealthy.considered) == \
        "no carrier can take the number (a: unhealthy, c: no_gateway)"
    nobody_sells_it = rank([cand("a", None), cand("b", None)], T, NOW)
    assert no_route_reason(nobody_sells_it.considered) == "no carrier covers the number"
    assert no_route_reason([]) == "no carrier covers the number"


def test_rate_equal_to_max_is_allowed():
    res = rank([cand("x", "0.10")], Tenant(name="t", max_rate_per_min=Decimal("0.10")), NOW)
    assert len(res.routes) == 1


def test_down_gateway_is_left_out():
    res = rank([cand("x", "0.01", gws=2, down_gateways=frozenset({"x_gw0"}))], T, NOW)
    assert names(res) == [("x", "x_gw1")]


def test_ties_priority_then_health_then_name():
    res = rank([cand("d", "0.01", priority=5, score=90), cand("c", "0.01", priority=5, score=95),
                cand("b", "0.01", priority=1), cand("a", "0.01", priority=5, score=95)], T, NOW)
    assert [r.carrier.name for r in res.routes] == ["b", "a", "c", "d"]


def test_connect_fee_counts_in_cost_mode():
    cheap_rate_big_fee = CarrierCandidate(carrier("x"), R(Decimal("0.010"), Decimal("0.05")))
    plain = CarrierCandidate(carrier("y"), R(Decimal("0.020")))
    assert [r.carrier.name for r in rank([cheap_rate_big_fee, plain], T, NOW).routes] == ["y", "x"]


def test_priority_mode():
    t = Tenant(name="t", routing_mode="priority")
    res = rank([cand("cheap", "0.01", priority=10), cand("pref", "0.05", priority=1)], t, NOW)
    assert [r.carrier.name for r in res.routes] == ["pref", "cheap"]
    assert res.reason == "priority"


def test_half_open_is_last_resort_unless_probe_first():
    half = CarrierHealth(score=50, consecutive_failures=10, disabled_at=datetime(2025, 12, 31, tzinfo=timezone.utc))
    cs = [cand("flaky", "0.001", health=half), cand("ok", "0.05")]
    assert [r.carrier.name for r in rank(cs, T, NOW).routes] == ["ok", "flaky"]
    assert [r.carrier.name for r in rank(cs, T, NOW, probe_first=True).routes] == ["flaky", "ok"]
    rec = {c["carrier"]: c for c in rank(cs, T, NOW).considered}
    assert rec["flaky"]["state"] == "half_open"


def test_low_health_skipped_via_disable():
    # health below 30 with a recent disabled_at: skipped
    h = CarrierHealth(score=25, consecutive_failures=1, disabled_at=NOW)
    assert rank([cand("x", "0.01", health=h)], T, NOW).considered[0]["skipped"] == "unhealthy"


def test_considered_is_loggable():
    import json
    res = rank([cand("a", "0.01"), cand("b", None)], T, NOW)
    json.dumps(res.considered)
    assert res.considered[0]["rate_per_min"] == "0.01"


def test_bad_inputs():
    with pytest.raises(ValueError):
        rank([cand("a", "0.01"), cand("a", "0.02")], T, NOW)
    with pytest.raises(ValueError):
        rank([cand("a", "0.01")], Tenant(name="t", routing_mode="random"), NOW)
    with pytest.raises(ValueError):
        rank([], T, NOW, max_routes=0)


@given(st.lists(st.tuples(st.integers(1, 500), st.integers(0, 3), st.integers(0, 100),
                          st.integers(1, 3)), max_size=8))
def test_properties(specs):
    cs = [cand(f"c{i}", Decimal(r) / 1000, gws=g, priority=p, score=max(s, 30))
          for i, (r, p, s, g) in enumerate(specs)]
    res = rank(cs, T, NOW)
    assert len(res.routes) <= 5
    # deterministic, and independent of input order
    assert names(res) == names(rank(list(reversed(cs)), T, NOW))
    # non-decreasing rate along the route list (all healthy)
    rates = [r.rate.rate_per_min for r in res.routes]
    assert rates == sorted(rates)
    # each carrier's legs are contiguous
    seen = []
    for r in res.routes:
        if not seen or seen[-1] != r.carrier.name:
            assert r.carrier.name not in seen
            seen.append(r.carrier.name)
