"""One contract, every backend: LocalCaps, RedisCaps (real redis-server) and PolicyCaps over it.

Time is an injected clock shared by the test and the backend, so lease expiry and CPS windows
are exact and need no sleeps; tests/test_caps_redis.py covers Redis's own TIME.
"""
from __future__ import annotations

from decimal import Decimal

import pytest
import redis

from switchd.adapters.caps import CpsScope, LocalCaps, PolicyCaps, Scope
from switchd.adapters.caps.redis_backend import RedisCaps


class Clock:
    def __init__(self, t: float = 1_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture(params=["local", "redis", "policy"])
def make_caps(request, clock):
    """Factory: make_caps(ttl=60) -> a fresh, empty backend on the shared clock."""
    made = []

    def make(ttl: float = 60.0):
        if request.param == "local":
            caps = LocalCaps(ttl=ttl, clock=clock)
        else:
            url = request.getfixturevalue("redis_url")
            caps = RedisCaps(redis.Redis.from_url(url), node_id="node-a", ttl=ttl, clock=clock)
            if request.param == "policy":
                caps = PolicyCaps(caps, LocalCaps(ttl=ttl, clock=clock), "fail_closed")
        made.append(caps)
        return caps

    yield make
    for caps in made:
        caps.close()


@pytest.fixture
def caps(make_caps):
    return make_caps()


G = Scope("global", "all", 100)
T = Scope("tenant", "acme", 3)
C = Scope("carrier", "telco", 2)


def test_limit_respected_per_scope(caps):
    assert caps.acquire("c1", [C]).admitted
    assert caps.acquire("c2", [C]).admitted
    refused = caps.acquire("c3", [C])
    assert not refused.admitted
    assert refused.refused_scope == C and refused.reason == "cap reached"
    assert caps.count(C) == 2


def test_all_or_nothing_across_scopes(caps):
    assert caps.acquire("c1", [G, T, C])
    assert caps.acquire("c2", [G, T, C])
    refused = caps.acquire("c3", [G, T, C])
    assert refused.refused_scope == C
    # The scopes that had room were not touched.
    assert (caps.count(G), caps.count(T), caps.count(C)) == (2, 2, 2)
    assert caps.held("c3") is None
    assert caps.release("c3") is False


def test_scope_identity_is_kind_and_name(caps):
    """The same name in two kinds is two scopes; the limit is policy, not identity."""
    assert caps.acquire("c1", [Scope("tenant", "x", 1), Scope("carrier", "x", 1)])
    assert caps.count(Scope("tenant", "x")) == 1
    assert not caps.acquire("c2", [Scope("tenant", "x", 1)])
    assert caps.acquire("c2", [Scope("tenant", "x", 2)])  # raised limit applies at once


def test_acquire_is_idempotent(caps):
    assert caps.acquire("c1", [T, C]).reason == "admitted"
    again = caps.acquire("c1", [T, C])
    assert again.admitted and again.reason == "already held"
    assert caps.count(T) == 1 and caps.count(C) == 1
    # A full scope does not refuse a call that already holds it.
    caps.acquire("c2", [C])
    assert caps.acquire("c1", [C]).admitted
    assert caps.count(C) == 2


def test_reacquire_adds_missing_scopes_all_or_nothing(caps):
    campaign = Scope("campaign", "spring", 1)
    assert caps.acquire("c1", [T])
    assert caps.acquire("c2", [campaign])
    refused = caps.acquire("c1", [T, campaign])
    assert refused.refused_scope == campaign
    assert caps.held("c1") == {("tenant", "acme")}
    caps.release("c2")
    assert caps.acquire("c1", [T, campaign]).reason == "admitted"
    assert caps.held("c1") == {("tenant", "acme"), ("campaign", "spring")}
    assert caps.count(T) == 1


def test_release_exactly_once(caps):
    caps.acquire("c1", [G, T, C])
    assert caps.release("c1") is True
    assert caps.release("c1") is False
    assert caps.release("never-seen") is False
    assert caps.count(G) == caps.count(T) == caps.count(C) == 0
    assert caps.acquire("c1", [G, T, C]).reason == "admitted"  # a released uuid starts afresh


def test_unlimited_and_zero_limits(caps):
    unlimited = Scope("global", "all")
    for i in range(50):
        assert caps.acquire(f"c{i}", [unlimited])
    assert caps.count(unlimited) == 50
    closed = Scope("tenant", "suspended", 0)
    assert caps.acquire("z", [closed]).refused_scope == closed


def test_lease_expiry_frees_slots(caps, clock):
    caps.acquire("c1", [C])
    caps.acquire("c2", [C])
    clock.advance(59.9)
    assert caps.count(C) == 2
    clock.advance(0.2)
    assert caps.count(C) == 0
    assert caps.held("c1") is None
    assert caps.release("c1") is False  # the slot was freed by expiry, not by this release
    assert caps.acquire("c3", [C]) and caps.acquire("c4", [C])


def test_refresh_keeps_leases_and_reports_lost(caps, clock):
    caps.acquire("c1", [C])
    caps.acquire("c2", [C])
    clock.advance(50)
    assert caps.refresh(["c1"]) == []
    clock.advance(50)  # c2 expired at 60, c1 lives until 110
    assert caps.count(C) == 1
    assert caps.refresh(["c1", "c2", "ghost"]) == ["c2", "ghost"]
    clock.advance(59)
    assert caps.held("c1") == {("carrier", "telco")}


def test_reacquire_extends_lease(caps, clock):
    caps.acquire("c1", [C])
    clock.advance(40)
    caps.acquire("c1", [C])
    clock.advance(40)
    assert caps.count(C) == 1


def test_rename_moves_the_lease(caps):
    caps.acquire("old", [T, C])
    assert caps.rename("old", "new") is True
    assert caps.count(T) == 1 and caps.count(C) == 1
    assert caps.held("old") is None
    assert caps.held("new") == {("tenant", "acme"), ("carrier", "telco")}
    assert caps.release("old") is False
    assert caps.release("new") is True
    assert caps.rename("old", "newer") is False
    assert caps.count(C) == 0


def test_rename_onto_a_held_uuid_counts_the_call_once(caps):
    caps.acquire("a", [C])
    caps.acquire("b", [C])
    assert caps.rename("a", "b") is True
    assert caps.count(C) == 1 and caps.held("a") is None


def test_reconcile_releases_what_the_switch_no_longer_has(caps, clock):
    for u in ("a", "b", "c"):
        assert caps.acquire(u, [T])
    clock.advance(10)
    caps.release("c")
    assert caps.acquire("fresh", [T])  # routed after the live set was taken
    released = caps.reconcile(["a", "unrelated"], grace=5)
    assert sorted(released) == ["b"]
    assert caps.count(T) == 2
    assert sorted(caps.calls()) == ["a", "fresh"]
    assert caps.reconcile(["a"], grace=0) == ["fresh"]
    assert caps.reconcile(["a"], grace=0) == []


def test_cps_limit(caps, clock):
    rate = CpsScope("carrier", "telco", 2)
    assert caps.acquire("c1", [], [rate]) and caps.acquire("c2", [], [rate])
    refused = caps.acquire("c3", [T], [rate])
    assert refused.refused_scope == rate and refused.reason == "cps limit reached"
    assert caps.count(T) == 0 and caps.held("c3") is None  # a CPS refusal holds nothing
    assert caps.acquire("c1", [], [rate]).admitted  # re-acquire is not a new call attempt
    clock.advance(0.5)
    assert not caps.acquire("c4", [], [rate])
    clock.advance(0.5)  # c1 and c2 leave the 1 s window
    assert caps.acquire("c4", [], [rate]) and caps.acquire("c5", [], [rate])
    assert not caps.acquire("c6", [], [rate])


def test_fractional_cps(caps, clock):
    rate = CpsScope("tenant", "acme", Decimal("0.5"))  # one call per two seconds
    assert caps.acquire("c1", [], [rate])
    clock.advance(1.9)
    assert not caps.acquire("c2", [], [rate])
    clock.advance(0.2)
    assert caps.acquire("c2", [], [rate])


def test_cap_refusal_is_not_charged_to_cps(caps):
    rate = CpsScope("carrier", "telco", 1)
    full = Scope("tenant", "full", 0)
    assert not caps.acquire("c1", [full], [rate])
    assert caps.acquire("c2", [T], [rate])


def test_swap_carrier_never_holds_two_carriers(caps):
    a, b = Scope("carrier", "a", 1), Scope("carrier", "b", 1)
    caps.acquire("x", [T, a])
    caps.acquire("y", [b])
    refused = caps.swap_carrier("x", a, b)
    assert refused.refused_scope == b
    assert caps.held("x") == {("tenant", "acme"), ("carrier", "a")}  # nothing changed
    caps.release("y")
    assert caps.swap_carrier("x", a, b).admitted
    assert caps.held("x") == {("tenant", "acme"), ("carrier", "b")}
    assert (caps.count(a), caps.count(b), caps.count(T)) == (0, 1, 1)
    assert caps.swap_carrier("x", b, b).admitted and caps.count(b) == 1
    assert caps.move("nobody", add=[a]).reason == "call not held"


def test_move_charges_cps_of_the_new_carrier(caps):
    a, b = Scope("carrier", "a", 5), Scope("carrier", "b", 5)
    rate_b = CpsScope("carrier", "b", 1)
    caps.acquire("x", [a])
    caps.acquire("y", [a])
    assert caps.swap_carrier("x", a, b, cps=[rate_b])
    refused = caps.swap_carrier("y", a, b, cps=[rate_b])
    assert refused.refused_scope == rate_b and caps.held("y") == {("carrier", "a")}


def test_register_is_unchecked_and_replace_is_exact(caps):
    caps.acquire("c1", [C])
    caps.acquire("c2", [C])
    caps.register("up-already", [C, T])  # the call exists: it must be counted
    assert caps.count(C) == 3
    caps.register("up-already", [T], replace=True)
    assert caps.held("up-already") == {("tenant", "acme")}
    assert caps.count(C) == 2


def test_invalid_scopes_are_refused_at_construction():
    with pytest.raises(ValueError):
        Scope("region", "eu", 1)
    with pytest.raises(ValueError):
        Scope("tenant", "acme", -1)
    with pytest.raises(ValueError):
        CpsScope("carrier", "x", 0)
    with pytest.raises(ValueError):
        LocalCaps().acquire("c", [Scope("tenant", "a", 1), Scope("tenant", "a", 2)])
