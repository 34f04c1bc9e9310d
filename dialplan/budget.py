"""Budget arithmetic: how live calls share a tenant's monthly budget (docs/budgets.md).

Pure: money in, money and seconds out. The state (spend, reservations, leases) lives in
`switchd/accounting/budgets.py`, which applies these rules atomically (in Redis, one Lua
script does the same `grant` as below).

The share rule. A tenant's month has a budget B, a settled spend S (costs of its finished
calls) and reservations R held by its live calls. A new call may use what is neither spent
nor reserved, `available = B - S - R`, and reserves

    grant = min(available, ceiling)

where `ceiling` is what the call's longest allowed duration (the tenant's max call seconds,
plus the hangup guard second) costs at the call's tariff. The call's max duration is what
its grant buys (`policy.budget_seconds`), capped by the tenant's limit. So N parallel calls
together never reserve more than B - S, and no call is given money another call holds.
A call whose grant buys less than its tenant limit is *cut by the budget*; when budget
frees up (a call ends cheaper than it reserved, a top-up) such calls grow their grant
again by the same rule and their limit is extended.

Money travels through Redis as integer micro-units (6 decimal places, the precision of
budgets and costs), never as floats.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from .policy import HANGUP_GUARD_S, budget_seconds
from .rating import billed_seconds, to_decimal

__all__ = ["THRESHOLDS", "MICRO", "to_micros", "from_micros", "ceiling_cost", "ceiling_micros",
           "grant", "grant_micros",
           "Share", "share", "grow", "thresholds_crossed", "extension_seconds", "month_of",
           "month_key"]

THRESHOLDS = (75, 90, 100)          # percent of the monthly budget that raise an alert
MICRO = Decimal("0.000001")


def to_micros(amount, round_up: bool = False) -> int:
    """Integer micro-units of a money amount; sub-micro digits go down (or up)."""
    d = to_decimal(amount, "amount") / MICRO
    return int(d.to_integral_value(rounding=ROUND_CEILING if round_up else ROUND_FLOOR))


def from_micros(micros: int) -> Decimal:
    return Decimal(int(micros)).scaleb(-6)      # exact: 6 decimal places


def ceiling_micros(rate, seconds: int) -> int:
    """`ceiling_cost` in micro-units. Remembered by value (a routing decision per call
    asks it; the answer depends only on these five numbers)."""
    return _ceiling_micros(rate.rate_per_min, rate.connect_fee, rate.initial_increment,
                           rate.subsequent_increment, int(seconds))


@functools.lru_cache(maxsize=4096)
def _ceiling_micros(rate_per_min, connect_fee, initial, subsequent, seconds) -> int:
    view = _Tariff(rate_per_min, connect_fee, initial, subsequent)
    return to_micros(ceiling_cost(view, seconds), round_up=True)


@dataclass(frozen=True)
class _Tariff:
    rate_per_min: Decimal
    connect_fee: Decimal
    initial_increment: int
    subsequent_increment: int


def ceiling_cost(rate, seconds: int, guard_s: int = HANGUP_GUARD_S) -> Decimal:
    """What a call of `seconds` (cut by sched_hangup, so billed up to seconds + guard)
    costs at `rate`, rounded up to the micro: the most a call with that limit reserves."""
    billed = billed_seconds(int(seconds) + guard_s, rate.initial_increment,
                            rate.subsequent_increment)
    cost = (to_decimal(rate.connect_fee, "connect_fee")
            + to_decimal(rate.rate_per_min, "rate_per_min") * billed / 60)
    return cost.quantize(MICRO, rounding=ROUND_CEILING)


def grant(budget, spent, reserved_others, ceiling) -> Decimal:
    """The share rule: min(budget - spent - reserved_others, ceiling), never below 0.
    `ceiling` None means the call's cost is not bounded by a tariff (reserve what is left)."""
    available = (to_decimal(budget, "budget") - to_decimal(spent, "spent")
                 - to_decimal(reserved_others, "reserved"))
    if ceiling is not None:
        available = min(available, to_decimal(ceiling, "ceiling"))
    return max(Decimal(0), available)


def grant_micros(budget: int, spent: int, reserved_others: int, ceiling: int | None) -> int:
    """`grant` in integer micro-units, as the stores (and the Redis script) apply it."""
    available = budget - spent - reserved_others
    if ceiling is not None and ceiling < available:
        available = ceiling
    return available if available > 0 else 0


@dataclass(frozen=True)
class Share:
    amount: Decimal         # money reserved
    seconds: int            # max duration it buys (capped by the tenant's limit)
    cut: bool               # the budget, not the tenant's limit, set the duration


def share(granted, rate, tenant_limit: int) -> Share:
    """Max duration of a call holding `granted` at `rate` (0 = it cannot even pay the first
    increment: refuse it with the budget refusal)."""
    by_budget = budget_seconds(granted, rate)
    if by_budget is None:
        return Share(to_decimal(granted, "granted"), tenant_limit, False)
    seconds = min(tenant_limit, by_budget)
    return Share(to_decimal(granted, "granted"), max(0, seconds), by_budget < tenant_limit)


def grow(current, budget, spent, reserved_others, ceiling) -> Decimal:
    """A live call's new grant when budget may have freed: the share rule again, but never
    less than what it already holds (an extension never shortens a call)."""
    return max(to_decimal(current, "current"), grant(budget, spent, reserved_others, ceiling))


def thresholds_crossed(before, after, budget, thresholds=THRESHOLDS) -> list[int]:
    """The thresholds (percent of `budget`) that spend moving from `before` to `after`
    passes; each is crossed by exactly one move, so each alert is raised once."""
    if not budget or budget <= 0:
        return []
    return [t for t in thresholds if before * 100 < budget * t <= after * 100]


def extension_seconds(limit_s: int, elapsed_us: int) -> int | None:
    """`N` for `sched_hangup +N` that cuts an answered call at `limit_s` after its answer,
    `elapsed_us` after it. FreeSWITCH fires `+N` at the current whole second + N, i.e.
    at most N seconds from now, so N = floor(limit - elapsed) never passes the limit.
    None when nothing is left to schedule (the call is at its limit already)."""
    if elapsed_us < 0:
        elapsed_us = 0
    n = (int(limit_s) * 1_000_000 - int(elapsed_us)) // 1_000_000
    return n if n > 0 else None


def month_of(at: datetime) -> datetime:
    """The budget period a moment belongs to: its calendar month, in UTC."""
    return at.astimezone(timezone.utc).replace(day=1, hour=0, minute=0, second=0,
                                               microsecond=0)


def month_key(at: datetime) -> str:
    return f"{month_of(at):%Y-%m}"
