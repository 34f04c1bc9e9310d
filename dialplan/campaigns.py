"""Campaign rules, without I/O or clocks of their own (docs/campaigns.md).

- the pace: a token schedule, one dial slot every 1/pace seconds, shared by every daemon
  through the campaign row (`next_slot`);
- how many more calls may start now: the campaign's and the tenant's concurrency left
  (`dial_room`);
- calling hours in each contact's own time zone(s) (`Hours`, `zones_for`, `window_open`);
- the answer-rate rule that pauses a campaign (`answer_rate_pause`);
- a call's outcome for a contact (`outcome_of`) and the allowed state changes (`transition`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as pn_timezone

STATES = ("draft", "running", "paused", "stopped", "completed")
# action -> (states it applies to, resulting state)
ACTIONS = {
    "start": (("draft", "paused"), "running"),
    "resume": (("draft", "paused"), "running"),
    "pause": (("running",), "paused"),
    "stop": (("draft", "running", "paused"), "stopped"),
    "complete": (("running",), "completed"),
}
OUTCOMES = ("answered", "busy", "no-answer", "failed", "refused", "dnc", "unknown")
# Outcomes that are attempts of a call: the answer rate counts these and only these.
ATTEMPTED = ("answered", "busy", "no-answer", "failed")
_BUSY = {"USER_BUSY"}
_NO_ANSWER = {"NO_ANSWER", "NO_USER_RESPONSE", "ORIGINATOR_CANCEL", "ALLOTTED_TIMEOUT",
              "PROGRESS_TIMEOUT", "RECOVERY_ON_TIMER_EXPIRE"}
_DAYS = {"mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6, "sun": 7}
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$|^24:00$")


class CampaignRuleError(ValueError):
    """A value a campaign cannot take; the message names the field."""


class TransitionError(ValueError):
    """An action the campaign's state does not allow (the API answers 409)."""


def transition(state: str, action: str) -> str:
    """The state after `action`, or TransitionError naming both."""
    if action not in ACTIONS:
        raise TransitionError(f"unknown action {action!r}")
    allowed, after = ACTIONS[action]
    if state not in allowed:
        raise TransitionError(f"cannot {action} a campaign that is {state}")
    return after


# --- pace ------------------------------------------------------------------------------------
def next_slot(next_at: datetime, now: datetime, pace_cps: Decimal) -> tuple[datetime, datetime]:
    """(this dial's slot, the schedule's next) for a pace of `pace_cps` calls per second.

    Slots are 1/pace apart. A campaign that was idle (paused, waiting for hours, at its
    concurrency) does not bank the slots it missed: the next slot is never before `now`,
    so it never bursts to catch up."""
    if pace_cps <= 0:
        raise CampaignRuleError("pace_cps: must be above 0")
    slot = max(next_at, now)
    return slot, slot + timedelta(seconds=float(1 / Decimal(pace_cps)))


def dial_room(max_concurrent: int | None, in_flight: int, tenant_max: int | None = None,
              tenant_live: int = 0) -> int:
    """How many more calls may start now: the campaign's concurrency left, never more than
    the tenant's own cap leaves (its other calls count too)."""
    room = (max_concurrent if max_concurrent is not None else 1_000_000) - in_flight
    if tenant_max is not None:
        room = min(room, tenant_max - tenant_live)
    return max(0, room)


# --- calling hours -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Hours:
    """Local time of day [start, end) on the ISO weekdays `days`; None start = any time.
    An end before the start crosses midnight (21:00-02:00); the day is the start's."""
    start: time | None = None
    end: time | None = None
    days: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7)

    @property
    def always(self) -> bool:
        return self.start is None and len(self.days) == 7

    def open_at(self, local: datetime) -> bool:
        day = local.isoweekday()
        if self.start is None or self.start == self.end:      # any time / the whole day
            return day in self.days
        t = local.time().replace(tzinfo=None)
        if self.end == time(0) or self.start < self.end:       # within one day (to 24:00)
            return self.start <= t and (self.end == time(0) or t < self.end) and day in self.days
        if t >= self.start:                                    # crossing midnight: evening
            return day in self.days
        if t < self.end:                                       # ... and after midnight
            return (local - timedelta(days=1)).isoweekday() in self.days
        return False


def parse_hours(text: str | None, days: str | None = None) -> Hours:
    """`"09:00-20:00"` (None or "" = any time) and `"mon-fri"` / `"mon,wed,sat"` (None = every day)."""
    start = end = None
    if text:
        if not isinstance(text, str):
            raise CampaignRuleError("calling_hours: a string HH:MM-HH:MM")
        parts = text.split("-")
        if len(parts) != 2 or not all(_HHMM.match(p.strip()) for p in parts):
            raise CampaignRuleError(f"calling_hours: {text!r} is not HH:MM-HH:MM (local time)")
        start, end = (_time(p.strip()) for p in parts)
    return Hours(start, end, parse_days(days))


def _time(text: str) -> time:
    if text == "24:00":
        return time(0)
    hh, mm = text.split(":")
    return time(int(hh), int(mm))


def parse_days(text) -> tuple[int, ...]:
    if text is None or text == "":
        return (1, 2, 3, 4, 5, 6, 7)
    if isinstance(text, (list, tuple)):
        text = ",".join(str(t) for t in text)
    if not isinstance(text, str):
        raise CampaignRuleError("calling_days: a string such as mon-fri or mon,wed,fri")
    out: set[int] = set()
    for part in text.lower().replace(" ", "").split(","):
        a, _, b = part.partition("-")
        if a not in _DAYS or (b and b not in _DAYS):
            raise CampaignRuleError(f"calling_days: {part!r} is not a day or range of "
                                    "mon tue wed thu fri sat sun")
        lo, hi = _DAYS[a], _DAYS[b or a]
        span = range(lo, hi + 1) if lo <= hi else [*range(lo, 8), *range(1, hi + 1)]
        out.update(span)
    return tuple(sorted(out))


def format_hours(hours: Hours) -> str | None:
    if hours.start is None:
        return None
    return f"{hours.start:%H:%M}-{'24:00' if hours.end == time(0) else format(hours.end, '%H:%M')}"


def format_days(days) -> str:
    names = {v: k for k, v in _DAYS.items()}
    return ",".join(names[d] for d in sorted(days))


def check_zone(name) -> str:
    if not isinstance(name, str) or not name:
        raise CampaignRuleError("timezone: an IANA zone name such as Europe/London")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CampaignRuleError(f"timezone: {name!r} is not an IANA time zone") from None
    return name


def zones_for(e164: str, default_zone: str = "UTC") -> str:
    """The zone key of a number: its zones from phonenumbers' geocoding data, sorted and
    comma-joined (a number whose area spans several zones gets them all), else the default."""
    try:
        parsed = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return default_zone
    zones = [z for z in pn_timezone.time_zones_for_number(parsed) if z != "Etc/Unknown"]
    return ",".join(sorted(set(zones))) if zones else default_zone


def window_open(hours: Hours, zone_key: str, now_utc: datetime) -> bool:
    """May a contact whose zone key is `zone_key` be called at `now_utc`? Only when the
    calling hours are open in every one of its zones: calling someone at 07:00 their time
    because their number is also valid three zones east is what this rule exists to prevent."""
    if hours.always:
        return True
    return all(hours.open_at(now_utc.astimezone(ZoneInfo(z))) for z in zone_key.split(","))


# --- outcomes and the answer rate ----------------------------------------------------------------
def outcome_of(answered: bool, hangup_cause: str | None) -> str:
    if answered:
        return "answered"
    if hangup_cause in _BUSY:
        return "busy"
    if hangup_cause in _NO_ANSWER:
        return "no-answer"
    return "failed"


def answer_rate_pause(recent: list[str], window: int, threshold: Decimal | None) -> str | None:
    """The reason to pause, or None. `recent`: the campaign's latest outcomes, newest first.
    Only attempts count (dnc, refused and unknown are not calls), and only once `window` of
    them exist: three unanswered calls at the start say nothing yet."""
    if threshold is None:
        return None
    attempts = [o for o in recent if o in ATTEMPTED][:window]
    if len(attempts) < window:
        return None
    rate = Decimal(sum(1 for o in attempts if o == "answered")) / Decimal(window)
    if rate < Decimal(threshold):
        return (f"answer rate {rate:.2f} over the last {window} attempts is below "
                f"{Decimal(threshold):.2f}")
    return None
