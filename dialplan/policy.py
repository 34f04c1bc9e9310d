"""Tenant policy: may this tenant call this number, and for how long? (DESIGN §3, §4)

Every "no" is a `Refusal` from one catalogue (REFUSALS), so the SIP code, the FreeSWITCH
hangup cause and the reason token an operator sees in the routing log always agree.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_FLOOR

from .model import Tenant
from .numbers import Number
from .rating import to_decimal

__all__ = ["Refusal", "REFUSALS", "refusal", "check_destination", "max_duration",
           "decide_duration", "budget_seconds", "HANGUP_GUARD_S"]


@dataclass(frozen=True)
class Refusal:
    sip_code: int       # what FreeSWITCH answers the caller (via the `respond` app)
    cause: str          # FreeSWITCH hangup cause name, recorded as switchd_refusal_cause
    reason: str         # short stable token for logs, metrics and the routing log
    detail: str = ""    # free text for humans (never rendered into the XML answer)


# Cause choices (the SIP code is sent explicitly with `respond`, so the cause is the
# "why" an operator reads in CDRs and the fallback `hangup` if respond cannot run):
#  - forbidden destination → CALL_REJECTED: Q.850 21, "does not wish to accept this call",
#    and what FreeSWITCH itself records for a `respond 403` (sofia maps 403 → CALL_REJECTED);
#  - budget → OUTGOING_CALL_BARRED: Q.850 52, the account may not place outgoing calls now;
#    distinct from a policy refusal so the two are told apart in reports;
#  - caps → SWITCH_CONGESTION (our equipment is full) vs NORMAL_CIRCUIT_CONGESTION (every
#    carrier is at its channel cap): both are 503, retryable later.
REFUSALS: dict[str, Refusal] = {r.reason: r for r in (
    Refusal(404, "NO_ROUTE_DESTINATION", "no_route"),
    Refusal(403, "CALL_REJECTED", "forbidden_destination"),
    Refusal(403, "CALL_REJECTED", "unknown_tenant"),
    Refusal(403, "CALL_REJECTED", "tenant_disabled"),
    Refusal(402, "OUTGOING_CALL_BARRED", "budget_exhausted"),
    Refusal(503, "SWITCH_CONGESTION", "cap_reached"),
    Refusal(503, "NORMAL_CIRCUIT_CONGESTION", "carriers_full"),
    Refusal(503, "SWITCH_CONGESTION", "caps_unavailable"),
    Refusal(484, "INVALID_NUMBER_FORMAT", "bad_number"),
    Refusal(404, "NO_ROUTE_DESTINATION", "special_number"),
    Refusal(403, "CALL_REJECTED", "no_duration"),
)}


def refusal(reason: str, detail: str = "") -> Refusal:
    """The catalogue entry for `reason`, with an optional human detail."""
    base = REFUSALS[reason]
    return Refusal(base.sip_code, base.cause, base.reason, detail)


def _starts(digits: str, prefixes) -> str | None:
    return next((p for p in prefixes if p and digits.startswith(p.lstrip("+"))), None)


def check_destination(tenant: Tenant, number: Number) -> Refusal | None:
    """None when the tenant may call `number`; else a 403 forbidden_destination.

    Blocked prefixes win over allowed ones (premium-rate fraud ranges inside an allowed
    country). allowed_countries matches the number's region; a non-geographic number
    (+800 ...) has no region and passes only when the list is empty.
    """
    hit = _starts(number.digits, tenant.blocked_prefixes)
    if hit is not None:
        return refusal("forbidden_destination", f"blocked prefix {hit}")
    if tenant.allowed_countries:
        allowed = {c.upper() for c in tenant.allowed_countries}
        if number.region is None or number.region.upper() not in allowed:
            return refusal("forbidden_destination", f"country {number.region} not allowed")
    if tenant.allowed_prefixes and _starts(number.digits, tenant.allowed_prefixes) is None:
        return refusal("forbidden_destination", "prefix not allowed")
    return None


# sched_hangup +N fires at N seconds or a little after, and carriers bill started seconds
# (ceil(billmsec/1000)), so a call cut "at" N is billed N+1: one second of guard keeps the
# budget-bound limit inside what the budget actually pays for.
HANGUP_GUARD_S = 1


def budget_seconds(remaining_budget, rate, guard_s: int = HANGUP_GUARD_S) -> int | None:
    """Longest call (seconds) that `remaining_budget` pays for at `rate`; None = unbounded.

    Increment-aware: with 60/60 and money for 90 s, a 90 s call would be billed 120 s, so
    the answer is the longest length whose *billed* cost fits, minus the guard second.
    """
    if remaining_budget is None:
        return None
    left = to_decimal(remaining_budget, "remaining_budget") - to_decimal(rate.connect_fee)
    per_min = to_decimal(rate.rate_per_min, "rate_per_min")
    if left <= 0:
        return 0
    if per_min <= 0:
        return None                     # free destination: the budget does not bound it
    initial, sub = rate.initial_increment, rate.subsequent_increment
    billable = int((left * 60 / per_min).to_integral_value(rounding=ROUND_FLOOR))
    if billable < initial:
        return 0
    fits = initial + (billable - initial) // sub * sub   # billed(fits) == fits <= billable
    return max(0, fits - guard_s)


def max_duration(route_limit: int | None, tenant_limit: int, remaining_budget, rate) -> int:
    """The smallest of the route's limit, the tenant's limit and what the budget buys."""
    limits = [tenant_limit]
    if route_limit is not None:
        limits.append(route_limit)
    by_budget = budget_seconds(remaining_budget, rate)
    if by_budget is not None:
        limits.append(by_budget)
    for v in limits:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError("duration limits must be ints")
    return max(0, min(limits))


def decide_duration(route_limit: int | None, tenant_limit: int, remaining_budget,
                    rate) -> int | Refusal:
    """max_duration, or the Refusal when it leaves no time to talk."""
    # Not cached: the remaining budget moves with every hangup, so real traffic would
    # never hit a cache keyed on it.
    return _decide_duration(route_limit, tenant_limit, remaining_budget, rate)


def _decide_duration(route_limit, tenant_limit, remaining_budget, rate) -> int | Refusal:
    seconds = max_duration(route_limit, tenant_limit, remaining_budget, rate)
    if seconds > 0:
        return seconds
    by_budget = budget_seconds(remaining_budget, rate)
    if by_budget is not None and by_budget <= 0:
        return refusal("budget_exhausted", "remaining budget does not cover the first increment")
    return refusal("no_duration", "route or tenant duration limit is zero")
