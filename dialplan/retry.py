"""Retries of a whole originated call: which outcomes are tried again, when, and how often.

Failover (dialplan/failover.py) happens inside one attempt: a carrier-side failure moves on
to the next LCR carrier at once. A *retry* is a new attempt of the whole call, later, after
the attempt ended without an answer: every carrier failed, or the callee was busy or did
not answer. Pure: no clock, no randomness of its own (the caller passes the time and a
jitter key), so the schedule of a call can be recomputed exactly from what was recorded.

The table (docs/originate.md), one row per outcome of an attempt:

  outcome          within the attempt      later (when the request asks for retries)
  busy             stop                    after `busy` seconds (default 60), growing
  no_answer        stop                    after `no_answer` seconds (default 300), growing
  congestion       next carrier (failover) after `congestion` seconds (default 30), growing
  carrier_failure  next carrier (failover) after `carrier_failure` seconds (default 30)
  declined         stop                    never (default; a tenant may allow it)
  invalid_number   stop                    never (fixed: the number does not exist)
  cancelled        stop                    never (fixed: someone hung it up on purpose)
  answered         —                       never (done)

Delay of retry n (n = 1 after the first attempt): `base × factor^(n−1)`, capped at
`max_delay_s`, then jittered by ±`jitter_percent` % (the jitter fraction comes from the
call's id and the attempt number: deterministic, and different for every call so that a
batch of busy numbers does not come back in one burst), and capped again: never more than
`max_delay_s`. Everything is in whole milliseconds (integers: exact, easy to assert).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Mapping

__all__ = ["OUTCOMES", "RETRYABLE", "NEVER", "DEFAULT_POLICY", "RetryPolicy", "RetryAsk",
           "RetryError", "Next", "classify", "parse_policy", "policy_from", "parse_ask",
           "jitter_unit", "delay_ms", "bounds_ms", "next_step"]

ANSWERED, BUSY, NO_ANSWER, CONGESTION = "answered", "busy", "no_answer", "congestion"
CARRIER_FAILURE, DECLINED, INVALID_NUMBER, CANCELLED = (
    "carrier_failure", "declined", "invalid_number", "cancelled")
OUTCOMES = (ANSWERED, BUSY, NO_ANSWER, CONGESTION, CARRIER_FAILURE, DECLINED, INVALID_NUMBER,
            CANCELLED)
# Outcomes a tenant may give a delay (or "never"); the others never retry, whatever is set.
RETRYABLE = (BUSY, NO_ANSWER, CONGESTION, CARRIER_FAILURE, DECLINED)
FIXED_NEVER = {INVALID_NUMBER: "a number that does not exist is never called again",
               CANCELLED: "a call hung up on purpose is never placed again"}
NEVER = "never"

JITTER_SPAN = 1 << 32          # jitter_unit() is in [0, JITTER_SPAN)
MAX_ATTEMPTS = 10              # per call, the first included
MAX_DELAY_S = 7 * 86400

_CAUSE_BUSY = frozenset({"USER_BUSY"})
_CAUSE_INVALID = frozenset({"UNALLOCATED_NUMBER", "INVALID_NUMBER_FORMAT", "NUMBER_CHANGED",
                            "NO_ROUTE_DESTINATION"})
_CAUSE_NO_ANSWER = frozenset({"NO_ANSWER", "ALLOTTED_TIMEOUT", "PROGRESS_TIMEOUT",
                              "NO_USER_RESPONSE", "SUBSCRIBER_ABSENT"})
_CAUSE_CONGESTION = frozenset({"NORMAL_CIRCUIT_CONGESTION", "SWITCH_CONGESTION",
                               "REQUESTED_CHAN_UNAVAIL", "DESTINATION_OUT_OF_ORDER"})
_CAUSE_CANCELLED = frozenset({"ORIGINATOR_CANCEL", "MANAGER_REQUEST", "SYSTEM_SHUTDOWN",
                              "LOSE_RACE", "PICKED_OFF"})
_SIP = {486: BUSY, 600: BUSY, 603: DECLINED, 404: INVALID_NUMBER, 604: INVALID_NUMBER,
        410: INVALID_NUMBER, 484: INVALID_NUMBER, 503: CONGESTION}


def classify(answered: bool, hangup_cause: str | None, sip_status: int | None) -> str:
    """The outcome of an attempt from its last carrier leg (the one that decided it)."""
    if answered:
        return ANSWERED
    cause = (hangup_cause or "").strip().upper()
    if cause in ("NO_ANSWER", "ALLOTTED_TIMEOUT", "PROGRESS_TIMEOUT"):
        return NO_ANSWER                     # rang out (a 487 here answered our own CANCEL)
    if cause in _CAUSE_CANCELLED:
        return CANCELLED
    if isinstance(sip_status, int) and not isinstance(sip_status, bool):
        if sip_status in _SIP:
            return _SIP[sip_status]
        if sip_status == 487:
            return CANCELLED
        if 600 <= sip_status < 700:
            return DECLINED
        if 300 <= sip_status < 900:
            return CARRIER_FAILURE
    if cause in _CAUSE_BUSY:
        return BUSY
    if cause in _CAUSE_INVALID:
        return INVALID_NUMBER
    if cause in _CAUSE_NO_ANSWER:
        return NO_ANSWER
    if cause in _CAUSE_CONGESTION:
        return CONGESTION
    return CARRIER_FAILURE


class RetryError(ValueError):
    """A `retry` value refused; the message names the key (`retry.busy: ...`)."""


@dataclass(frozen=True)
class RetryPolicy:
    """The table with a tenant's overrides: base delay (seconds) per outcome, None = never."""
    delays: tuple[tuple[str, int | None], ...]
    factor: int = 2
    max_delay_s: int = 3600
    jitter_percent: int = 20
    daily_cap: int | None = 20       # attempts per number per day (UTC), None = no cap

    def base_s(self, outcome: str) -> int | None:
        return dict(self.delays).get(outcome)

    def as_dict(self) -> dict:
        return {**{k: (NEVER if v is None else v) for k, v in self.delays},
                "factor": self.factor, "max_delay_s": self.max_delay_s,
                "jitter_percent": self.jitter_percent, "daily_cap": self.daily_cap}


_DEFAULT_DELAYS = ((BUSY, 60), (NO_ANSWER, 300), (CONGESTION, 30), (CARRIER_FAILURE, 30),
                   (DECLINED, None))
DEFAULT_POLICY = RetryPolicy(_DEFAULT_DELAYS)

# key -> (lowest, highest) for the integer settings
_LIMITS = {"factor": (1, 10), "max_delay_s": (1, MAX_DELAY_S), "jitter_percent": (0, 100),
           "daily_cap": (1, 10_000)}


def _int(key: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        # TOML and JSON doors hand integers as int; "30" or 30.5 is refused, not guessed at
        raise RetryError(f"retry.{key}: {value!r} is not a whole number")
    if not low <= value <= high:
        raise RetryError(f"retry.{key}: {value} is not between {low} and {high}")
    return value


def parse_policy(raw) -> dict:
    """A tenant's `retry` table checked and normalised (the keys it sets only). Keys: an
    outcome of RETRYABLE = base delay in seconds (1..604800) or "never"; `factor` (1-10),
    `max_delay_s`, `jitter_percent` (0-100), `daily_cap` (1-10000, or "none": no cap)."""
    if not isinstance(raw, Mapping):
        raise RetryError("retry: must be a table, e.g. {busy = 120, daily_cap = 5}")
    out: dict = {}
    for key, value in raw.items():
        if key in FIXED_NEVER:
            raise RetryError(f"retry.{key}: cannot be set: {FIXED_NEVER[key]}")
        if key in RETRYABLE:
            out[key] = NEVER if value == NEVER else _int(key, value, 1, MAX_DELAY_S)
        elif key == "daily_cap" and value == "none":
            out[key] = "none"
        elif key in _LIMITS:
            out[key] = _int(key, value, *_LIMITS[key])
        else:
            raise RetryError(f"retry.{key}: unknown key (expected one of "
                             f"{', '.join(RETRYABLE + tuple(_LIMITS))})")
    return out


def policy_from(raw: Mapping | None) -> RetryPolicy:
    """The effective policy: DEFAULT_POLICY with a tenant's (validated) settings over it."""
    if not raw:
        return DEFAULT_POLICY
    clean = parse_policy(raw)
    delays = tuple((k, None if clean.get(k, v) == NEVER else clean.get(k, v))
                   for k, v in _DEFAULT_DELAYS)
    cap = clean.get("daily_cap", DEFAULT_POLICY.daily_cap)
    return RetryPolicy(delays, factor=clean.get("factor", DEFAULT_POLICY.factor),
                       max_delay_s=clean.get("max_delay_s", DEFAULT_POLICY.max_delay_s),
                       jitter_percent=clean.get("jitter_percent", DEFAULT_POLICY.jitter_percent),
                       daily_cap=None if cap == "none" else cap)


@dataclass(frozen=True)
class RetryAsk:
    """What a request asks: at most `max_attempts` attempts in all (the first included),
    retried on the outcomes in `on` (default: every outcome the table retries)."""
    max_attempts: int
    on: tuple[str, ...] = field(default=RETRYABLE)

    def as_dict(self) -> dict:
        return {"max_attempts": self.max_attempts, "on": list(self.on)}


def parse_ask(raw) -> RetryAsk | None:
    """The request's `retry` object: {"max_attempts": 3, "on": ["busy", "no_answer"]}."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise RetryError("retry: must be an object, e.g. {\"max_attempts\": 3}")
    unknown = set(raw) - {"max_attempts", "on"}
    if unknown:
        raise RetryError(f"retry.{sorted(unknown)[0]}: unknown key (expected max_attempts, on)")
    if "max_attempts" not in raw:
        raise RetryError("retry.max_attempts: required (attempts in all, 1 to "
                         f"{MAX_ATTEMPTS})")
    attempts = _int("max_attempts", raw["max_attempts"], 1, MAX_ATTEMPTS)
    on = raw.get("on", list(RETRYABLE))
    if not isinstance(on, (list, tuple)) or not on:
        raise RetryError("retry.on: a non-empty list of outcomes")
    for item in on:
        if item in FIXED_NEVER:
            raise RetryError(f"retry.on: {item!r} is never retried: {FIXED_NEVER[item]}")
        if item not in RETRYABLE:
            raise RetryError(f"retry.on: {item!r} is not one of {', '.join(RETRYABLE)}")
    return RetryAsk(attempts, tuple(dict.fromkeys(on)))


def jitter_unit(key: str, attempt: int) -> int:
    """A number in [0, JITTER_SPAN) fixed by the call's id and the attempt number."""
    digest = hashlib.sha256(f"{key}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def bounds_ms(policy: RetryPolicy, outcome: str, retry_no: int) -> tuple[int, int]:
    """(lowest, highest) delay retry `retry_no` (1, 2, ...) after `outcome` can get."""
    raw = _raw_ms(policy, outcome, retry_no)
    spread = raw * policy.jitter_percent // 100
    cap = policy.max_delay_s * 1000
    return min(raw - spread, cap), min(raw + spread, cap)


def _raw_ms(policy: RetryPolicy, outcome: str, retry_no: int) -> int:
    base = policy.base_s(outcome)
    if base is None:
        raise ValueError(f"{outcome} is never retried")
    if retry_no < 1:
        raise ValueError("retry numbers start at 1")
    cap = policy.max_delay_s * 1000
    # the exponent is bounded by MAX_ATTEMPTS, and min() keeps the product small
    return min(cap, base * 1000 * policy.factor ** min(retry_no - 1, 64))


def delay_ms(policy: RetryPolicy, outcome: str, retry_no: int, unit: int) -> int:
    """Milliseconds from the end of attempt `retry_no` to retry `retry_no` (unit: jitter_unit)."""
    raw = _raw_ms(policy, outcome, retry_no)
    spread = raw * policy.jitter_percent // 100
    jittered = raw - spread + (2 * spread * unit) // JITTER_SPAN
    return min(jittered, policy.max_delay_s * 1000)


@dataclass(frozen=True)
class Next:
    """After an attempt: `retry` after `delay_ms`, or `final` with the reason."""
    action: str            # 'retry' | 'final'
    reason: str
    delay_ms: int = 0


def next_step(policy: RetryPolicy, ask: RetryAsk | None, attempt_no: int, outcome: str,
              key: str) -> Next:
    """What follows attempt `attempt_no` (1, 2, ...) of the call `key` that ended `outcome`."""
    if outcome == ANSWERED:
        return Next("final", "answered")
    if outcome in FIXED_NEVER:
        return Next("final", f"{outcome}: never retried")
    if outcome not in RETRYABLE or policy.base_s(outcome) is None:
        return Next("final", f"{outcome}: never retried (retry table)")
    if ask is None:
        return Next("final", "no retries asked")
    if outcome not in ask.on:
        return Next("final", f"{outcome}: not in the request's retry.on")
    if attempt_no >= ask.max_attempts:
        return Next("final", f"max_attempts ({ask.max_attempts}) reached")
    return Next("retry", f"{outcome}: retry {attempt_no}",
                delay_ms(policy, outcome, attempt_no, jitter_unit(key, attempt_no)))
