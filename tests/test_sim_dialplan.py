"""The simulator runs the dialplan as FreeSWITCH 1.10.12 does: a failed bridge, the caller's
outcome variables, continue_on_fail, a transfer as a new mod_xml_curl lookup, and sofia's
SIP-status → cause mapping (src/switch_channel.c switch_channel_handle_cause,
switch_ivr_originate.c, mod_sofia/sofia_glue.c sofia_glue_sip_cause_to_freeswitch)."""
from __future__ import annotations

from urllib.parse import parse_qsl

import pytest

from test_sim_helpers import DialplanServer, RawClient
from switchd.sim import GatewayBehaviour, Simulator

EVENTS = "CHANNEL_CREATE CHANNEL_ANSWER CHANNEL_BRIDGE CHANNEL_HANGUP CHANNEL_HANGUP_COMPLETE " \
         "BACKGROUND_JOB"


def doc(actions: str, context: str = "public", expression: str = "^.*$",
        field: str = "destination_number") -> str:
    return (f'<document type="freeswitch/xml"><section name="dialplan">'
            f'<context name="{context}"><extension name="x">'
            f'<condition field="{field}" expression="{expression}">{actions}'
            f'</condition></extension></context></section></document>')


def act(app: str, data: str) -> str:
    return f'<action application="{app}" data="{data}"/>'


NOT_FOUND = ('<document type="freeswitch/xml"><section name="result">'
             '<result status="not found"/></section></document>')


@pytest.fixture
def world():
    made = []

    def make(answer, **kw):
        dp = DialplanServer(answer)
        sim = Simulator(dialplan_url=dp.url, time_scale=kw.pop("time_scale", 1000),
                        heartbeat_interval=None, **kw)
        sim.start()
        client = RawClient(sim.address)
        client.login(events=EVENTS)
        made.append((dp, sim, client))
        return sim, dp, client
    yield make
    for dp, sim, client in made:
        client.close()
        sim.stop()
        dp.stop()


def form(body: bytes) -> dict[str, str]:
    return dict(parse_qsl(body.decode(), keep_blank_values=True))


def posted(dp) -> list[dict[str, str]]:
    return [form(body) for _, body in dp.requests]


def hangup_complete(client, uuid) -> dict[str, str]:
    assert client.wait_for(lambda evs: any(e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"
                                           and e["Unique-ID"] == uuid for e in evs))
    return next(e for e in client.events
                if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE" and e["Unique-ID"] == uuid)


# --- a transfer is a new lookup ----------------------------------------------------------------
def continuation(attempt_one: str, attempt_two: str):
    """First lookup: one bridge then a transfer back (the failover answer); the second
    lookup (recognised by switchd_attempt) bridges `attempt_two`."""
    def answer(body: bytes) -> str:
        f = form(body)
        if f.get("variable_switchd_attempt") == "1":
            return doc(act("set", "switchd_attempt=2")
                       + "".join(act("unset", v) for v in (
                           "last_bridge_proto_specific_hangup_cause", "sip_invite_failure_status",
                           "last_bridge_hangup_cause", "originate_disposition"))
                       + act("bridge", attempt_two) + act("transfer", "02079460123 XML public"),
                       expression="^02079460123$")
        return doc(act("set", "switchd_route_id=r1") + act("set", "switchd_attempt=1")
                   + act("set", "continue_on_fail=true") + act("set", "hangup_after_bridge=true")
                   + act("bridge", attempt_one) + act("transfer", "02079460123 XML public"),
                   expression="^02079460123$")
    return answer


def test_failed_bridge_then_transfer_is_a_new_lookup_with_the_outcome(world):
    sim, dp, client = world(continuation("sofia/gateway/gw_a/+442079460123",
                                         "sofia/gateway/gw_b/+442079460123"),
                            gateways={"gw_a": GatewayBehaviour(sip_status=403)})
    call = sim.place_call("02079460123", hold_seconds=2)
    assert call.wait(5) and call.result == "answered" and call.gateway == "gw_b"
    first, second = posted(dp)
    assert second["Unique-ID"] == first["Unique-ID"] == call.uuid
    assert second["Caller-Destination-Number"] == second["Hunt-Destination-Number"] == "02079460123"
    assert second["Hunt-Context"] == second["Caller-Context"] == "public"
    # What FreeSWITCH leaves on the caller after the carrier's 403:
    assert second["variable_last_bridge_proto_specific_hangup_cause"] == "sip:403"
    assert second["variable_last_bridge_hangup_cause"] == "CALL_REJECTED"
    assert second["variable_originate_disposition"] == "CALL_REJECTED"
    assert second["variable_originate_failed_cause"] == "CALL_REJECTED"
    assert second["variable_DIALSTATUS"] == "DONTCALL"
    assert second["variable_sip_invite_failure_status"] == "403"
    assert "variable_sip_term_status" not in second          # a B-leg variable
    assert second["variable_switchd_route_id"] == "r1" and second["variable_switchd_attempt"] == "1"
    assert second["variable_max_forwards"] == "69"
    assert second["variable_transfer_source"].endswith(f":{call.uuid}:bl_xfer:02079460123/public/XML")
    assert "variable_last_bridge_proto_specific_hangup_cause" not in first
    b1 = hangup_complete(client, call.legs[0].uuid)
    assert b1["Hangup-Cause"] == "CALL_REJECTED" and b1["variable_sip_term_status"] == "403"
    assert [c for c in call.causes] == ["CALL_REJECTED", "NORMAL_CLEARING"]
    assert [s for _, _, s in call.lookups] == ["xml_curl", "xml_curl"]


def test_unset_before_the_next_attempt_clears_the_stale_code(world):
    """Attempt 2 rings out (no SIP answer): with the unsets, the third lookup sees no code."""
    def answer(body):
        f = form(body)
        n = int(f.get("variable_switchd_attempt") or 0)
        if n == 2:
            return doc(act("respond", "480 Temporarily Unavailable"))
        gw = "gw_a" if n == 0 else "gw_b"
        return doc(act("set", f"switchd_attempt={n + 1}") + act("set", "continue_on_fail=true")
                   + "".join(act("unset", v) for v in (
                       "last_bridge_proto_specific_hangup_cause", "originate_disposition"))
                   + act("bridge", f"[leg_timeout=3]sofia/gateway/{gw}/1")
                   + act("transfer", "1 XML public"))
    sim, dp, client = world(answer, gateways={"gw_a": GatewayBehaviour(sip_status=403),
                                              "gw_b": GatewayBehaviour(answer_delay_s=10)})
    call = sim.place_call("1")
    assert call.wait(5) and call.result == "failed"
    third = posted(dp)[2]
    assert third["variable_originate_disposition"] == "ALLOTTED_TIMEOUT"
    assert "variable_last_bridge_proto_specific_hangup_cause" not in third
    assert third["variable_last_bridge_hangup_cause"] == "ALLOTTED_TIMEOUT"
    assert call.causes == ["CALL_REJECTED", "ALLOTTED_TIMEOUT"]
    a = hangup_complete(client, call.uuid)
    assert a["Hangup-Cause"] == "NO_USER_RESPONSE" and a["variable_sip_term_status"] == "480"


def test_transfer_to_an_extension_asks_again_in_that_context(world):
    def answer(body):
        f = form(body)
        if f["Hunt-Context"] == "default":
            return doc(act("bridge", "sofia/gateway/pbx/1001"), context="default",
                       expression="^1001$")
        return doc(act("set", "switchd_tenant=acme") + act("transfer", "1001 XML default"),
                   expression="^442079460000$")
    sim, dp, client = world(answer)
    call = sim.place_call("442079460000", hold_seconds=1)
    assert call.wait(5) and call.result == "answered" and call.gateway == "pbx"
    second = posted(dp)[1]
    assert second["Caller-Destination-Number"] == "1001" and second["Hunt-Context"] == "default"
    assert second["variable_switchd_tenant"] == "acme"
    # The SIP request itself is unchanged: only the caller profile moved.
    assert second["variable_sip_req_user"] == "442079460000"


def test_transfer_answered_not_found_without_a_static_context_is_no_route(world):
    sim, dp, client = world(lambda body: NOT_FOUND if form(body)["Hunt-Context"] == "default"
                            else doc(act("transfer", "1001 XML default")),
                            static_dialplan=[])        # no static extensions at all
    call = sim.place_call("442079460000")
    assert call.wait(5) and call.result == "refused"
    assert call.hangup_cause == "NO_ROUTE_DESTINATION" and call.lookups[-1][2] == "static_fallback"
    a = hangup_complete(client, call.uuid)
    assert a["Hangup-Cause"] == "NO_ROUTE_DESTINATION" and a["variable_sip_term_status"] == "404"
    assert call.legs == []


def test_transfer_in_public_answered_not_found_gets_the_static_503(world):
    sim, dp, client = world(lambda body: NOT_FOUND if form(body)["Caller-Destination-Number"] == "9"
                            else doc(act("transfer", "9 XML public")))
    call = sim.place_call("1")
    assert call.wait(5) and call.hangup_cause == "NORMAL_TEMPORARY_FAILURE"
    assert call.route_source == "static_fallback"


def test_transfer_loop_ends_exchange_routing_error(world):
    sim, dp, client = world(doc(act("transfer", "1 XML public")))
    call = sim.place_call("1")
    assert call.wait(10) and call.hangup_cause == "EXCHANGE_ROUTING_ERROR"
    assert len(dp.requests) == 70            # max_forwards 70: 69 transfers, then refused


# --- continue_on_fail (switch_channel_handle_cause) -------------------------------------------
@pytest.mark.parametrize("setting,sip,continues", [
    (None, 403, False),                      # unset: only NO_ANSWER/NO_USER_RESPONSE/CANCEL
    (None, 480, True),                       # NO_USER_RESPONSE always continues
    ("true", 486, True),
    ("false", 503, False),
    ("USER_BUSY,CALL_REJECTED", 486, True),
    ("user_busy", 486, True),                # case-insensitive
    ("17", 486, True),                       # USER_BUSY's number
    ("USER_BUSY", 503, False),               # NORMAL_TEMPORARY_FAILURE not listed
])
def test_continue_on_fail(world, setting, sip, continues):
    pre = act("set", f"continue_on_fail={setting}") if setting else ""
    sim, dp, client = world(doc(pre + act("bridge", "sofia/gateway/gw_a/1")
                                + act("hangup", "MANAGER_REQUEST")),
                            gateways={"gw_a": GatewayBehaviour(sip_status=sip)})
    call = sim.place_call("1")
    assert call.wait(5) and call.result == "failed"
    from switchd.sim.causes import sip_to_cause
    assert call.hangup_cause == ("MANAGER_REQUEST" if continues else sip_to_cause(sip))


# --- sofia's SIP → cause, on the leg and for the caller ------------------------------------
@pytest.mark.parametrize("sip,cause", [
    (401, "CALL_REJECTED"), (402, "CALL_REJECTED"), (403, "CALL_REJECTED"),
    (407, "CALL_REJECTED"), (603, "CALL_REJECTED"), (608, "CALL_REJECTED"),
    (480, "NO_USER_RESPONSE"), (486, "USER_BUSY"), (600, "USER_BUSY"),
    (404, "UNALLOCATED_NUMBER"), (484, "INVALID_NUMBER_FORMAT"),
    (408, "RECOVERY_ON_TIMER_EXPIRE"), (500, "NORMAL_TEMPORARY_FAILURE"),
    (503, "NORMAL_TEMPORARY_FAILURE"), (502, "NETWORK_OUT_OF_ORDER"),
    (488, "INCOMPATIBLE_DESTINATION"), (410, "NUMBER_CHANGED"), (604, "NO_ROUTE_DESTINATION"),
    (499, "NORMAL_UNSPECIFIED"),
])
def test_sip_status_maps_to_cause_as_sofia_does(world, sip, cause):
    sim, dp, client = world(doc(act("set", "continue_on_fail=true")
                                + act("bridge", "sofia/gateway/gw_a/1")
                                + act("hangup", "${originate_disposition}")),
                            gateways={"gw_a": GatewayBehaviour(sip_status=sip)})
    call = sim.place_call("1")
    assert call.wait(5)
    b = hangup_complete(client, call.legs[0].uuid)
    assert b["Hangup-Cause"] == cause and b["variable_sip_term_status"] == str(sip)
    a = hangup_complete(client, call.uuid)
    assert a["Hangup-Cause"] == cause
    # sofia answers the caller with the other leg's SIP code (last_bridge_proto_specific).
    assert a["variable_sip_term_status"] == str(sip)


def test_behaviour_refuses_a_cause_sofia_would_not_give_for_the_code():
    with pytest.raises(ValueError, match="CALL_REJECTED"):
        GatewayBehaviour(fail_cause="USER_BUSY", sip_status=403)
    with pytest.raises(ValueError, match="unknown FreeSWITCH cause"):
        GatewayBehaviour(fail_cause="BUSY")


def test_a_cause_without_a_sip_answer_leaves_no_code(world):
    sim, dp, client = world(doc(act("set", "continue_on_fail=true")
                                + act("bridge", "sofia/gateway/gw_a/1")
                                + act("hangup", "${originate_disposition}")),
                            gateways={"gw_a": GatewayBehaviour(fail_cause="GATEWAY_DOWN")})
    call = sim.place_call("1")
    assert call.wait(5) and call.hangup_cause == "GATEWAY_DOWN"
    b = hangup_complete(client, call.legs[0].uuid)
    assert "variable_sip_term_status" not in b
    a = hangup_complete(client, call.uuid)
    assert a["variable_sip_term_status"] == "503"            # hangup_cause_to_sip(GATEWAY_DOWN)
