"""Calls played by the simulator, compared with the captured scenarios a–f."""
from __future__ import annotations

import gevent.event
import pytest
from gevent.pywsgi import WSGIServer

from test_sim_helpers import (DialplanServer, RawClient, bridge_xml, capture_events,
                         captured_dialplan_fields, captured_dialplan_xml, event_pairs)
from switchd.sim import CdrSink, GatewayBehaviour, Simulator

SUBSCRIBED = {"CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_BRIDGE", "CHANNEL_HANGUP",
              "CHANNEL_HANGUP_COMPLETE"}
EVENTS = "CHANNEL_CREATE CHANNEL_ANSWER CHANNEL_BRIDGE CHANNEL_HANGUP CHANNEL_HANGUP_COMPLETE " \
         "BACKGROUND_JOB HEARTBEAT CUSTOM sofia::gateway_state"
FAIL_503 = GatewayBehaviour(fail_cause="NORMAL_TEMPORARY_FAILURE", sip_status=503)
# Every wait below ends on an event or a condition; GUARD only bounds how long a test that
# is really broken hangs before it fails, so a loaded machine never makes one fail.
GUARD = 60.0


@pytest.fixture
def world():
    servers, sims, clients = [], [], []

    def make(xml, events=EVENTS, **kw):
        dp = DialplanServer(xml)
        servers.append(dp)
        sim = Simulator(dialplan_url=dp.url, time_scale=kw.pop("time_scale", 1000),
                        heartbeat_interval=kw.pop("heartbeat_interval", None), **kw)
        sim.start()
        sims.append(sim)
        client = RawClient(sim.address)
        client.login(events=events)
        clients.append(client)
        return sim, dp, client
    yield make
    for c in clients:
        c.close()
    for s in sims:
        s.stop()
    for d in servers:
        d.stop()


def _roles(events, a_uuid):
    """Event names with leg roles ('A', 'B1', 'B2', ...) in arrival order."""
    roles, out = {a_uuid: "A"}, []
    for e in events:
        uid = e.get("Unique-ID", "")
        if e["Event-Name"] not in SUBSCRIBED:
            continue
        roles.setdefault(uid, f"B{len(roles)}")
        out.append((e["Event-Name"], roles[uid], e.get("Hangup-Cause")))
    return out


def _captured_roles(letter):
    evs = capture_events(letter)
    return _roles(evs, evs[0]["Unique-ID"])


def _done(client, n_complete):
    return client.wait_for(lambda evs: sum(e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"
                                           for e in evs) >= n_complete, GUARD)


def test_call_with_captured_dialplan_posts_captured_fields_and_plays_scenario_a(world):
    sim, dp, client = world(captured_dialplan_xml(1))
    call = sim.place_call("1001", caller="sipp", hold_seconds=1.0)
    assert call.wait(GUARD) and _done(client, 2)
    env, body = dp.requests[0]
    assert env["HTTP_USER_AGENT"] == "freeswitch-xml/1.0"
    assert env["CONTENT_TYPE"] == "application/x-www-form-urlencoded"
    assert env["PATH_INFO"] == "/fs/dialplan"
    fields = [p.split(b"=", 1)[0].decode() for p in body.split(b"&")]
    assert fields == captured_dialplan_fields()
    assert body.startswith(b"hostname=vm&section=dialplan&tag_name=&key_name=&key_value=&")
    assert f"Unique-ID={call.uuid}&".encode() in body
    assert b"&Caller-Destination-Number=1001&" in body and b"%20" in body and b"+" not in body
    assert _roles(client.events, call.uuid) == _captured_roles("a")
    assert call.result == "answered" and call.route_source == "xml_curl"
    assert call.gateway == "carrier_a" and call.billmsec == 1000


def test_event_headers_follow_capture_order(world):
    sim, dp, client = world(captured_dialplan_xml(2), gateways={"carrier_a": FAIL_503})
    call = sim.place_call("1002", caller="sipp", hold_seconds=1.0)
    assert call.wait(GUARD) and _done(client, 3)
    captured = {}
    from test_sim_helpers import FIXTURES, split_frames
    frames, _ = split_frames((FIXTURES / "events-plain-b.txt").read_bytes())
    for head, body in frames:
        if head.get("Content-Type") == "text/event-plain":
            pairs = event_pairs(body)
            captured.setdefault((pairs[0][1], dict(pairs).get("Unique-ID", "")[:8]), [k for k, _ in pairs])
    a_create = [k for k, _ in event_pairs(client.event_bodies[0])]
    assert a_create == captured[("CHANNEL_CREATE", "2aa200b6")]
    hc = next(b for b, e in zip(client.event_bodies, client.events)
              if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE" and e["Unique-ID"] == call.uuid)
    names = [k for k, _ in event_pairs(hc)]
    assert names[:12] == captured[("CHANNEL_HANGUP_COMPLETE", "2aa200b6")][:12]
    assert b"variable_execute_on_answer: sched_hangup%20%2B5%20ALLOTTED_TIMEOUT\n" in hc


def test_failover_503_then_answer_matches_capture_b(world):
    sim, dp, client = world(captured_dialplan_xml(2), gateways={"carrier_a": FAIL_503})
    call = sim.place_call("1002", caller="sipp", hold_seconds=1.0)
    assert call.wait(GUARD) and _done(client, 3)
    assert _roles(client.events, call.uuid) == _captured_roles("b")
    assert call.causes == ["NORMAL_TEMPORARY_FAILURE", "NORMAL_CLEARING"]
    a_hc = [e for e in client.events if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"][-1]
    b1, b2 = call.legs
    assert a_hc["variable_originate_causes"] == (
        f"ARRAY::{b1.uuid};NORMAL_TEMPORARY_FAILURE|:{b2.uuid};NONE")
    failed = [e for e in client.events if e.get("Unique-ID") == b1.uuid][-1]
    assert failed["variable_sip_term_status"] == "503"
    assert failed["variable_sip_gateway_name"] == "carrier_a"
    assert failed["Channel-Name"] == "sofia/local/1002"
    assert failed["Channel-Call-UUID"] == call.uuid


def test_sched_hangup_cuts_a_leg_like_capture_c(world):
    sim, dp, client = world(bridge_xml("[switchd_carrier=a,switchd_rate=0.01]sofia/gateway/carrier_a/1003"))
    call = sim.place_call("1003", caller="sipp", hold_seconds=60)
    assert call.wait(GUARD) and _done(client, 2)
    assert _roles(client.events, call.uuid) == _captured_roles("c")
    hc = {e["Unique-ID"]: e for e in client.events if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"}
    a, b = hc[call.uuid], hc[call.legs[0].uuid]
    assert a["Hangup-Cause"] == "ALLOTTED_TIMEOUT" and b["Hangup-Cause"] == "NORMAL_CLEARING"
    assert b["variable_bridge_hangup_cause"] == "ALLOTTED_TIMEOUT"
    assert b["variable_switchd_carrier"] == "a" and b["variable_switchd_rate"] == "0.01"
    assert a["variable_switchd_tenant"] == "acme"
    # FreeSWITCH's scheduler fires on whole seconds: +5 is the answer's second + 5 (the
    # capture: answered at ...456.06, cut at ...461.10), so billmsec is at most 5000.
    answered, ended = int(a["Caller-Channel-Answered-Time"]), int(a["Caller-Channel-Hangup-Time"])
    assert ended == (answered // 1_000_000 + 5) * 1_000_000
    assert a["variable_billmsec"] == b["variable_billmsec"] == str(ended // 1000 - answered // 1000)


def test_ignore_sched_hangup_lets_the_call_run(world):
    sim, dp, client = world(bridge_xml("sofia/gateway/carrier_a/1003"),
                            gateways={"carrier_a": GatewayBehaviour(ignore_sched_hangup=True)})
    call = sim.place_call("1003", hold_seconds=30)
    assert call.wait(GUARD)
    assert call.hangup_cause == "NORMAL_CLEARING" and call.billmsec == 30_000


def test_uuid_kill_ends_a_live_call(world):
    sim, dp, client = world(bridge_xml("sofia/gateway/carrier_a/1003", sched=None))
    call = sim.place_call("1003", hold_seconds=100_000)
    assert client.wait_for(lambda evs: any(e["Event-Name"] == "CHANNEL_BRIDGE" for e in evs), GUARD)
    rows = client.command("api show calls as json")[1]
    assert call.uuid.encode() in rows and call.legs[0].uuid.encode() in rows
    head, body = client.command(f"api uuid_kill {call.uuid} MANAGER_REQUEST")
    assert body == b"+OK\n"
    assert call.wait(GUARD) and call.hangup_cause == "MANAGER_REQUEST"
    assert client.command("api show channels as json")[1] == b'{"row_count": 0}\n'


class HeldCdrSink:
    """A mod_json_cdr endpoint that answers no post until released."""

    def __init__(self, expected: int):
        self.posts: list[str] = []
        self.all_posted, self.release = gevent.event.Event(), gevent.event.Event()
        self.expected = expected
        self.server = WSGIServer(("127.0.0.1", 0), self.app, log=None, error_log=None)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/fs/cdr"

    def app(self, environ, start_response):
        environ["wsgi.input"].read()
        self.posts.append(environ["QUERY_STRING"])
        if len(self.posts) >= self.expected:
            self.all_posted.set()
        self.release.wait()
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]


def test_hangup_complete_waits_for_the_legs_cdr_post_as_in_freeswitch(world):
    """FreeSWITCH fires a leg's CHANNEL_HANGUP_COMPLETE after its reporting state, in which
    mod_json_cdr posts the CDR (switch_core_state_machine.c): until the post is answered
    the event is not sent and the channel is still listed."""
    sim, dp, client = world(bridge_xml("sofia/gateway/carrier_a/1001", sched=None),
                            heartbeat_interval=0.05)
    sink = HeldCdrSink(expected=2)
    sim.set_cdr_sink(CdrSink(sink.url, retries=0))
    call = sim.place_call("1001", caller="sipp", hold_seconds=1.0)
    assert call.wait(GUARD) and sink.all_posted.wait(GUARD)
    beats = sum(e["Event-Name"] == "HEARTBEAT" for e in client.events)
    # A heartbeat fired after both posts began: any event fired before it has been read.
    assert client.wait_for(lambda evs: sum(e["Event-Name"] == "HEARTBEAT" for e in evs) > beats,
                           GUARD)
    names = [e["Event-Name"] for e in client.events]
    assert names.count("CHANNEL_HANGUP") == 2 and "CHANNEL_HANGUP_COMPLETE" not in names
    assert {leg.uuid for leg in sim.live_legs()} == {call.uuid, call.legs[0].uuid}
    sink.release.set()
    assert _done(client, 2) and sim.cdr_poster.wait_idle(GUARD)
    assert sim.live_legs() == []
    sink.server.stop()


@pytest.mark.parametrize("status,xml", [("500 Internal Server Error", "oops"),
                                        ("200 OK", '<document type="freeswitch/xml"><section '
                                         'name="result"><result status="not found"/></section></document>')])
def test_dialplan_failure_falls_back_to_static_refusal(world, status, xml):
    sim, dp, client = world(xml)
    dp.status = status
    call = sim.place_call("1500")
    assert call.wait(GUARD) and _done(client, 1)
    assert call.route_source == "static_fallback" and call.result == "refused"
    hc = client.events[-1]
    assert hc["variable_route_source"] == "static_fallback"
    assert hc["Hangup-Cause"] == "NORMAL_TEMPORARY_FAILURE" and hc["variable_sip_term_status"] == "503"


def test_refusal_actions(world):
    sim, dp, client = world('<document type="freeswitch/xml"><section name="dialplan"><context name="public">'
                            '<extension><condition><action application="respond" data="403 Forbidden"/>'
                            '</condition></extension></context></section></document>')
    call = sim.place_call("900123")
    assert call.wait(GUARD) and call.result == "refused" and call.hangup_cause == "CALL_REJECTED"


@pytest.mark.parametrize("gw,expected", [(GatewayBehaviour(), "+OK {uuid}\n"),
                                         (GatewayBehaviour(fail_cause="USER_BUSY"), "-ERR USER_BUSY\n"),
                                         (FAIL_503, "-ERR NORMAL_TEMPORARY_FAILURE\n")])
def test_bgapi_originate_outcomes_like_captures_d_e_f(world, gw, expected):
    sim, dp, client = world(None, gateways={"carrier_a": gw})
    uuid = "8f74583b-42d4-4ee6-bbb0-548d0e499fae"
    body = client.bgapi(f"originate {{origination_uuid={uuid},origination_caller_id_number="
                        f"5551000}}sofia/gateway/carrier_a/2001 &park()", GUARD)
    text = expected.format(uuid=uuid)
    assert body.endswith(f"Content-Length: {len(text)}\n\n{text}".encode())
    assert b"Job-Command-Arg: %7Borigination_uuid%3D" + uuid.encode() in body
    created = [e for e in client.events if e["Event-Name"] == "CHANNEL_CREATE"][0]
    assert created["Unique-ID"] == uuid and created["variable_sip_gateway_name"] == "carrier_a"
    if expected.startswith("+OK"):
        assert client.command(f"api uuid_exists {uuid}")[1] == b"true"
        assert client.command(f"api uuid_kill {uuid}")[1] == b"+OK\n"
    assert client.wait_for(lambda evs: any(e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE" for e in evs),
                           GUARD)


def _run(seed):
    # No sched_hangup: it fires on whole seconds of the clock, which real time decides.
    dp = DialplanServer(bridge_xml("sofia/gateway/carrier_a/N|sofia/gateway/carrier_b/N", sched=None))
    sim = Simulator(seed=seed, dialplan_url=dp.url, time_scale=2000, heartbeat_interval=None,
                    gateways={"carrier_a": GatewayBehaviour(fail_rate=0.5)})
    sim.start()
    try:
        calls = [sim.place_call(f"44207946{i:04d}") for i in range(10)]
        assert sim.wait_idle(GUARD)
        return [(c.uuid, [leg.uuid for leg in c.legs], c.causes, c.hold_seconds, c.billmsec,
                 [n for n, _ in c.events]) for c in calls]
    finally:
        sim.stop()
        dp.stop()


def test_same_seed_same_calls():
    first, again, other = _run(3), _run(3), _run(4)
    assert first == again
    assert first != other
    assert any(len(legs) == 2 for _, legs, *_ in first)        # some failovers happened


def test_two_hundred_calls_run_in_seconds_with_realistic_billing(world):
    """Minutes of simulated talk in a fraction of a real second each. A call's hangup is
    its answer + hold in simulated time, so a slow machine changes no billmsec; the test
    waits for the calls to end, however long that takes (GUARD only catches a hang)."""
    sim, dp, client = world(bridge_xml("sofia/gateway/carrier_a/N", sched=None),
                            time_scale=5000)
    calls = [sim.place_call(f"1{i:03d}", accountcode="acme") for i in range(200)]
    assert sim.wait_idle(GUARD)
    assert _done(client, 400)
    assert all(c.result == "answered" for c in calls)
    assert all(10_000 <= c.billmsec <= 300_000 for c in calls)
    assert {e.get("variable_accountcode") for e in client.events if e["Unique-ID"] in
            {c.uuid for c in calls}} == {"acme"}
    seqs = [int(e["Event-Sequence"]) for e in client.events]
    assert seqs == sorted(seqs)


def test_restart_changes_core_and_live_calls(world):
    sim, dp, client = world(None)
    old_core = sim.core_uuid
    # Held far longer than any wait (10**7 simulated s = 10**4 s at 1000x): the call is
    # still up when `show channels` is asked, however slow the machine; kill_call ends it.
    sim.restart(live_calls=[{"destination": "4420", "gateway": "carrier_b", "hold_seconds": 10**7,
                             "variables": {"switchd_tenant": "acme"}}])
    assert client.closed.wait(GUARD)
    assert sim.core_uuid != old_core
    fresh = RawClient(sim.address)
    fresh.login(events="ALL")
    rows = fresh.command("api show channels as json")[1]
    assert b'"row_count":2' in rows
    sim.kill_call(sim.calls[-1].uuid)
    assert fresh.wait_for(lambda evs: sum(e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE" for e in evs) == 2,
                          GUARD)
    assert {e["Core-UUID"] for e in fresh.events} == {sim.core_uuid}
    fresh.close()


def test_heartbeat_and_gateway_state(world):
    sim, dp, client = world(None, heartbeat_interval=0.05)
    assert client.wait_for(lambda evs: any(e["Event-Name"] == "HEARTBEAT" for e in evs), GUARD)
    sim.emit_gateway_state("carrier_a", "NOREG", "DOWN", 503)
    assert client.wait_for(lambda evs: any(e["Event-Name"] == "CUSTOM" for e in evs), GUARD)
    body = next(b for b, e in zip(client.event_bodies, client.events) if e["Event-Name"] == "CUSTOM")
    assert body.startswith(b"Event-Subclass: sofia%3A%3Agateway_state\nEvent-Name: CUSTOM\n")
    assert b"\nGateway: carrier_a\nState: NOREG\nPing-Status: DOWN\nPhrase: Service%20Unavailable\nStatus: 503\n\n" in body


def test_a_caller_who_cancels_while_the_carrier_rings_ends_as_on_the_real_switch(world):
    """What FreeSWITCH 1.10.12 did (tests/realswitch/test_caller_gives_up.py): both legs
    ORIGINATOR_CANCEL, billsec 0; the caller's leg 487 (`recv_cancel`), the carrier's leg
    with no SIP status at all (`send_cancel`: the 487 it got answered our own CANCEL)."""
    # Real time (time_scale 1): the carrier answers 30 s after it rings, so the CANCEL sent
    # when its CHANNEL_PROGRESS arrives lands before the answer even on a loaded machine.
    ringing = GatewayBehaviour(answer_delay_s=30, progress_delay_s=0.05)
    sim, dp, client = world(bridge_xml("sofia/gateway/carrier_a/1003"), events=EVENTS + " CHANNEL_PROGRESS",
                            gateways={"carrier_a": ringing}, time_scale=1)
    call = sim.place_call("1003", caller="sipp", hold_seconds=5)
    assert client.wait_for(lambda evs: any(e["Event-Name"] == "CHANNEL_PROGRESS" for e in evs), GUARD)
    assert call.legs[0].progress_us                             # the carrier rings
    assert sim.cancel_call(call.uuid)
    assert call.wait(GUARD) and _done(client, 2)
    hc = {e["Unique-ID"]: e for e in client.events if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"}
    a, b = hc[call.uuid], hc[call.legs[0].uuid]
    assert (a["Hangup-Cause"], a["variable_sip_term_status"],
            a["variable_proto_specific_hangup_cause"], a["variable_sip_hangup_disposition"]) == \
        ("ORIGINATOR_CANCEL", "487", "sip:487", "recv_cancel")
    assert (b["Hangup-Cause"], b["variable_sip_hangup_disposition"]) == \
        ("ORIGINATOR_CANCEL", "send_cancel")
    assert "variable_sip_term_status" not in b and "variable_proto_specific_hangup_cause" not in b
    assert a["variable_billsec"] == b["variable_billsec"] == "0"
    assert int(b["variable_progress_uepoch"]) > 0 and b["variable_answer_uepoch"] == "0"
    assert call.result == "failed" and call.hangup_cause == "ORIGINATOR_CANCEL"
