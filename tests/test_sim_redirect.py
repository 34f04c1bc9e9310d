"""The simulator's carrier that answers 302 (GatewayBehaviour.redirect_to), against what
FreeSWITCH 1.10.12 itself did (tests/fixtures/redirect/, tests/realswitch/test_redirect.py):
with `outbound_redirect_fatal=true` the leg ends REQUESTED_CHAN_UNAVAIL with the 302 only
in its proto-specific cause and the bridge goes on; without it, the redirect is followed
and the leg is answered. And end to end: switchd's dial strings never let it be followed."""
from __future__ import annotations

import pytest

from daemon_harness import failover_steps, metric, rows
from test_sim_dialplan import world  # noqa: F401 -- the fixture: simulator, dialplan server, ESL client
from test_sim_helpers import bridge_xml
from switchd.adapters.esl.events import to_typed
from switchd.adapters.esl.framing import parse_event_plain
from test_redirect_leg import FIX
from switchd.sim import GatewayBehaviour

CONTACT = "sip:19005550100@127.0.0.2:5060"
REDIRECTS = GatewayBehaviour(redirect_to=CONTACT)
SAME = ("Hangup-Cause", "Answer-State", "Caller-Channel-Answered-Time", "variable_billsec",
        "variable_billmsec", "variable_hangup_cause", "variable_hangup_cause_q850",
        "variable_sip_term_status", "variable_proto_specific_hangup_cause",
        "variable_sip_invite_failure_status", "variable_sip_hangup_disposition",
        "variable_sip_invite_failure_phrase", "variable_sip_redirect_contact_user_0")
FATAL = "[outbound_redirect_fatal=true]"


def _complete(client, uuid):
    assert client.wait_for(lambda evs: any(e.get("Unique-ID") == uuid and
                                           e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"
                                           for e in evs))
    return next(e for e in client.events if e.get("Unique-ID") == uuid
                and e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE")


def test_a_refused_redirect_reads_like_freeswitchs_and_the_bridge_goes_on(world):
    dial = f"{FATAL}sofia/gateway/carrier_a/1|{FATAL}sofia/gateway/carrier_b/1"
    sim, dp, client = world(bridge_xml(dial), gateways={"carrier_a": REDIRECTS})
    call = sim.place_call("1002", caller="sipp", hold_seconds=1.0)
    assert call.wait(5) and call.result == "answered"
    redirected, answered = call.legs
    assert (redirected.answered_us, answered.gateway) == (0, "carrier_b")
    complete = _complete(client, redirected.uuid)
    real = parse_event_plain((FIX / "redirect-b-leg.hangup-complete.txt").read_bytes())
    assert {h: complete.get(h) for h in SAME} == {h: real.get(h) for h in SAME}
    sim_typed, real_typed = to_typed(complete), to_typed(real)
    for field in ("answered_us", "billsec", "sip_status", "hangup_cause", "hangup_disposition"):
        assert getattr(sim_typed, field) == getattr(real_typed, field), field


def test_without_the_variable_the_redirect_is_followed_and_answered(world):
    sim, dp, client = world(bridge_xml("sofia/gateway/carrier_a/1|sofia/gateway/carrier_b/1"),
                            gateways={"carrier_a": REDIRECTS})
    call = sim.place_call("1002", caller="sipp", hold_seconds=1.0)
    assert call.wait(5) and call.result == "answered"
    (followed,) = call.legs
    assert followed.gateway == "carrier_a" and followed.answered_us
    assert _complete(client, followed.uuid)["variable_sip_redirected_to"] == f"<{CONTACT}>"


def test_an_originate_refusing_the_redirect_fails_with_its_cause(world):
    sim, dp, client = world(None, gateways={"carrier_a": REDIRECTS})
    uuid = "0b6f7f1e-6d0c-4f43-9a43-0d1c35e2a001"
    body = client.bgapi(f"originate {{origination_uuid={uuid}}}{FATAL}sofia/gateway/carrier_a/2001 &park()")
    assert body.endswith(b"\n\n-ERR REQUESTED_CHAN_UNAVAIL\n")
    complete = _complete(client, uuid)
    assert (complete["variable_proto_specific_hangup_cause"],
            complete.get("variable_sip_term_status")) == ("sip:302", None)
    assert to_typed(complete).sip_status == 302


def test_a_redirect_is_the_carriers_answer_alone():
    with pytest.raises(ValueError, match="redirect_to"):
        GatewayBehaviour(redirect_to=CONTACT, sip_status=503)
    with pytest.raises(ValueError, match="redirect_to instead"):
        GatewayBehaviour(sip_status=302)


@pytest.mark.slow
def test_switchd_never_lets_a_redirect_carry_the_call(world_url, start_switch):
    sim, daemon = start_switch(world_url)
    sim.set_gateway("budgetel_gw1", REDIRECTS)
    call = sim.place_call("02079460555", accountcode="acme", hold_seconds=5)
    assert call.wait(30) and call.result == "answered", (call.result, call.causes)
    assert [leg.gateway for leg in call.legs] == ["budgetel_gw1", "globex_gw1"]
    redirected, carried = call.legs
    daemon.wait_until(lambda: rows(world_url, "SELECT 1 FROM calls WHERE call_uuid = %s AND "
                                              "ended_at IS NOT NULL", call.uuid), what="the CDR")
    legs = {r[0]: r[1:] for r in rows(
        world_url, "SELECT leg_uuid, carrier, sip_status, cost, disposition FROM call_legs "
                   "WHERE call_uuid = %s", call.uuid)}
    assert legs[redirected.uuid] == ("budgetel", 302, 0, "carrier_failure")
    assert legs[carried.uuid][0] == "globex" and legs[carried.uuid][3] == "answered"
    step = failover_steps(daemon, world_url, call.uuid)
    assert step == [("failover: attempt 1 via budgetel/budgetel_gw1: REQUESTED_CHAN_UNAVAIL "
                     "sip 302 -> 3xx: next",)]
    assert metric(daemon, "switchd_failovers_total", carrier="budgetel") == 1
