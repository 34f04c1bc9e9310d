"""Originate with retries end to end, through the simulator and `switchd run`: every attempt
recorded, retries at the computed backoff (the daemon's clock stamps each attempt; the test
recomputes the schedule with dialplan/retry.py from those stamps, so no sleep and no
wall-clock window is asserted), permanent failures never retried, the daily cap, and a
scheduled retry surviving a daemon restart."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import timedelta

import gevent
import psycopg
import pytest
from psycopg.rows import dict_row

from api_helpers import Receiver, helper_port
from daemon_harness import metric
from dialplan.retry import delay_ms, jitter_unit, policy_from
from switchd.api import openapi, webhooks
from switchd.sim import GatewayBehaviour
from test_e2e_originate import _post

pytestmark = pytest.mark.slow

UK = "02079460999"


def _conforms(body, schema: str):
    """The answer matches its schema in the served OpenAPI document."""
    jsonschema = pytest.importorskip("jsonschema")
    doc = openapi.document()
    jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{schema}",
                                     "components": doc["components"]}).validate(body)


def _set_retry(url, policy: dict, tenant="acme"):
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE tenants SET retry = %s::jsonb WHERE name = %s",
                     (json.dumps(policy), tenant))


def _attempts(url, call_uuid):
    with psycopg.connect(url) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM originate_attempts WHERE call_uuid = %s ORDER BY attempt",
                    (call_uuid,))
        return cur.fetchall()


def _final(daemon, url, call_uuid, count, timeout=30):
    def done():
        rows = _attempts(url, call_uuid)
        return rows if len(rows) == count and rows[-1]["final"] else None
    return daemon.wait_until(done, timeout, f"{count} final attempt(s) of {call_uuid}")


def _gateways(sim, daemon):
    status, body = _post(daemon, {"tenant": "acme", "destination": UK})
    assert status == 200 and body["answered"], body
    sim.kill_call(body["call_uuid"])
    return body["gateways"]


def _assert_schedule(rows, call_uuid, policy, outcome):
    """Each retry was scheduled exactly the computed backoff after the attempt before it
    ended, and not placed before it was due."""
    for before, after in zip(rows, rows[1:]):
        n = before["attempt"]
        expected = delay_ms(policy, outcome, n, jitter_unit(call_uuid, n))
        assert after["scheduled_at"] - before["ended_at"] == timedelta(milliseconds=expected)
        assert after["started_at"] >= after["scheduled_at"]


def test_answered_first_time_is_one_final_attempt(switch, world_url):
    sim, daemon = switch
    status, body = _post(daemon, {"tenant": "acme", "destination": UK,
                                  "retry": {"max_attempts": 3}})
    assert status == 200 and body["answered"] and body["final"] and body["outcome"] == "answered"
    assert body["next_attempt_at"] is None and body["attempt"] == 1
    _conforms(body, "OriginateResult")
    (row,) = _final(daemon, world_url, body["call_uuid"], 1)
    assert (row["outcome"], row["state"], row["carriers_tried"]) == ("answered", "done", 1)
    assert str(row["attempt_call_uuid"]) == body["call_uuid"] and row["note"] == "answered"
    status, call = daemon.get(f"/v1/calls/{body['call_uuid']}")
    assert status == 200 and [a["outcome"] for a in call["originate_attempts"]] == ["answered"]
    sim.kill_call(body["call_uuid"])


def test_failover_inside_one_attempt_is_not_a_retry(switch, world_url):
    sim, daemon = switch
    gateways = _gateways(sim, daemon)
    sim.set_gateway(gateways[0], GatewayBehaviour(fail_cause="CALL_REJECTED", sip_status=403))
    status, body = _post(daemon, {"tenant": "acme", "destination": UK,
                                  "retry": {"max_attempts": 3}})
    assert status == 200 and body["answered"] and body["final"], body
    (row,) = _final(daemon, world_url, body["call_uuid"], 1)
    assert (row["outcome"], row["carriers_tried"], row["gateway"]) == ("answered", 2, gateways[1])
    sim.kill_call(body["attempts"][1]["leg_uuid"])


def test_all_carriers_failed_retries_the_call_then_gives_up(start_switch, world_url):
    policy = {"carrier_failure": 1, "factor": 2, "jitter_percent": 20}
    _set_retry(world_url, policy)
    sim, daemon = start_switch(world_url)
    for gw in ("budgetel_gw1", "globex_gw1", "globex_gw2", "primo_gw1"):
        sim.set_gateway(gw, GatewayBehaviour(fail_cause="CALL_REJECTED", sip_status=403))
    status, body = _post(daemon, {"tenant": "acme", "destination": UK,
                                  "retry": {"max_attempts": 2}})
    assert status == 200 and not body["answered"] and body["outcome"] == "carrier_failure"
    assert body["final"] is False and body["next_attempt_at"]
    rows = _final(daemon, world_url, body["call_uuid"], 2)
    assert [r["outcome"] for r in rows] == ["carrier_failure", "carrier_failure"]
    assert rows[0]["carriers_tried"] == len(body["gateways"]) == rows[1]["carriers_tried"]
    assert rows[1]["note"] == "max_attempts (2) reached"
    assert str(rows[0]["attempt_call_uuid"]) == body["call_uuid"] != str(rows[1]["attempt_call_uuid"])
    _assert_schedule(rows, body["call_uuid"], policy_from(policy), "carrier_failure")
    assert metric(daemon, "switchd_originate_attempts_total", outcome="carrier_failure") == 2
    assert metric(daemon, "switchd_originate_retries_scheduled_total",
                  outcome="carrier_failure") == 1


def test_unallocated_number_is_never_retried(switch, world_url):
    sim, daemon = switch
    gateways = _gateways(sim, daemon)
    sim.set_gateway(gateways[0], GatewayBehaviour(fail_cause="UNALLOCATED_NUMBER", sip_status=404))
    calls_before = len(sim.calls)
    status, body = _post(daemon, {"tenant": "acme", "destination": UK,
                                  "retry": {"max_attempts": 5}})
    assert status == 200 and body["outcome"] == "invalid_number" and body["final"], body
    (row,) = _final(daemon, world_url, body["call_uuid"], 1)
    assert row["note"] == "invalid_number: never retried" and row["sip_status"] == 404
    assert len(sim.calls) == calls_before + 1          # one originate reached the switch


def test_busy_retried_on_the_computed_schedule_then_answered(start_switch, world_url):
    policy = {"busy": 2, "factor": 2, "jitter_percent": 25}
    _set_retry(world_url, policy)
    receiver = Receiver(helper_port(5)).up()
    with psycopg.connect(world_url, autocommit=True) as conn:
        webhooks.set_webhook(conn, "acme", receiver.url)
    try:
        _busy_retried_then_answered(start_switch, world_url, policy, receiver)
    finally:
        receiver.down()


def _busy_retried_then_answered(start_switch, world_url, policy, receiver):
    sim, daemon = start_switch(world_url)
    gateways = _gateways(sim, daemon)
    sim.set_gateway(gateways[0], GatewayBehaviour(fail_cause="USER_BUSY", sip_status=486))
    status, body = _post(daemon, {"tenant": "acme", "destination": UK,
                                  "retry": {"max_attempts": 4, "on": ["busy"]}})
    assert status == 200 and body["outcome"] == "busy" and not body["final"], body
    call = body["call_uuid"]
    # busy twice: the callee still busy on the first retry
    daemon.wait_until(lambda: (lambda r: len(r) == 3 and r[1]["state"] == "done")(
        _attempts(world_url, call)), what="the first retry done")
    sim.set_gateway(gateways[0], GatewayBehaviour())     # now the callee answers
    rows = _final(daemon, world_url, call, 3)
    assert [r["outcome"] for r in rows] == ["busy", "busy", "answered"]
    assert [r["gateway"] for r in rows] == [gateways[0]] * 3   # busy never fails over
    _assert_schedule(rows, call, policy_from(policy), "busy")
    assert len({r["attempt_call_uuid"] for r in rows}) == 3
    status, got = daemon.get(f"/v1/calls/{call}")
    assert status == 200 and [a["attempt"] for a in got["originate_attempts"]] == [1, 2, 3]
    assert got["originate_attempts"][2]["final"] is True
    _conforms(got, "Call")
    _conforms(body, "OriginateResult")
    sim.kill_call(str(rows[2]["attempt_call_uuid"]))
    # Each attempt is a switch call with events of its own; every event names the call
    # the API answered and the attempt, so the application can follow its retries.
    attempts = {str(r["attempt_call_uuid"]): r["attempt"] for r in rows}
    finals = {"busy", "completed"}
    events = daemon.wait_until(lambda: (lambda got: got if sum(
        e["event"] in finals and e["call_uuid"] in attempts for e in got) == 3 else None)(
        [json.loads(d["body"]) for d in receiver.received]), what="each attempt's final event")
    mine = [e for e in events if e["call_uuid"] in attempts]
    assert {(e["origin_call_uuid"], e["attempt"]) for e in mine} == {(call, 1), (call, 2),
                                                                      (call, 3)}
    assert all(attempts[e["call_uuid"]] == e["attempt"] for e in mine)
    assert sorted((e["attempt"], e["event"]) for e in mine if e["event"] in finals) == [
        (1, "busy"), (2, "busy"), (3, "completed")]


def test_daily_cap_refuses_clearly_and_holds_across_a_restart(start_switch, world_url):
    _set_retry(world_url, {"daily_cap": 2})
    sim, daemon = start_switch(world_url)
    for _ in range(2):
        status, body = _post(daemon, {"tenant": "acme", "destination": UK})
        assert status == 200 and body["answered"], body
        sim.kill_call(body["call_uuid"])
    status, body = _post(daemon, {"tenant": "acme", "destination": UK})
    assert status == 429, body
    assert body["error"] == ("daily attempt cap reached: 2 attempt(s) to +442079460999 today "
                             "(UTC) for tenant acme (retry.daily_cap)")
    assert body["field"] == "destination"
    # another number is not capped; the count survives a restart (PostgreSQL)
    assert daemon.terminate() == 0
    sim2, daemon2 = start_switch(world_url)
    status, body = _post(daemon2, {"tenant": "acme", "destination": UK})
    assert status == 429
    status, body = _post(daemon2, {"tenant": "acme", "destination": "+4930123456"})
    assert status == 200 and body["answered"], body
    sim2.kill_call(body["call_uuid"])


def test_a_retry_reaching_the_cap_ends_the_call_capped(start_switch, world_url):
    _set_retry(world_url, {"daily_cap": 2, "busy": 1})
    sim, daemon = start_switch(world_url)
    gateways = _gateways(sim, daemon)                   # attempt 1 of today's 2
    sim.set_gateway(gateways[0], GatewayBehaviour(fail_cause="USER_BUSY", sip_status=486))
    status, body = _post(daemon, {"tenant": "acme", "destination": UK,
                                  "retry": {"max_attempts": 5}})
    assert status == 200 and body["outcome"] == "busy" and not body["final"]
    rows = _final(daemon, world_url, body["call_uuid"], 2)
    assert rows[1]["outcome"] == "capped" and rows[1]["attempt_call_uuid"] is None
    assert rows[1]["note"].startswith("daily attempt cap reached: 2 attempt(s)")


def test_a_scheduled_retry_survives_a_daemon_restart(start_switch, world_url):
    policy = {"busy": 3, "jitter_percent": 0}
    _set_retry(world_url, policy)
    sim, daemon = start_switch(world_url)
    gateways = _gateways(sim, daemon)
    sim.set_gateway(gateways[0], GatewayBehaviour(fail_cause="USER_BUSY", sip_status=486))
    status, body = _post(daemon, {"tenant": "acme", "destination": UK,
                                  "retry": {"max_attempts": 2}})
    assert status == 200 and not body["final"], body
    assert daemon.terminate() == 0                       # before the retry is due
    pending = _attempts(world_url, body["call_uuid"])
    assert [r["state"] for r in pending] == ["done", "pending"]
    sim2, daemon2 = start_switch(world_url)              # a new daemon on a new switch
    rows = _final(daemon2, world_url, body["call_uuid"], 2)
    assert rows[1]["outcome"] == "answered" and rows[1]["claimed_by"] != rows[0]["claimed_by"]
    _assert_schedule(rows, body["call_uuid"], policy_from(policy), "busy")
    assert any(c.uuid == str(rows[1]["attempt_call_uuid"]) for c in sim2.calls)
    sim2.kill_call(str(rows[1]["attempt_call_uuid"]))


def test_bad_retry_requests_are_refused_with_the_field(switch):
    sim, daemon = switch
    for retry, fragment in (({"max_attempts": 0}, "retry.max_attempts"),
                            ({"max_attempts": 2, "on": ["invalid_number"]}, "retry.on")):
        status, body = _post(daemon, {"tenant": "acme", "destination": UK, "retry": retry})
        assert status == 400 and body["field"] == fragment, body
    assert sim.calls == []


def test_switchd_originate_wait_prints_every_attempt_and_exits_by_outcome(start_switch,
                                                                         world_url):
    _set_retry(world_url, {"busy": 1, "jitter_percent": 0})
    sim, daemon = start_switch(world_url)
    gateways = _gateways(sim, daemon)
    sim.set_gateway(gateways[0], GatewayBehaviour(fail_cause="USER_BUSY", sip_status=486))

    def run(*extra):
        return subprocess.run([sys.executable, "-m", "switchd.cli", "originate", "--tenant",
                               "acme", "--to", UK, "--wait", *extra], env=dict(daemon.env),
                              capture_output=True, text=True, timeout=90)
    result = gevent.get_hub().threadpool.apply(run, ("--max-attempts", "2", "--retry-on", "busy"))
    assert result.returncode == 6, (result.stdout, result.stderr)      # busy
    lines = result.stdout.splitlines()
    assert lines[0].startswith("busy after 2 attempt(s)"), result.stdout
    assert sum(1 for line in lines if line.lstrip().startswith(("1 ", "2 "))) == 2
    assert f"via {gateways[0]}" in result.stdout
    sim.set_gateway(gateways[0], GatewayBehaviour())

    handle = gevent.get_hub().threadpool.spawn(run, "--json")
    live = daemon.wait_until(lambda: daemon.get("/v1/calls")[1]["calls"], what="answered call")
    daemon.wait_until(lambda: any(c.answered_leg for c in sim.calls
                                  if c.uuid == live[0]["call_uuid"]), what="answer")
    sim.kill_call(live[0]["call_uuid"])
    result = handle.get(timeout=90)
    assert result.returncode == 0, (result.stdout, result.stderr)
    out = json.loads(result.stdout)
    assert out["outcome"] == "answered" and out["carrier"] and out["duration_seconds"] is not None, out
    assert out["cost"] is not None and len(out["attempts"]) == 1


def test_no_attempt_is_placed_when_it_cannot_be_recorded(switch, world_url):
    sim, daemon = switch
    with psycopg.connect(world_url) as conn:
        conn.execute("ALTER TABLE originate_daily RENAME TO originate_daily_away")
    status, body = _post(daemon, {"tenant": "acme", "destination": UK})
    assert status == 503 and body["error"] == ("cannot record the attempt in PostgreSQL; "
                                               "nothing was placed"), body
    assert sim.calls == []
    with psycopg.connect(world_url) as conn:
        conn.execute("ALTER TABLE originate_daily_away RENAME TO originate_daily")
    status, body = _post(daemon, {"tenant": "acme", "destination": UK})
    assert status == 200 and body["answered"], body
    sim.kill_call(body["call_uuid"])


def test_hanging_up_a_call_waiting_for_its_retry_cancels_the_retry(switch, world_url):
    sim, daemon = switch
    gateways = _gateways(sim, daemon)
    sim.set_gateway(gateways[0], GatewayBehaviour(fail_cause="USER_BUSY", sip_status=486))
    status, body = _post(daemon, {"tenant": "acme", "destination": UK,
                                  "retry": {"max_attempts": 3}})       # retry in about 60 s
    assert status == 200 and not body["final"], body
    call = body["call_uuid"]
    daemon.wait_until(lambda: daemon.get("/v1/calls")[1]["calls"] == [], what="no live call")
    status, answer = _hangup(daemon, call)
    assert status == 202 and answer == {"call_uuid": call, "hangup": "retries cancelled"}
    rows = _attempts(world_url, call)
    assert [(r["state"], r["outcome"], r["final"]) for r in rows] == [
        ("done", "busy", False), ("done", "cancelled", True)]
    assert rows[1]["note"] == "retry cancelled (hangup)" and rows[1]["started_at"] is None
    assert _hangup(daemon, call)[0] == 404                      # nothing left to stop


def _hangup(daemon, call_uuid):
    def post():
        request = urllib.request.Request(f"{daemon.base_url}/v1/calls/{call_uuid}/hangup",
                                         data=b"", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)
    return gevent.get_hub().threadpool.apply(post)
