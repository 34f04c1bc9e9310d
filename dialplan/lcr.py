"""Least-cost routing: rank the carriers that can take a number (DESIGN §4).

Input: one CarrierCandidate per carrier, already looked up (the rate its deck gives the
number at the call's time, its health, its capacity flags). Output: at most `max_routes`
gateway legs in failover order, plus a record of every candidate and why it was skipped or
where it went, for the routing log.

Skip rules, in the order they are reported:
  carrier_disabled   Carrier.enabled is false
  not_allowed        tenant.allowed_carriers is set and does not name the carrier
  no_rate            no deck row covers the number at this time
  rate_above_max     rate_per_min > tenant.max_rate_per_min
  unhealthy          health says 'disabled' (below 30, or 10 consecutive failures, cooling)
  at_capacity        the carrier's channel cap is full
  over_cps           the carrier's calls-per-second limit is reached
  no_gateway         no enabled gateway that is not down
  over_max_routes    ranked, but beyond the legs we keep

Order ('cost' mode, tenant.routing_mode): cost of a one-minute call (connect fee + rate ×
billed(60 s)/60, so connect fees and odd increments count), then rate_per_min, then
carrier priority (lower first), then health (higher first), then name — every tie is
broken, so the same inputs always give the same answer. 'priority' mode: priority, then
the same cost keys, health, name.

Half-open carriers (cool-down over, probe allowed) are ranked after every healthy
carrier — a last resort, so a flaky carrier costs a call post-dial delay only when the
healthy ones failed. The router can set `probe_first=True` (say, once per cool-down per
carrier) to put the best half-open carrier first, so a recovered carrier does come back
even while healthy carriers take all the traffic.
"""
from __future__ import annotations

import functools
from operator import is_
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from .health import CarrierHealth, availability
from .model import Carrier, Gateway, Tenant
from .rating import billed_seconds, to_decimal

__all__ = ["CarrierCandidate", "RouteChoice", "RankResult", "rank", "one_minute_cost", "candidate",
           "MAX_ROUTES"]

MAX_ROUTES = 5          # the first choice plus four alternates


@dataclass(frozen=True)
class CarrierCandidate:
    carrier: Carrier
    rate: Any | None            # ratedeck.Rate or anything with the same attributes
    health: CarrierHealth = field(default_factory=CarrierHealth)
    at_capacity: bool = False
    over_cps: bool = False
    down_gateways: frozenset[str] = frozenset()     # from sofia gateway events


@dataclass(frozen=True)
class RouteChoice:
    carrier: Carrier
    gateway: Gateway
    rate: Any


_new = object.__new__
_set = object.__setattr__


def candidate(carrier: Carrier, rate, health: CarrierHealth,
              down_gateways: frozenset[str] = frozenset()) -> CarrierCandidate:
    """CarrierCandidate(carrier=..., rate=..., health=..., down_gateways=...), built the
    fast way (one per carrier per routing decision)."""
    c = _new(CarrierCandidate)
    _set(c, "__dict__", {"carrier": carrier, "rate": rate, "health": health,
                         "at_capacity": False, "over_cps": False,
                         "down_gateways": down_gateways})
    return c


def _route_choice(carrier: Carrier, gateway: Gateway, rate) -> RouteChoice:
    # RouteChoice(...) through the frozen dataclass __init__ is three object.__setattr__
    # calls; filling __dict__ at once gives an equal, equally frozen object, faster.
    choice = _new(RouteChoice)
    _set(choice, "__dict__", {"carrier": carrier, "gateway": gateway, "rate": rate})
    return choice


@dataclass(frozen=True)
class RankResult:
    routes: list[RouteChoice]
    considered: list[dict]
    reason: str                 # 'lcr' | 'priority' | 'no_route'


def one_minute_cost(rate) -> Decimal:
    """What a 60-second call costs at this rate: the 'cost' ordering key."""
    billed = billed_seconds(60, rate.initial_increment, rate.subsequent_increment)
    return (to_decimal(rate.connect_fee, "connect_fee")
            + to_decimal(rate.rate_per_min, "rate_per_min") * billed / 60)


@functools.lru_cache(maxsize=65536)
def _cost_of_tariff(rate_per_min: Decimal, connect_fee: Decimal, initial: int,
                    subsequent: int) -> tuple[Decimal, Decimal]:
    # (one-minute cost, rate): the 'cost' ordering keys of one tariff. A deck has a few
    # thousand distinct tariffs and every Rate of a tariff carries equal values, so the
    # Decimal arithmetic is done once per tariff rather than per candidate per call.
    return (one_minute_cost(_TariffView(rate_per_min, connect_fee, initial, subsequent)),
            to_decimal(rate_per_min))


@dataclass(frozen=True)
class _TariffView:
    rate_per_min: Decimal
    connect_fee: Decimal
    initial_increment: int
    subsequent_increment: int


def _cost_keys(rate) -> tuple[Decimal, Decimal]:
    rpm, fee = rate.rate_per_min, rate.connect_fee
    ini, sub = rate.initial_increment, rate.subsequent_increment
    # Cached only for exact types: a float or bool must still be refused every time (and
    # True == 1 must not borrow 1's cache entry).
    if type(rpm) is Decimal and type(fee) is Decimal and type(ini) is int and type(sub) is int:
        return _cost_of_tariff(rpm, fee, ini, sub)
    return one_minute_cost(rate), to_decimal(rate.rate_per_min)


def _skip_reason(c: CarrierCandidate, tenant: Tenant, state: str,
                 gateways: tuple[Gateway, ...]) -> str | None:
    if not c.carrier.enabled:
        return "carrier_disabled"
    if tenant.allowed_carriers and c.carrier.name not in tenant.allowed_carriers:
        return "not_allowed"
    if c.rate is None:
        return "no_rate"
    if (tenant.max_rate_per_min is not None
            and to_decimal(c.rate.rate_per_min, "rate_per_min") > tenant.max_rate_per_min):
        return "rate_above_max"
    if state == "disabled":
        return "unhealthy"
    if c.at_capacity:
        return "at_capacity"
    if c.over_cps:
        return "over_cps"
    if not gateways:
        return "no_gateway"
    return None


# (carrier.gateways, down_gateways) -> the usable ones in order, keyed by identity: both
# are immutable tuples/frozensets that only change by being replaced (a world reload, a
# gateway event), and the entry keeps them alive so an id() is never reused while cached.
_USABLE: dict[tuple[int, int], tuple] = {}
_USABLE_MAX = 1024


def _gateways(c: CarrierCandidate) -> tuple[Gateway, ...]:
    gateways, down = c.carrier.gateways, c.down_gateways
    key = (id(gateways), id(down))
    hit = _USABLE.get(key)
    if hit is not None and hit[0] is gateways and hit[1] is down:
        return hit[2]
    usable = tuple(sorted((g for g in gateways if g.enabled and g.name not in down),
                          key=lambda g: (g.position, g.name)))
    if type(gateways) is tuple and type(down) is frozenset:
        if len(_USABLE) >= _USABLE_MAX:
            _USABLE.clear()
        _USABLE[key] = (gateways, down, usable)
    return usable


def _record(c: CarrierCandidate, state: str) -> dict:
    r = c.rate
    return {
        "carrier": c.carrier.name,
        "prefix": getattr(r, "prefix", None),
        "rate_per_min": None if r is None else str(r.rate_per_min),
        "connect_fee": None if r is None else str(r.connect_fee),
        "priority": c.carrier.priority,
        "health": c.health.score,
        "state": state,
        "skipped": None,
        "position": None,
    }


# rank's outcome per situation: the tenant, the settings and, per candidate, the carrier,
# the matched tariff (its two Decimals by identity: a deck's Rates of one tariff share
# them), health, down gateways and capacity flags. Keyed by id() with the objects kept in
# the entry (checked with `is`), so any replacement — a world reload, a deck swap, a health
# or gateway change — is a different key; never used while any carrier has a disabled_at
# (its state then depends on `now`). What is kept: the candidate records without their
# prefix (the only per-number field) and the routes as (candidate index, gateway).
_RANKED: dict[tuple, tuple] = {}
_RANKED_MAX = 16384


def rank(candidates: list[CarrierCandidate], tenant: Tenant, now: datetime,
         max_routes: int = MAX_ROUTES, cooldown_s: float = 60,
         probe_first: bool = False) -> RankResult:
    if max_routes < 1:
        raise ValueError("max_routes must be at least 1")
    mode = tenant.routing_mode
    if mode not in ("cost", "priority"):
        raise ValueError(f"unknown routing_mode {mode!r} (expected 'cost' or 'priority')")
    key = [id(tenant), max_routes, cooldown_s, probe_first]
    held = [tenant]
    for c in candidates:
        if type(c) is not CarrierCandidate:
            key = None
            break
        carrier, rate, health, down = c.carrier, c.rate, c.health, c.down_gateways
        if health.disabled_at is not None:
            key = None
            break
        if rate is None:
            key += (id(carrier), None, None, None, None, id(health), id(down),
                    c.at_capacity, c.over_cps)
            held += (carrier, None, None, health, down)
            continue
        rpm, fee = rate.rate_per_min, rate.connect_fee
        ini, sub = rate.initial_increment, rate.subsequent_increment
        if (type(rpm) is not Decimal or type(fee) is not Decimal or type(ini) is not int
                or type(sub) is not int):
            key = None
            break
        key += (id(carrier), id(rpm), id(fee), ini, sub, id(health), id(down),
                c.at_capacity, c.over_cps)
        held += (carrier, rpm, fee, health, down)
    if key is not None:
        key = tuple(key)
        hit = _RANKED.get(key)
        if hit is not None and len(hit[0]) == len(held) and all(map(is_, hit[0], held)):
            _, templates, picks, reason = hit
            considered = []
            for c, template in zip(candidates, templates):
                rec = template.copy()
                rec["prefix"] = getattr(c.rate, "prefix", None)
                considered.append(rec)
            routes = []
            for i, g in picks:
                c = candidates[i]
                routes.append(_route_choice(c.carrier, g, c.rate))
            return _new_result(routes, considered, reason)
    result = _rank(candidates, tenant, now, max_routes, cooldown_s, probe_first)
    if key is not None:
        index = {c.carrier.name: i for i, c in enumerate(candidates)}
        picks = tuple((index[r.carrier.name], r.gateway) for r in result.routes)
        templates = tuple(dict(rec) for rec in result.considered)
        if len(_RANKED) >= _RANKED_MAX:
            _RANKED.clear()
        _RANKED[key] = (tuple(held), templates, picks, result.reason)
    return result


def _new_result(routes, considered, reason) -> RankResult:
    result = _new(RankResult)
    _set(result, "__dict__", {"routes": routes, "considered": considered, "reason": reason})
    return result


def _rank(candidates: list[CarrierCandidate], tenant: Tenant, now: datetime,
          max_routes: int, cooldown_s: float, probe_first: bool) -> RankResult:
    """rank without the cache (the arguments already checked)."""
    mode = tenant.routing_mode

    records: dict[str, dict] = {}
    usable: dict[str, tuple[Gateway, ...]] = {}
    eligible: list[tuple[tuple, CarrierCandidate]] = []
    for c in candidates:
        name = c.carrier.name
        if name in records:
            raise ValueError(f"carrier {name!r} listed twice")
        state = availability(c.health, now, cooldown_s)
        rec = records[name] = _record(c, state)
        gateways = usable[name] = _gateways(c)
        rec["skipped"] = skipped = _skip_reason(c, tenant, state, gateways)
        if skipped is None:
            cost = _cost_keys(c.rate)
            tail = (-c.health.score, name)
            key = ((c.carrier.priority,) + cost if mode == "priority"
                   else cost + (c.carrier.priority,)) + tail
            eligible.append((key, c))

    eligible.sort(key=lambda kc: kc[0])
    healthy = [c for _, c in eligible if records[c.carrier.name]["state"] == "up"]
    probing = [c for _, c in eligible if records[c.carrier.name]["state"] == "half_open"]
    ordered = (probing[:1] + healthy + probing[1:]) if probe_first else healthy + probing

    routes: list[RouteChoice] = []
    for c in ordered:
        rec = records[c.carrier.name]
        if len(routes) >= max_routes:
            rec["skipped"] = "over_max_routes"
            continue
        rec["position"] = len(routes)       # position of the carrier's first leg
        for g in usable[c.carrier.name]:
            if len(routes) >= max_routes:
                break
            routes.append(_route_choice(c.carrier, g, c.rate))

    considered = [records[c.carrier.name] for c in candidates]
    reason = "no_route" if not routes else ("priority" if mode == "priority" else "lcr")
    return RankResult(routes=routes, considered=considered, reason=reason)
