"""Resync: `show channels as json` replies from esl-api.txt against the registry."""
from __future__ import annotations

from dataclasses import replace

import pytest

from _fixture_events import api_reply, channel_events
from switchd.calls.model import CAUSE_RESYNC, CallAdopted, CallEnded, CallStarted, LegEnded
from switchd.calls.registry import CallRegistry
from switchd.calls.channels import (
    ResyncParseError, group_rows, parse_show_calls_json, parse_show_channels_json,
)

A_C = "c9e6b4b9-ffef-468f-adb1-3c5159f480c2"
B_C = "61211ccc-7080-45b0-98d4-97e224221319"
D = "8f74583b-42d4-4ee6-bbb0-548d0e499fae"
NOW = 1795409500_000000

EMPTY = api_reply("show channels as json", 0)
TWO = api_reply("show channels as json", 1)          # during scenario c
ONE = api_reply("show channels as json", 2)          # during scenario d
CALLS_C = api_reply("show calls as json", 1)


def run(events, reg):
    out = []
    for ev in events:
        out += reg.apply(ev)
    return out


def of(effects, kind):
    return [e for e in effects if isinstance(e, kind)]


def test_parse_captured_replies():
    assert parse_show_channels_json(EMPTY) == []
    a, b = parse_show_channels_json(TWO)
    assert (a.uuid, a.direction, a.callstate, a.call_uuid, a.dest) == \
        (A_C, "inbound", "ACTIVE", A_C, "1003")
    assert (b.uuid, b.direction, b.call_uuid, b.name) == (B_C, "outbound", A_C, "sofia/local/1003")
    assert a.created_us == 1795409456_000000
    [d] = parse_show_channels_json(ONE)
    assert d.uuid == D and d.call_uuid == D and d.callstate == "ACTIVE"


def test_parse_show_calls_relates_legs():
    assert parse_show_calls_json(CALLS_C) == {A_C: A_C, B_C: A_C}
    assert parse_show_calls_json(api_reply("show calls as json", 0)) == {}


@pytest.mark.parametrize("text", ["", "not json", "[]", '{"rows": []}',
                                  '{"row_count": 1, "rows": [{"direction": "inbound"}]}',
                                  '{"row_count": 1, "rows": [{"uuid": "x", "created_epoch": "y"}]}'])
def test_parse_rejects_garbage(text):
    with pytest.raises(ResyncParseError):
        parse_show_channels_json(text)


def test_grouping_falls_back_to_show_calls_then_to_the_row_itself():
    rows = [replace(r, call_uuid=None) for r in parse_show_channels_json(TWO)]
    assert list(group_rows(rows, {})) == [A_C, B_C]
    groups = group_rows(list(reversed(rows)), parse_show_calls_json(CALLS_C))
    assert [r.uuid for r in groups[A_C]] == [A_C, B_C]       # A-leg first


def test_adopt_capture_c_rows_into_an_empty_registry_then_follow_events():
    reg = CallRegistry()
    eff = reg.resync(parse_show_channels_json(TWO), NOW, tenant_of=lambda row: "t-adopted")
    [adopted] = eff
    assert isinstance(adopted, CallAdopted)
    call = adopted.call
    assert call.call_uuid == A_C and call.reconstructed and call.state == "answered"
    assert [(l.uuid, l.state) for l in call.legs] == [(A_C, "bridged"), (B_C, "bridged")]
    assert call.tenant == "t-adopted" and call.answered_us == 1795409456_000000
    assert len(reg) == 1
    assert reg.resync(parse_show_channels_json(TWO), NOW) == []      # idempotent
    # the rest of the call arrives as events: no second start, one end, real data
    events = channel_events("c")
    hangup = next(i for i, e in enumerate(events) if e.name == "CHANNEL_HANGUP")
    eff = run(events[hangup:], reg)
    assert not of(eff, CallStarted) and len(of(eff, LegEnded)) == 2
    [ended] = of(eff, CallEnded)
    assert ended.call.hangup_cause == "ALLOTTED_TIMEOUT" and ended.call.carrier == "carrier_a"
    assert ended.call.answered_us == 1795409456064608        # FreeSWITCH's, not the estimate
    assert ended.call.tenant == "t-adopted" and len(reg) == 0


def test_call_the_switch_no_longer_has_is_closed_reconstructed():
    reg = CallRegistry()
    events = channel_events("a")
    bridge = next(i for i, e in enumerate(events) if e.name == "CHANNEL_BRIDGE")
    run(events[:bridge + 1], reg)
    eff = reg.resync(parse_show_channels_json(EMPTY), NOW)
    assert [type(e) for e in eff] == [LegEnded, LegEnded, CallEnded]
    assert all(e.leg.reconstructed and e.leg.hangup_cause == CAUSE_RESYNC
               and e.leg.hangup_us == NOW and e.leg.billmsec is None for e in eff[:2])
    call = eff[2].call
    assert call.reconstructed and call.hangup_cause == CAUSE_RESYNC and call.ended_us == NOW
    assert call.answered_us > 0 and len(reg) == 0
    # what FreeSWITCH says later about it changes nothing
    assert not of(run(events[bridge + 1:], reg), CallEnded)


def test_gone_a_leg_closes_it_and_the_call_waits_for_the_b_leg():
    reg = CallRegistry()
    events = channel_events("c")
    bridge = next(i for i, e in enumerate(events) if e.name == "CHANNEL_BRIDGE")
    run(events[:bridge + 1], reg)
    only_b = [r for r in parse_show_channels_json(TWO) if r.uuid == B_C]
    eff = reg.resync(only_b, NOW)
    assert [type(e) for e in eff] == [LegEnded] and eff[0].leg.uuid == A_C
    assert reg.get(A_C).state == "ending"
    b_done = next(e for e in events if e.uuid == B_C and e.name == "CHANNEL_HANGUP_COMPLETE")
    assert of(reg.apply(b_done), CallEnded)


def test_adopted_b_leg_whose_a_leg_is_gone_ends_with_it():
    reg = CallRegistry()
    only_b = [r for r in parse_show_channels_json(TWO) if r.uuid == B_C]
    [adopted] = reg.resync(only_b, NOW)
    assert adopted.call.call_uuid == A_C and adopted.call.a_leg.placeholder
    b_done = next(e for e in channel_events("c")
                  if e.uuid == B_C and e.name == "CHANNEL_HANGUP_COMPLETE")
    eff = reg.apply(b_done)
    assert [type(e) for e in eff][-1] is CallEnded
    assert len(of(eff, LegEnded)) == 1           # nothing invented for the unseen A-leg


def test_adopted_originated_leg():
    reg = CallRegistry()
    [adopted] = reg.resync(parse_show_channels_json(ONE), NOW)
    assert adopted.call.call_uuid == D and adopted.call.direction == "outbound"
    assert adopted.call.tenant is None and adopted.call.legs[0].state == "answered"


def test_rows_of_a_call_already_ended_are_not_readopted():
    reg = CallRegistry()
    run(channel_events("d"), reg)
    assert reg.resync(parse_show_channels_json(ONE), NOW) == []
    assert len(reg) == 0 and reg.counters["resync_stale_rows"] == 1


def _b_leg_outlives_its_a_leg(max_duration: str | None = None):
    """Capture c up to the A-leg's end, the B-leg's own end never coming: what an attended
    transfer leaves (the carrier leg bridged elsewhere, talking on)."""
    events = [e for e in channel_events("c") if not (e.uuid == B_C and e.name in (
        "CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE", "CHANNEL_DESTROY", "CHANNEL_UNBRIDGE"))]
    if max_duration:
        events = [replace(e, vars={**e.vars, "switchd_max_duration": max_duration})
                  if e.uuid == A_C else e for e in events]
    reg = CallRegistry()
    run(events, reg)
    call = reg.get(A_C)
    assert call.state == "ending" and call.leg(B_C).state != "complete"
    return reg, call


@pytest.mark.parametrize("listed_after_s, swept", [(None, True), (2, True), (6, False)])
def test_the_sweep_spares_legs_the_switch_listed_after_their_a_leg_ended(listed_after_s,
                                                                         swept):
    """A leg `show channels` listed after its A-leg ended (and past the listing's lag) is
    up: the sweep leaves it to its events. Never listed, or listed too soon after the
    A-leg's end to be sure, it is force-ended as before."""
    reg, call = _b_leg_outlives_its_a_leg()
    a_end = call.a_leg.hangup_us
    if listed_after_s is not None:
        b_row = next(r for r in parse_show_channels_json(TWO) if r.uuid == B_C)
        requested = a_end + listed_after_s * 1_000_000
        assert reg.resync([b_row], requested + 100_000, requested_us=requested) == []
    effects = reg.sweep(a_end + 3600 * 1_000_000, grace_us=60 * 1_000_000)
    assert bool(of(effects, CallEnded)) is swept
    assert (reg.get(A_C) is None) is swept


def test_the_watchdog_sees_an_answered_leg_that_outlived_its_a_leg():
    """The A-leg's `sched_hangup` went with it: past the limit, the call is the
    watchdog's while an answered leg of it is up."""
    reg, call = _b_leg_outlives_its_a_leg(max_duration="5")
    answered = call.answered_us
    assert reg.answered_calls_over_limit(answered + 6_000_000, grace_s=2) == []
    [late] = reg.answered_calls_over_limit(answered + 7_000_001, grace_s=2)
    assert late.call_uuid == A_C and late.a_leg.state == "complete"
