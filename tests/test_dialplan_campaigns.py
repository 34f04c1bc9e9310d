"""Campaign rules (dialplan/campaigns.py): pace schedule, concurrency room, calling hours in
the contact's own zones, the answer-rate pause, outcomes and state changes."""
from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from decimal import Decimal

import pytest

from dialplan import campaigns as rules

UTC = timezone.utc
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)          # a Monday


def test_pace_slots_are_one_over_the_rate_apart_and_never_bank_idle_time():
    next_at, slots = T0, []
    for _ in range(5):           # claimed faster than the pace: slots keep their spacing
        slot, next_at = rules.next_slot(next_at, T0, Decimal("4"))
        slots.append(slot)
    assert [(s - T0).total_seconds() for s in slots] == [0, 0.25, 0.5, 0.75, 1.0]
    later = T0 + timedelta(seconds=60)       # idle for a minute: no burst of 240 slots
    slot, following = rules.next_slot(next_at, later, Decimal("4"))
    assert slot == later and following == later + timedelta(seconds=0.25)
    with pytest.raises(rules.CampaignRuleError):
        rules.next_slot(T0, T0, Decimal(0))


def test_dial_room_takes_the_smaller_of_campaign_and_tenant_room():
    assert rules.dial_room(10, 4) == 6
    assert rules.dial_room(10, 4, tenant_max=5, tenant_live=3) == 2
    assert rules.dial_room(10, 12) == 0
    assert rules.dial_room(None, 3, tenant_max=3, tenant_live=3) == 0


def test_hours_parse_and_refuse_with_the_field_named():
    hours = rules.parse_hours("09:00-20:00", "mon-fri")
    assert (hours.start, hours.end, hours.days) == (time(9), time(20), (1, 2, 3, 4, 5))
    assert rules.parse_days("fri-mon") == (1, 5, 6, 7)
    assert rules.parse_hours(None).always
    for bad in ("9-20", "09:00", "25:00-26:00", "09:60-10:00"):
        with pytest.raises(rules.CampaignRuleError, match="calling_hours"):
            rules.parse_hours(bad)
    with pytest.raises(rules.CampaignRuleError, match="calling_days"):
        rules.parse_days("mon-funday")


def test_window_is_judged_in_the_contacts_own_zone():
    hours = rules.parse_hours("09:00-20:00", "mon-fri")
    london = rules.zones_for("+442079460999")
    new_york = rules.zones_for("+12125550100")
    assert (london, new_york) == ("Europe/London", "America/New_York")
    at = datetime(2026, 11, 30, 13, 30, tzinfo=UTC)      # 13:30 London, 08:30 New York
    assert rules.window_open(hours, london, at)
    assert not rules.window_open(hours, new_york, at)
    assert rules.window_open(hours, new_york, at + timedelta(hours=1))
    saturday = datetime(2026, 12, 5, 13, 0, tzinfo=UTC)
    assert not rules.window_open(hours, london, saturday)


def test_a_number_spanning_zones_must_be_inside_the_window_in_all_of_them():
    hours = rules.parse_hours("09:00-20:00")
    toll_free = rules.zones_for("+18005550100")           # every NANP zone
    assert "America/Los_Angeles" in toll_free and "America/New_York" in toll_free
    at = datetime(2026, 11, 30, 15, 0, tzinfo=UTC)        # 10:00 New York, 07:00 LA
    assert not rules.window_open(hours, toll_free, at)
    assert rules.window_open(hours, "America/New_York", at)
    assert rules.zones_for("not a number", "Europe/Paris") == "Europe/Paris"


def test_windows_across_midnight_belong_to_the_day_they_start():
    hours = rules.parse_hours("21:00-02:00", "fri")
    friday_late = datetime(2026, 12, 4, 23, 0, tzinfo=UTC)
    saturday_early = datetime(2026, 12, 5, 1, 0, tzinfo=UTC)
    sunday_early = datetime(2026, 12, 6, 1, 0, tzinfo=UTC)
    assert rules.window_open(hours, "UTC", friday_late)
    assert rules.window_open(hours, "UTC", saturday_early)
    assert not rules.window_open(hours, "UTC", sunday_early)
    assert not rules.window_open(hours, "UTC", datetime(2026, 12, 4, 12, 0, tzinfo=UTC))
    to_midnight = rules.parse_hours("18:00-24:00")
    assert rules.window_open(to_midnight, "UTC", datetime(2026, 12, 4, 23, 59, tzinfo=UTC))
    assert not rules.window_open(to_midnight, "UTC", datetime(2026, 12, 4, 0, 30, tzinfo=UTC))


def test_answer_rate_pause_needs_a_full_window_of_attempts():
    low = ["no-answer"] * 9 + ["answered"]
    assert rules.answer_rate_pause(low[:5], 10, Decimal("0.3")) is None   # too few yet
    reason = rules.answer_rate_pause(low, 10, Decimal("0.3"))
    assert reason == "answer rate 0.10 over the last 10 attempts is below 0.30"
    # dnc / refused / unknown are not attempts and do not fill the window
    assert rules.answer_rate_pause(["dnc"] * 20 + low[:5], 10, Decimal("0.3")) is None
    assert rules.answer_rate_pause(["answered"] * 3 + ["busy"] * 7, 10, Decimal("0.3")) is None
    assert rules.answer_rate_pause(low, 10, None) is None


def test_outcomes_and_transitions():
    assert rules.outcome_of(True, "NORMAL_CLEARING") == "answered"
    assert rules.outcome_of(False, "USER_BUSY") == "busy"
    assert rules.outcome_of(False, "NO_ANSWER") == "no-answer"
    assert rules.outcome_of(False, "NORMAL_TEMPORARY_FAILURE") == "failed"
    assert rules.transition("draft", "start") == "running"
    assert rules.transition("running", "pause") == "paused"
    assert rules.transition("paused", "resume") == "running"
    assert rules.transition("paused", "stop") == "stopped"
    for state, action in (("stopped", "resume"), ("completed", "start"), ("paused", "pause")):
        with pytest.raises(rules.TransitionError, match=f"cannot {action}"):
            rules.transition(state, action)
