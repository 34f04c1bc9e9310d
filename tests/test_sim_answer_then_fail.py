"""The simulator's carrier that answers with an SDP FreeSWITCH cannot use
(GatewayBehaviour.unusable_answer), against what FreeSWITCH 1.10.12 itself reported for
it (tests/fixtures/answer-then-fail/, from tests/realswitch/test_answer_then_fail.py):
the leg is never answered, ends INCOMPATIBLE_DESTINATION without a SIP status, its
hangup sent a BYE, and the bridge goes on to the next gateway."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_sim_dialplan import world  # noqa: F401 -- the fixture: simulator, dialplan server, ESL client
from test_sim_helpers import captured_dialplan_xml
from switchd.adapters.esl.events import to_typed
from switchd.adapters.esl.framing import parse_event_plain
from switchd.sim import GatewayBehaviour

FIX = Path(__file__).parent / "fixtures" / "answer-then-fail"
REFUSES = GatewayBehaviour(unusable_answer=True)
# What the real switch said of the leg, header by header (None: no such header).
SAME = ("Hangup-Cause", "Answer-State", "Caller-Channel-Answered-Time", "variable_answer_epoch",
        "variable_answer_uepoch", "variable_billsec", "variable_billmsec", "variable_billusec",
        "variable_hangup_cause", "variable_hangup_cause_q850", "variable_sip_term_status",
        "variable_proto_specific_hangup_cause", "variable_sip_invite_failure_status",
        "variable_sip_hangup_disposition", "variable_endpoint_disposition")


def _real() -> dict[str, str]:
    return parse_event_plain((FIX / "bad-sdp-b-leg.hangup-complete.txt").read_bytes())


def test_the_refused_answer_leg_reads_like_freeswitchs(world):
    sim, dp, client = world(captured_dialplan_xml(2), gateways={"carrier_a": REFUSES})
    call = sim.place_call("1002", caller="sipp", hold_seconds=1.0)
    assert call.wait(5) and call.result == "answered"
    assert client.wait_for(lambda evs: sum(e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"
                                           for e in evs) >= 3)
    assert call.causes == ["INCOMPATIBLE_DESTINATION", "NORMAL_CLEARING"]
    refused, answered = call.legs
    assert (refused.answered_us, answered.gateway) == (0, "carrier_b")
    events = [e for e in client.events if e.get("Unique-ID") == refused.uuid]
    complete = next(e for e in events if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE")
    real = _real()
    assert {h: complete.get(h) for h in SAME} == {h: real.get(h) for h in SAME}
    # sofia_on_hangup sends the BYE (and names it) after CHANNEL_HANGUP has gone out
    hangup = next(e for e in events if e["Event-Name"] == "CHANNEL_HANGUP")
    assert "variable_sip_hangup_disposition" not in hangup
    # switchd's edge reads the same facts from both
    sim_typed, real_typed = to_typed(complete), to_typed(real)
    for field in ("answered_us", "billsec", "billmsec", "sip_status", "hangup_cause",
                  "hangup_disposition"):
        assert getattr(sim_typed, field) == getattr(real_typed, field), field


def test_an_originate_to_a_carrier_that_refuses_fails_like_its_cause(world):
    sim, dp, client = world(None, gateways={"carrier_a": REFUSES})
    uuid = "8f74583b-42d4-4ee6-bbb0-548d0e499fae"
    body = client.bgapi(f"originate {{origination_uuid={uuid}}}sofia/gateway/carrier_a/2001 &park()")
    assert body.endswith(b"\n\n-ERR INCOMPATIBLE_DESTINATION\n")
    assert client.wait_for(lambda evs: any(e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"
                                           for e in evs))
    complete = next(e for e in client.events if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE")
    assert (complete["Unique-ID"], complete["variable_sip_hangup_disposition"],
            complete["Caller-Channel-Answered-Time"]) == (uuid, "send_bye", "0")


def test_unusable_answer_is_an_answer_not_a_failure():
    with pytest.raises(ValueError, match="unusable_answer"):
        GatewayBehaviour(unusable_answer=True, sip_status=503)


def test_the_switchs_cdr_of_the_refused_leg_has_the_same_facts():
    """The simulator posts each leg's CDR from its HANGUP_COMPLETE (switchd/sim/json_cdr.py):
    the real CDR of such a leg holds the same variables."""
    real = json.loads((FIX / "bad-sdp-b-leg.cdr.json").read_text())["variables"]
    event = _real()
    for name in ("billsec", "billmsec", "answer_uepoch", "hangup_cause",
                 "sip_hangup_disposition", "endpoint_disposition"):
        assert real[name] == event[f"variable_{name}"], name
    assert "sip_term_status" not in real and "variable_sip_term_status" not in event
