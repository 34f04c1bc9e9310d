"""Carrier health (DESIGN §4): a score and a circuit breaker, as pure functions of time.

- start at 100; carrier-side success +2 (max 100); carrier-side failure −5 (min 0);
- 10 consecutive carrier-side failures disable the carrier (disabled_at = now);
- a score that falls below ROUTABLE_MIN (30) also disables it: a carrier that is skipped
  gets no calls, so without a probe its score could never rise again;
- after `cooldown_s` a disabled carrier is half-open: usable for a probe call. A success
  re-enables it (score lifted to at least ROUTABLE_MIN, so it really is routable again);
  a failure while half-open restarts the cool-down.

Only carrier-side outcomes move health (see causes.classify): callers feed on_success /
on_failure with Outcome.SUCCESS / Outcome.CARRIER_FAILURE and nothing else.

Gateway state (sofia::gateway_state) does not touch the score: the score is about calls,
and an OPTIONS-ping blip on one of a carrier's gateways says nothing about the others.
Instead a down gateway is left out of the dial string (lcr: CarrierCandidate.down_gateways)
and a carrier whose gateways are all down is skipped. See gateway_event_state().
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

__all__ = ["CarrierHealth", "on_success", "on_failure", "availability", "is_routable",
           "ROUTABLE_MIN", "DISABLE_AFTER", "gateway_event_state", "on_gateway_down",
           "on_gateway_up", "apply_gateway_event"]

MAX_SCORE = 100
SUCCESS_STEP = 2
FAILURE_STEP = 5
ROUTABLE_MIN = 30
DISABLE_AFTER = 10          # consecutive carrier-side failures


@dataclass(frozen=True)
class CarrierHealth:
    score: int = MAX_SCORE
    consecutive_failures: int = 0
    disabled_at: datetime | None = None     # when it stopped being routable


def _cooled(h: CarrierHealth, now: datetime, cooldown_s: float) -> bool:
    return h.disabled_at is not None and (now - h.disabled_at).total_seconds() >= cooldown_s


def availability(h: CarrierHealth, now: datetime, cooldown_s: float = 60) -> str:
    """'up' | 'disabled' | 'half_open' (cool-down over: one probe may go through)."""
    if h.disabled_at is None:
        # A score below the floor without a timestamp only comes from hand-made data;
        # allow a probe rather than black-holing the carrier forever.
        return "up" if h.score >= ROUTABLE_MIN else "half_open"
    return "half_open" if _cooled(h, now, cooldown_s) else "disabled"


def is_routable(h: CarrierHealth, now: datetime, cooldown_s: float = 60) -> bool:
    """Score >= 30 and not disabled, or half-open (for a probe)."""
    return availability(h, now, cooldown_s) != "disabled"


def on_success(h: CarrierHealth, now: datetime, cooldown_s: float = 60) -> CarrierHealth:
    score = min(MAX_SCORE, h.score + SUCCESS_STEP)
    if h.disabled_at is not None:
        if not _cooled(h, now, cooldown_s):
            # A late success from a call placed before the carrier was disabled: count it,
            # but the probe after the cool-down decides whether the carrier comes back.
            return replace(h, score=score, consecutive_failures=0)
        score = max(score, ROUTABLE_MIN)
    return CarrierHealth(score=score, consecutive_failures=0, disabled_at=None)


def on_failure(h: CarrierHealth, now: datetime, cooldown_s: float = 60) -> CarrierHealth:
    score = max(0, h.score - FAILURE_STEP)
    failures = h.consecutive_failures + 1
    disabled_at = h.disabled_at
    if disabled_at is None:
        if failures >= DISABLE_AFTER or score < ROUTABLE_MIN:
            disabled_at = now
    elif _cooled(h, now, cooldown_s):
        disabled_at = now           # the half-open probe failed: cool down again
    # else: a late failure during the cool-down; do not extend it
    return CarrierHealth(score=score, consecutive_failures=failures, disabled_at=disabled_at)


# --- gateway state ------------------------------------------------------------------------

_DOWN_STATES = frozenset({"FAILED", "FAIL_WAIT", "TIMEOUT", "EXPIRED", "DOWN"})
_UP_STATES = frozenset({"REGED"})


def gateway_event_state(event: str, state: str | None = None,
                        ping_status: str | None = None) -> str | None:
    """'up' | 'down' | None (no information) from a sofia gateway event.

    event: 'gateway_state' | 'gateway_add' | 'gateway_delete' (the sofia:: subclass).
    Ping-Status is the better signal when present (gateways with ping=N); State alone
    says 'down' for registration failures; NOREG / TRYING / REGISTER say nothing
    (a register=false gateway is always NOREG).
    """
    e = (event or "").lower().removeprefix("sofia::")
    if e == "gateway_delete":
        return "down"           # bridging to a deleted gateway fails (INVALID_GATEWAY)
    if e == "gateway_add":
        return "up"             # new gateways are usable until a ping says otherwise
    ping = (ping_status or "").upper()
    if ping == "DOWN":
        return "down"
    if ping == "UP":
        return "up"
    st = (state or "").upper()
    if st in _DOWN_STATES:
        return "down"
    if st in _UP_STATES:
        return "up"
    return None


def on_gateway_down(down: frozenset[str], gateway: str) -> frozenset[str]:
    return down | {gateway}


def on_gateway_up(down: frozenset[str], gateway: str) -> frozenset[str]:
    return down - {gateway}


def apply_gateway_event(down: frozenset[str], gateway: str, event: str,
                        state: str | None = None, ping_status: str | None = None) -> frozenset[str]:
    """The set of down gateway names after one sofia gateway event."""
    verdict = gateway_event_state(event, state, ping_status)
    if verdict == "down":
        return on_gateway_down(down, gateway)
    if verdict == "up":
        return on_gateway_up(down, gateway)
    return down
