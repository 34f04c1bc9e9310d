"""Where the simulator used to be lenient and FreeSWITCH 1.10.12 is not: conditions and
context, unknown causes, sched_hangup times, fail_on_single_reject, UUIDs of `|` legs,
the sessions-per-second throttle."""
from __future__ import annotations

import pytest

from test_sim_dialplan import act, doc, posted, world  # noqa: F401, F811 (world is a fixture)
from switchd.sim import GatewayBehaviour, Simulator, causes


# --- conditions and context (mod_dialplan_xml) -------------------------------------------------
def test_an_answer_for_another_number_is_not_played(world):
    sim, dp, client = world(doc(act("bridge", "sofia/gateway/gw_a/1"), expression="^999$"))
    call = sim.place_call("1234")
    assert call.wait(5) and call.result == "refused" and call.legs == []
    assert call.hangup_cause == "NO_ROUTE_DESTINATION"


def test_an_answer_for_another_context_is_not_played(world):
    sim, dp, client = world(doc(act("bridge", "sofia/gateway/gw_a/1"), context="default"))
    call = sim.place_call("1234")
    assert call.wait(5) and call.hangup_cause == "NO_ROUTE_DESTINATION" and call.legs == []


def test_a_global_context_is_used_when_the_call_context_is_missing(world):
    sim, dp, client = world(doc(act("bridge", "sofia/gateway/gw_a/1"), context="global"))
    call = sim.place_call("1234", hold_seconds=1)
    assert call.wait(5) and call.result == "answered"


def test_captures_fill_dollar_n_and_variable_fields_are_expanded(world):
    sim, dp, client = world(
        '<document type="freeswitch/xml"><section name="dialplan"><context name="public">'
        '<extension name="no"><condition field="${accountcode}" expression="^globex$">'
        + act("hangup", "CALL_REJECTED") + '</condition></extension>'
        '<extension name="yes"><condition field="${accountcode}" expression="^acme$"/>'
        '<condition field="destination_number" expression="^00(\\d+)$">'
        + act("bridge", "sofia/gateway/gw_a/+$1") + '</condition></extension>'
        '</context></section></document>')
    call = sim.place_call("00442079460000", accountcode="acme", hold_seconds=1)
    assert call.wait(5) and call.result == "answered"
    assert call.legs[0].number == "+442079460000"


def test_an_unknown_application_ends_the_call_destination_out_of_order(world):
    sim, dp, client = world(doc(act("set", "a=b") + act("brigde", "sofia/gateway/gw_a/1")))
    call = sim.place_call("1")
    assert call.wait(5) and call.hangup_cause == "DESTINATION_OUT_OF_ORDER"


# --- causes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text,cause", [
    ("USER_BUSY", "USER_BUSY"), ("user_busy", "USER_BUSY"), ("17", "USER_BUSY"),
    ("ALLOTED_TIMEOUT", "NORMAL_CLEARING"), ("", "NORMAL_CLEARING"), ("BOGUS", "NORMAL_CLEARING"),
])
def test_str2cause(text, cause):
    assert causes.str2cause(text) == cause


def test_hangup_with_an_unknown_cause_is_normal_clearing(world):
    sim, dp, client = world(doc(act("hangup", "ALLOTED_TIMEOUT")))
    call = sim.place_call("1")
    assert call.wait(5) and call.hangup_cause == "NORMAL_CLEARING"


def test_uuid_kill_and_sched_hangup_with_unknown_causes(world):
    sim, dp, client = world(doc(act("bridge", "sofia/gateway/gw_a/1")), time_scale=20)
    kill = sim.place_call("1", hold_seconds=600)
    sched = sim.place_call("2", hold_seconds=600)
    assert client.wait_for(lambda evs: sum(e["Event-Name"] == "CHANNEL_BRIDGE" for e in evs) == 2)
    assert client.command(f"api uuid_kill {kill.uuid} NOT_A_CAUSE")[1] == b"+OK\n"
    assert client.command(f"api sched_hangup +1 {sched.uuid} ALLOTED_TIMEOUT")[1] == b"+OK\n"
    assert kill.wait(5) and sched.wait(5)
    assert kill.hangup_cause == sched.hangup_cause == "NORMAL_CLEARING"


# --- sched_hangup times (mod_commands/mod_dptools + switch_scheduler) -------------------------
@pytest.mark.parametrize("arg,now_s,fires_s", [
    ("+5", 1000.4, 1005),        # the current whole second + 5
    ("+0", 1000.4, 1000.4),      # at once
    ("30", 1000.4, 1000.4),      # atol("0") == 0: at once
    ("5", 1000.4, 1000.4),       # atol("") == 0: at once
    ("2001", 1000.4, 2001),      # a future epoch
    ("2000", 1000.4, 1000.4),    # ... but atol("000") == 0: at once
    ("45", 1000.4, 1045),        # a past epoch: the scheduler adds now
    ("-5", 1000.4, 1000.4),      # in the past: runs at once
])
def test_sched_when(arg, now_s, fires_s):
    now_us = int(now_s * 1_000_000)
    assert causes.sched_when_us(arg, now_us) == int(fires_s * 1_000_000)


def test_a_bare_sched_hangup_30_hangs_up_at_once(world):
    sim, dp, client = world(doc(act("set", "execute_on_answer=sched_hangup 30 ALLOTTED_TIMEOUT")
                                + act("bridge", "sofia/gateway/gw_a/1")))
    call = sim.place_call("1", hold_seconds=600)
    assert call.wait(5) and call.hangup_cause == "ALLOTTED_TIMEOUT" and call.billmsec == 0


def test_api_sched_hangup_bare_30_is_at_once(world):
    sim, dp, client = world(doc(act("bridge", "sofia/gateway/gw_a/1")), time_scale=20)
    call = sim.place_call("1", hold_seconds=600)
    assert client.wait_for(lambda evs: any(e["Event-Name"] == "CHANNEL_BRIDGE" for e in evs))
    assert client.command(f"api sched_hangup 30 {call.uuid}")[1] == b"+OK\n"
    assert call.wait(5) and call.hangup_cause == "ALLOTTED_TIMEOUT"
    assert call.billmsec < 30_000


# --- fail_on_single_reject (switch_ivr_originate.c) ------------------------------------------
@pytest.mark.parametrize("setting,tried", [
    ("USER_BUSY,CALL_REJECTED", 1),          # the cause name is in the list: stop
    ("NORMAL_TEMPORARY_FAILURE", 2),         # not listed: next leg
    ("486,603", 2),                          # SIP codes never match a cause name
    ("!NORMAL_TEMPORARY_FAILURE", 1),        # negated
    ("busy", 2),                             # the cause name must be IN the setting
])
def test_fail_on_single_reject(world, setting, tried):
    sim, dp, client = world(doc(act("set", f"fail_on_single_reject={setting}")
                                + act("bridge", "sofia/gateway/gw_a/1|sofia/gateway/gw_b/1")),
                            gateways={"gw_a": GatewayBehaviour(sip_status=486)})
    call = sim.place_call("1", hold_seconds=1)
    assert call.wait(5) and len(call.legs) == tried


def test_leg_timeout_rings_out_allotted_timeout_and_moves_on(world):
    sim, dp, client = world(doc(act("set", "continue_on_fail=true")
                                + act("bridge", "[leg_timeout=5]sofia/gateway/gw_a/1|"
                                                "[leg_timeout=5]sofia/gateway/gw_b/1")),
                            gateways={"gw_a": GatewayBehaviour(answer_delay_s=30)})
    call = sim.place_call("1", hold_seconds=1)
    assert call.wait(5) and call.causes == ["ALLOTTED_TIMEOUT", "NORMAL_CLEARING"]
    assert call.gateway == "gw_b"
    b1 = call.legs[0]
    assert b1.hangup_us - b1.created_us == 5_000_000


# --- UUIDs of originate legs ------------------------------------------------------------------
FAIL_503 = GatewayBehaviour(sip_status=503)


def _job(client, line):
    return client.bgapi(line).rsplit(b"\n\n", 1)[-1].decode()


def test_origination_uuid_in_braces_makes_the_second_leg_a_duplicate(world):
    sim, dp, client = world(None, gateways={"gw_a": FAIL_503})
    uuid = "11111111-2222-4333-8444-555555555555"
    body = _job(client, f"originate {{origination_uuid={uuid}}}sofia/gateway/gw_a/1|"
                        f"sofia/gateway/gw_b/1 &park()")
    assert body == "-ERR DESTINATION_OUT_OF_ORDER\n"
    created = [e for e in client.events if e["Event-Name"] == "CHANNEL_CREATE"]
    assert [e["Unique-ID"] for e in created] == [uuid]          # gw_b never got a channel


def test_origination_uuid_per_leg_fails_over(world):
    sim, dp, client = world(None, gateways={"gw_a": FAIL_503})
    u1, u2 = "11111111-2222-4333-8444-555555555555", "66666666-7777-4888-8999-000000000000"
    body = _job(client, f"originate [origination_uuid={u1}]sofia/gateway/gw_a/1|"
                        f"[origination_uuid={u2}]sofia/gateway/gw_b/1 &park()")
    assert body == f"+OK {u2}\n"
    created = [e["Unique-ID"] for e in client.events if e["Event-Name"] == "CHANNEL_CREATE"]
    assert created == [u1, u2]
    assert client.command(f"api uuid_kill {u2}")[1] == b"+OK\n"


def test_originate_with_a_live_uuid_fails_destination_out_of_order(world):
    sim, dp, client = world(None)
    uuid = "11111111-2222-4333-8444-555555555555"
    assert _job(client, f"originate {{origination_uuid={uuid}}}sofia/gateway/gw_a/1 &park()") \
        == f"+OK {uuid}\n"
    assert _job(client, f"originate {{origination_uuid={uuid}}}sofia/gateway/gw_a/2 &park()") \
        == "-ERR DESTINATION_OUT_OF_ORDER\n"
    client.command(f"api uuid_kill {uuid}")


# --- sessions per second (switch_core_session_request_uuid) ----------------------------------
def test_sessions_per_second_refuses_beyond_the_limit():
    # FreeSWITCH decrements before it checks (`--sps <= 0`): a limit of 3 admits 2 a second.
    sim = Simulator(sessions_per_second=3, start_us=1_000_000_000_000_000, time_scale=1)
    assert [sim.take_session(1_000_000_000_000_000 + i) for i in range(4)] == \
        [True, True, False, False]
    assert sim.take_session(1_000_000_001_000_000)             # the next second refills
    assert Simulator(sessions_per_second=None).take_session(0)


def test_throttled_calls_and_legs(world):
    sim, dp, client = world(doc(act("set", "continue_on_fail=true")
                                + act("bridge", "sofia/gateway/gw_a/1")
                                + act("hangup", "${originate_disposition}")),
                            # a whole second, barely moving: everything below is in it
                            start_us=1_700_000_000_000_000, time_scale=0.001,
                            sessions_per_second=3)
    first = sim.place_call("1", hold_seconds=0.001)     # A-leg: 1 of 2
    second = sim.place_call("2", hold_seconds=0.001)    # A-leg: 2 of 2
    assert client.wait_for(lambda evs: sum(e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"
                                           for e in evs) == 2)
    # Neither bridge leg could be created within the same second: "Throttle Error!".
    assert first.wait(5) and second.wait(5)
    assert first.hangup_cause == second.hangup_cause == "DESTINATION_OUT_OF_ORDER"
    assert first.legs == second.legs == []
    assert sim.throttled == 2


# --- caller IDs sofia cannot encode (issue 8, seen on FreeSWITCH 1.10.12) ----------------------
@pytest.mark.parametrize("name,number,cause,code", [
    ('Bad "q" <x>', "1000", "DESTINATION_OUT_OF_ORDER", None),
    ("Alice", "12${uuid}34", "NORMAL_UNSPECIFIED", "900"),
    ("x${uuid}", "1000", "NORMAL_UNSPECIFIED", "900"),
])
def test_a_from_sofia_cannot_build_fails_every_leg_before_sending(world, name, number, cause, code):
    sim, dp, client = world(doc(act("set", "continue_on_fail=true")
                                + act("bridge", "sofia/gateway/gw_a/1|sofia/gateway/gw_b/1")
                                + act("transfer", "9 XML public"), expression="^1$"))
    call = sim.place_call("1", caller=number, caller_name=name)
    assert call.wait(5)
    assert call.causes == [cause, cause]
    after = posted(dp)[1]
    assert after["variable_originate_disposition"] == cause
    assert after.get("variable_last_bridge_proto_specific_hangup_cause") == (
        f"sip:{code}" if code else None)


def test_a_sanitised_effective_caller_id_is_sent(world):
    sim, dp, client = world(doc(act("set", "effective_caller_id_name=Bad q x")
                                + act("bridge", "sofia/gateway/gw_a/1")))
    call = sim.place_call("1", caller_name='Bad "q" <x>', hold_seconds=1)
    assert call.wait(5) and call.result == "answered"


def test_destination_number_expands_to_the_transferred_number(world):
    def answer(body):
        from test_sim_dialplan import form
        if form(body)["Caller-Destination-Number"] == "2001":
            return doc(act("bridge", "sofia/gateway/gw_a/${destination_number}"))
        return doc(act("transfer", "2001"))
    sim, dp, client = world(answer)
    call = sim.place_call("1", hold_seconds=1)
    assert call.wait(5) and call.legs[0].number == "2001"


def test_originate_with_a_caller_id_sofia_cannot_encode(world):
    sim, dp, client = world(None)
    body = _job(client, "originate {origination_caller_id_name='Eve <x>'}sofia/gateway/gw_a/1|"
                        "sofia/gateway/gw_b/1 &park()")
    assert body == "-ERR DESTINATION_OUT_OF_ORDER\n"
    # Unlike a duplicate UUID, both legs existed and failed before sending.
    assert client.wait_for(lambda evs: sum(e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"
                                           for e in evs) == 2)


# --- hangup_after_bridge (mod_dptools bridge) ---------------------------------------------------
@pytest.mark.parametrize("after_bridge,lookups", [("true", 1), (None, 2)])
def test_callee_hangup_continues_the_dialplan_unless_hangup_after_bridge(world, after_bridge,
                                                                          lookups):
    pre = act("set", f"hangup_after_bridge={after_bridge}") if after_bridge else ""

    def answer(body):
        from test_sim_dialplan import form
        if form(body)["Caller-Destination-Number"] == "9":
            return doc(act("hangup", "USER_BUSY"))
        return doc(pre + act("bridge", "sofia/gateway/gw_a/1") + act("transfer", "9"),
                   expression="^1$")
    sim, dp, client = world(answer, time_scale=20)
    call = sim.place_call("1", hold_seconds=600)
    assert client.wait_for(lambda evs: any(e["Event-Name"] == "CHANNEL_BRIDGE" for e in evs))
    assert client.command(f"api uuid_kill {call.legs[0].uuid}")[1] == b"+OK\n"
    assert call.wait(5) and call.result == "answered"
    assert len(dp.requests) == lookups
    assert call.hangup_cause == ("NORMAL_CLEARING" if after_bridge else "USER_BUSY")


def test_sleep_waits_its_milliseconds_before_the_next_application(world):
    # real time: at a faster scale the lookup's own round trip is simulated seconds
    sim, dp, client = world(doc(act("sleep", "1000") + act("bridge", "sofia/gateway/gw_a/1")),
                            time_scale=1)
    call = sim.place_call("1", hold_seconds=0.01)
    assert call.wait(10) and call.result == "answered"
    assert call.legs[0].created_us - call.a_leg.created_us >= 1_000_000


def test_a_caller_killed_while_sleeping_is_hung_up_and_never_bridged(world):
    sim, dp, client = world(doc(act("sleep", "600000") + act("bridge", "sofia/gateway/gw_a/1")))
    call = sim.place_call("1", hold_seconds=1)
    assert client.wait_for(lambda evs: any(e["Event-Name"] == "CHANNEL_CREATE" for e in evs))
    assert sim.kill_call(call.uuid, "MANAGER_REQUEST")
    assert call.wait(5)
    assert call.a_leg.cause == "MANAGER_REQUEST" and call.legs == []
