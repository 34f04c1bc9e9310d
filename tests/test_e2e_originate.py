"""Originate end to end: POST /v1/calls (and `switchd originate`) → LCR → bgapi originate
on the simulator → BACKGROUND_JOB → events → rated CDR in PostgreSQL."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import gevent
import psycopg
import pytest

from daemon_harness import metric
from switchd.calls.originate import ATTEMPT_END_WAIT_S
from switchd.sim import GatewayBehaviour

pytestmark = pytest.mark.slow


def _post(daemon, payload, timeout=60):
    def call():
        request = urllib.request.Request(daemon.base_url + "/v1/calls",
                                         data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)
    return gevent.get_hub().threadpool.apply(call)


def _cdr(url, call_uuid):
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT carrier, answered_at IS NOT NULL, cost, direction, tenant, "
                            "hangup_cause FROM calls WHERE call_uuid = %s", (call_uuid,)).fetchone()


def test_originate_routes_by_lcr_and_bills(switch, world_url):
    sim, daemon = switch
    status, body = _post(daemon, {"tenant": "acme", "destination": "02079460999",
                                  "caller_id": "+442079460100"})
    assert status == 200, body
    assert body["answered"] is True and body["result"] == f"+OK {body['call_uuid']}"
    assert body["gateways"][0] == "budgetel_gw1" and body["destination"] == "+442079460999"
    sim_call = next(c for c in sim.calls if c.uuid == body["call_uuid"])
    # Billed seconds follow FreeSWITCH's billsec (whole seconds of the clock): let the call
    # talk a few (simulated) seconds so it has some.
    daemon.wait_until(lambda: sim_call.answered_leg and sim.clock.now_us()
                      - sim_call.answered_leg.answered_us > 3_000_000, what="3 s of talk")
    sim.kill_call(body["call_uuid"])
    assert sim_call.wait(30)
    row = daemon.wait_until(lambda: _cdr(world_url, body["call_uuid"]), what="originated CDR")
    assert row[0] == "budgetel" and row[1] is True and row[3] == "outbound" and row[4] == "acme"
    assert row[2] > 0


def test_failed_originate_releases_its_slots(switch, world_url):
    sim, daemon = switch
    for gw in ("budgetel_gw1", "globex_gw1", "globex_gw2", "primo_gw1"):
        sim.set_gateway(gw, GatewayBehaviour(fail_cause="NORMAL_TEMPORARY_FAILURE", sip_status=503))
    status, body = _post(daemon, {"tenant": "acme", "destination": "+4930123456"})
    assert status == 200 and body["answered"] is False
    assert body["result"].startswith("-ERR NORMAL_TEMPORARY_FAILURE")
    row = daemon.wait_until(lambda: _cdr(world_url, body["call_uuid"]), what="failed originate CDR")
    assert row[1] is False and row[2] == 0
    daemon.wait_until(lambda: daemon.get("/v1/calls")[1]["calls"] == [], what="no live calls left")


@pytest.mark.parametrize("payload, status, fragment", [
    ({"destination": "+4930123456"}, 400, "tenant"),
    ({"tenant": "acme", "destination": "+4930123456", "bogus": 1}, 400, "bogus"),
    ({"tenant": "acme", "destination": "+4930123456", "app": "&system(rm -rf /)"}, 400, "app"),
    ({"tenant": "acme", "destination": "+4930123456", "caller_id": "1,2}"}, 400, "caller_id"),
    ({"tenant": "nobody", "destination": "+4930123456"}, 403, "tenant"),
    ({"tenant": "acme", "destination": "112"}, 403, "emergency"),
    ({"tenant": "acme", "destination": "+61212345678"}, 409, "no carrier"),
])
def test_bad_originate_requests_are_refused_clearly(switch, payload, status, fragment):
    sim, daemon = switch
    got, body = _post(daemon, payload)
    assert got == status and fragment in body["error"], body
    assert sim.calls == []          # nothing reached the switch


def test_switchd_originate_command(switch):
    sim, daemon = switch
    env = dict(daemon.env)

    def run():
        return subprocess.run([sys.executable, "-m", "switchd.cli", "originate", "--tenant", "acme",
                               "--to", "+81312345678"], env=env, capture_output=True, text=True,
                              timeout=90)
    result = gevent.get_hub().threadpool.apply(run)
    assert result.returncode == 0, result.stderr
    assert "+OK" in result.stdout and "primo_gw1" in result.stdout


def _legs(url, call_uuid):
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT leg_uuid, gateway, hangup_cause, sip_status, "
                            "answered_at IS NOT NULL FROM call_legs WHERE call_uuid = %s "
                            "ORDER BY started_at", (call_uuid,)).fetchall()


def _order(sim, daemon):
    status, body = _post(daemon, {"tenant": "acme", "destination": "02079460999"})
    assert status == 200 and body["answered"], body
    sim.kill_call(body["call_uuid"])
    return body["gateways"]


def test_originate_fails_over_on_403_each_attempt_its_own_leg(switch, world_url):
    sim, daemon = switch
    gateways = _order(sim, daemon)
    assert len(gateways) >= 2
    sim.set_gateway(gateways[0], GatewayBehaviour(fail_cause="CALL_REJECTED", sip_status=403))
    status, body = _post(daemon, {"tenant": "acme", "destination": "02079460999"})
    assert status == 200 and body["answered"] is True, body
    attempts = body["attempts"]
    assert [a["gateway"] for a in attempts] == gateways[:2]
    assert attempts[0]["leg_uuid"] == body["call_uuid"]          # the caps key
    assert attempts[0]["sip_status"] == 403 and attempts[0]["hangup_cause"] == "CALL_REJECTED"
    assert len({a["leg_uuid"] for a in attempts}) == 2
    sim.kill_call(attempts[1]["leg_uuid"])
    row = daemon.wait_until(lambda: _cdr(world_url, body["call_uuid"]), what="CDR")
    assert row[1] is True and row[5] == "NORMAL_CLEARING"
    legs = _legs(world_url, body["call_uuid"])
    assert [(l[0], l[1], l[4]) for l in legs] == [
        (attempts[0]["leg_uuid"], gateways[0], False), (attempts[1]["leg_uuid"], gateways[1], True)]
    assert legs[0][3] == 403


def test_originate_stops_on_603(switch, world_url):
    sim, daemon = switch
    gateways = _order(sim, daemon)
    sim.set_gateway(gateways[0], GatewayBehaviour(fail_cause="CALL_REJECTED", sip_status=603))
    status, body = _post(daemon, {"tenant": "acme", "destination": "02079460999"})
    assert status == 200 and body["answered"] is False
    assert [a["gateway"] for a in body["attempts"]] == gateways[:1]
    assert body["result"].startswith("-ERR CALL_REJECTED")
    row = daemon.wait_until(lambda: _cdr(world_url, body["call_uuid"]), what="CDR")
    assert row[1] is False and row[5] == "CALL_REJECTED"


def test_the_operators_failover_rows_decide_an_originate(start_switch, world_url, tmp_path):
    """`[failover]` "403" = "stop": an originated call whose carrier answers 403 stops there,
    as a routed call would (docs/routing.md §4a)."""
    config = tmp_path / "switchd.toml"
    config.write_text('[failover]\n"403" = "stop"\n')
    sim, daemon = start_switch(world_url, extra_env={"SWITCHD_CONFIG": str(config)})
    gateways = _order(sim, daemon)
    sim.set_gateway(gateways[0], GatewayBehaviour(fail_cause="CALL_REJECTED", sip_status=403))
    status, body = _post(daemon, {"tenant": "acme", "destination": "02079460999"})
    assert status == 200 and body["answered"] is False, body
    assert [(a["gateway"], a["sip_status"]) for a in body["attempts"]] == [(gateways[0], 403)]
    row = daemon.wait_until(lambda: _cdr(world_url, body["call_uuid"]), what="CDR")
    assert row[1] is False and row[5] == "CALL_REJECTED"


def test_a_leg_the_switch_refuses_to_start_is_placed_again_on_the_same_carrier(switch, world_url):
    """FreeSWITCH's sessions-per-second throttle (or max-sessions) refuses the session:
    DESTINATION_OUT_OF_ORDER, no channel, no INVITE. Every carrier would be refused alike,
    so the cheapest carrier gets the call once more, and no carrier's health moves."""
    sim, daemon = switch
    gateways = _order(sim, daemon)
    sim.refuse_sessions(1)
    status, body = _post(daemon, {"tenant": "acme", "destination": "02079460999"})
    assert status == 200 and body["answered"] is True, body
    attempts = body["attempts"]
    assert [a["gateway"] for a in attempts] == [gateways[0], gateways[0]]
    assert attempts[0]["result"] == "-ERR DESTINATION_OUT_OF_ORDER"
    assert (attempts[0]["hangup_cause"], attempts[0]["sip_status"]) == (
        "DESTINATION_OUT_OF_ORDER", None)
    assert attempts[0]["leg_uuid"] == body["call_uuid"] != attempts[1]["leg_uuid"]
    assert sim.throttled == 1
    assert metric(daemon, "switchd_switch_refused_legs_total", path="originate") == 1
    # billed seconds are FreeSWITCH's billsec, whole seconds: talk a few so the cost is not 0
    sim_call = next(c for c in sim.calls if c.uuid == attempts[1]["leg_uuid"])
    daemon.wait_until(lambda: sim_call.answered_leg and sim.clock.now_us()
                      - sim_call.answered_leg.answered_us > 3_000_000, what="3 s of talk")
    sim.kill_call(attempts[1]["leg_uuid"])
    assert sim_call.wait(30)
    row = daemon.wait_until(lambda: (lambda r: r if r and r[2] else None)(
        _cdr(world_url, body["call_uuid"])), what="the CDR with the answered leg's cost")
    assert row[0] == "budgetel" and row[1] is True and row[2] > 0
    # the refused attempt is not the carrier's failure (a failure would take 5 points)
    assert metric(daemon, "switchd_carrier_health", carrier="budgetel") == 100


def test_a_leg_refused_twice_by_the_switch_fails_over(switch):
    """Once more, not for ever: refused again (or a gateway whose config sofia refuses),
    the next carrier is tried as for any failover cause."""
    sim, daemon = switch
    gateways = _order(sim, daemon)
    sim.refuse_sessions(2)
    asked = time.monotonic()
    status, body = _post(daemon, {"tenant": "acme", "destination": "02079460999"})
    took = time.monotonic() - asked
    assert status == 200 and body["answered"] is True, body
    assert [a["gateway"] for a in body["attempts"]] == [gateways[0], gateways[0], gateways[1]]
    # A refused session sends no event at all: known as soon as the events before the job's
    # result are applied, not after ATTEMPT_END_WAIT_S each (4 s for these two). What is
    # left is the one pause before placing it again (SWITCH_REFUSED_PAUSE_MS).
    assert took < ATTEMPT_END_WAIT_S, took
    assert [a["hangup_cause"] for a in body["attempts"][:2]] == ["DESTINATION_OUT_OF_ORDER"] * 2
    assert metric(daemon, "switchd_switch_refused_legs_total", path="originate") == 1
    sim.kill_call(body["attempts"][-1]["leg_uuid"])
