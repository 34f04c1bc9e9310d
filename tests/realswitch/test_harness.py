"""The harness itself, on the real switch without switchd: each carrier mode gives the SIP
answer and hangup cause FreeSWITCH really produces (the simulator's table in backends.py is
checked against this), INVITEs are counted once per call, and restart() brings the
gateways back."""
from __future__ import annotations

import http.server
import json
import re
import threading
import time

import pytest

from .backends import SIP_TO_CAUSE
from .common import poll
from .fsconfig import GATEWAY_PING_S

pytestmark = pytest.mark.realswitch


def originate(switch, gateway: str, number: str = "15550001", legs: int = 1) -> tuple[str, list]:
    """originate straight to a gateway (no dialplan): FreeSWITCH's reply and, once `legs`
    carrier legs have hung up, their CHANNEL_HANGUP_COMPLETEs."""
    reply = switch.api(f"originate {{originate_timeout=3}}sofia/gateway/{gateway}/{number} &park()")
    if reply.startswith("+OK "):
        switch.api(f"uuid_kill {reply.strip()[4:]}")

    def gateway_legs():
        found = [h for h in switch.hangups() if h.direction == "outbound" and h.gateway == gateway]
        return found if len(found) >= legs else None
    return reply.strip(), (poll(gateway_legs, 10, f"the {gateway} leg to hang up") if legs else [])


@pytest.mark.parametrize("code", sorted(SIP_TO_CAUSE))
def test_carrier_final_code_reaches_the_switch_as_freeswitch_maps_it(realswitch, code):
    realswitch.carrier("gw_b").set_mode(str(code))
    reply, hangups = originate(realswitch, "gw_b")
    assert reply == f"-ERR {SIP_TO_CAUSE[code]}", reply
    assert [(h.sip_term_status, h.cause) for h in hangups] == [(code, SIP_TO_CAUSE[code])]
    assert realswitch.invites() == {"gw_a": 0, "gw_b": 1, "gw_c": 0}


def test_answering_carrier_and_invite_count(realswitch):
    reply, hangups = originate(realswitch, "gw_c", "4930123")
    assert reply.startswith("+OK "), reply
    # answered: FreeSWITCH stamped an answer time. (Not billmsec > 0: the kill follows the
    # answer by a few ms, and a loaded switch, whose clock ticks by its timer thread, has
    # stamped both with the same millisecond.)
    assert [h.cause for h in hangups] == ["NORMAL_CLEARING"]
    assert int(hangups[0].headers.get("Caller-Channel-Answered-Time", "0")) > 0
    log = realswitch.carrier("gw_c").invite_log()
    assert len(log) == 1 and log[0]["request_uri"].startswith("sip:4930123@")


def test_ringing_carrier_times_out(realswitch):
    realswitch.carrier("gw_a").set_mode("ring")
    reply, ring = originate(realswitch, "gw_a")
    assert (reply, [h.cause for h in ring]) == ("-ERR NO_ANSWER", ["NO_ANSWER"])
    assert realswitch.invites()["gw_a"] == 1


def test_down_carrier_takes_its_gateway_down(realswitch):
    """A stopped carrier fails the next OPTIONS ping (ICMP unreachable on loopback): the
    gateway goes DOWN and FreeSWITCH sends nothing to it."""
    realswitch.carrier("gw_b").set_mode("down")
    poll(lambda: realswitch.gateway_state("gw_b") == "DOWN", 15, "gateway gw_b DOWN")
    reply, _ = originate(realswitch, "gw_b", legs=0)
    assert reply.startswith("-ERR "), reply
    assert realswitch.invites()["gw_b"] == 0


def test_restart_brings_the_gateways_back(realswitch):
    realswitch.restart()
    assert {gw: realswitch.gateway_state(gw) for gw in ("gw_a", "gw_b", "gw_c")} == \
        {"gw_a": "UP", "gw_b": "UP", "gw_c": "UP"}
    assert re.search(r"\d+ total", realswitch.api("show channels count"))
    reply, hangups = originate(realswitch, "gw_a")
    assert reply.startswith("+OK ") and hangups, reply


def test_json_cdr_posts_each_leg_when_turned_on(realswitch):
    """The CDR hook: with a URL, mod_json_cdr posts every leg's CDR."""
    posts: list[dict] = []

    class Sink(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass
    server = http.server.HTTPServer(("127.0.0.1", realswitch.plan.http), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        realswitch.set_cdr_url(f"http://127.0.0.1:{realswitch.plan.http}/fs/cdr")
        reply, hangups = originate(realswitch, "gw_a")
        assert reply.startswith("+OK ")
        cdr = poll(lambda: next((p for p in posts
                                 if p.get("variables", {}).get("uuid") == hangups[0].uuid), None),
                   10, "the leg's JSON CDR")
        assert cdr["variables"]["billmsec"] == str(hangups[0].billmsec)
    finally:
        server.shutdown()
        server.server_close()


def test_without_switchd_the_static_fallback_refuses(realswitch):
    """No daemon on the xml_curl URL: FreeSWITCH falls back to our static dialplan, which
    refuses (503) and sends nothing to any carrier."""
    result = realswitch.call("+442079460123", hold_ms=200)
    assert result.code == 503, result
    legs = realswitch.wait_call(result)
    assert [(h.direction, h.gateway) for h in legs] == [("inbound", None)]
    assert realswitch.invites() == {"gw_a": 0, "gw_b": 0, "gw_c": 0}


def test_carrier_restarts_keep_clear_of_the_gateway_pings(realswitch):
    """A restart closes the carrier's port for a moment; a ping landing then would take the
    gateway DOWN and the carrier out of the next test call. Restarts asked for just as a
    ping falls due (three in a row, at two pings) leave FreeSWITCH's gateway UP all along:
    no gateway_state event says otherwise."""
    carrier, modes, restarts = realswitch.carrier("gw_a"), ("ring", "answer"), 0
    for _ in range(2):
        due = realswitch.gateway_ping("gw_a").next_at
        poll(lambda: time.time() >= due, GATEWAY_PING_S + 2, "gw_a's ping to fall due", 0.01)
        for _ in range(3):
            carrier.set_mode(modes[restarts % 2])
            restarts += 1
    downs = [e for e in realswitch.events("CUSTOM")
             if e.get("Gateway") == "gw_a" and e.get("Ping-Status") != "UP"]
    assert downs == [] and realswitch.gateway_state("gw_a") == "UP"
    assert realswitch.gateway_ping("gw_a").next_at > due     # both pings went out
