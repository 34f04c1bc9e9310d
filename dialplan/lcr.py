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


def candidate(carrier: Carrier, rate, health: CarrierHealth,
              down_gateways: frozenset[str] = frozenset()) -> CarrierCandidate:
    """The candidate of one carrier for one routing decision."""
    return CarrierCandidate(carrier, rate, health, False, False, down_gateways)


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


def _cost_keys(rate) -> tuple[Decimal, Decimal]:
    """(one-minute cost, rate): computed once per tariff when its deck was built
    (ratedeck.Tariff.order); a Rate built by hand has them computed here."""
    tariff = getattr(rate, "tariff", None)
    if tariff is not None:
        return tariff.order
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


def _gateways(c: CarrierCandidate) -> tuple[Gateway, ...]:
    down = c.down_gateways
    return tuple(sorted((g for g in c.carrier.gateways if g.enabled and g.name not in down),
                        key=lambda g: (g.position, g.name)))


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


def no_route_reason(considered: list[dict]) -> str:
    """Why a decision found no route, for people: when some carrier has a rate for the
    number, each such carrier and the rule that passed it over (every carrier disabled
    for its health reads very differently from a number nobody sells)."""
    passed = [f"{r['carrier']}: {r['skipped']}" for r in considered
              if r["skipped"] not in (None, "no_rate")]
    if not passed:
        return "no carrier covers the number"
    return "no carrier can take the number (" + ", ".join(passed) + ")"


def rank(candidates: list[CarrierCandidate], tenant: Tenant, now: datetime,
         max_routes: int = MAX_ROUTES, cooldown_s: float = 60,
         probe_first: bool = False) -> RankResult:
    if max_routes < 1:
        raise ValueError("max_routes must be at least 1")
    mode = tenant.routing_mode
    if mode not in ("cost", "priority"):
        raise ValueError(f"unknown routing_mode {mode!r} (expected 'cost' or 'priority')")
    return _rank(candidates, tenant, now, max_routes, cooldown_s, probe_first)


def _rank(candidates: list[CarrierCandidate], tenant: Tenant, now: datetime,
          max_routes: int, cooldown_s: float, probe_first: bool) -> RankResult:
    """rank, the arguments checked."""
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
            routes.append(RouteChoice(c.carrier, g, c.rate))

    considered = [records[c.carrier.name] for c in candidates]
    reason = "no_route" if not routes else ("priority" if mode == "priority" else "lcr")
    return RankResult(routes=routes, considered=considered, reason=reason)
