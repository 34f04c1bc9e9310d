"""The /v1 API through the real daemon on the simulator: a tenant key places a call with an
Idempotency-Key (a retry places no second call), the tenant's webhook receives created,
answered and completed (signed, numbered, with duration and cost equal to the CDR's),
hang up, the call's record, the routing explanation (API and `switchd route`), per-carrier
rates, carrier health reset, and tenancy on all of them."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import gevent
import psycopg
import pytest

from api_helpers import Receiver, helper_port
from daemon_harness import rows
from switchd.api import keys, webhooks

ROOT = Path(__file__).resolve().parents[1]


def request(daemon, method, path, key=None, body=None, headers=None, timeout=60):
    def go():
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if key:
            hdrs["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(daemon.base_url + path, data=data, headers=hdrs,
                                     method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.status, dict(response.headers), json.load(response)
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), json.load(exc)
    return gevent.get_hub().threadpool.apply(go)


@pytest.fixture
def world(world_url):
    receiver = Receiver(helper_port(2)).up()
    with psycopg.connect(world_url, autocommit=True) as conn:
        conn.execute("INSERT INTO tenants (name, accountcode, default_region) "
                     "VALUES ('beta', 'beta', 'US')")
        acme, _ = keys.create(conn, tenant="acme")
        beta, _ = keys.create(conn, tenant="beta")
        secret = webhooks.set_webhook(conn, "acme", receiver.url)["secret"]
    yield {"url": world_url, "acme": acme, "beta": beta, "receiver": receiver, "secret": secret}
    receiver.down()


@pytest.mark.slow
def test_call_with_idempotency_key_and_its_signed_events(world, start_switch):
    sim, daemon = start_switch(world["url"])
    acme, receiver = world["acme"], world["receiver"]
    payload = {"destination": "02079460999", "caller_id": "+442079460100"}
    hdr = {"Idempotency-Key": "order-42"}
    status, _, first = request(daemon, "POST", "/v1/calls", acme, payload, hdr)
    assert status == 200 and first["answered"] is True, first
    call_uuid = first["call_uuid"]
    status, headers, again = request(daemon, "POST", "/v1/calls", acme, payload, hdr)
    assert status == 200 and again == first and headers["Idempotent-Replayed"] == "true"
    status, _, body = request(daemon, "POST", "/v1/calls", acme,
                              {**payload, "destination": "+33612345678"}, hdr)
    assert status == 422 and body["field"] == "Idempotency-Key"
    assert [c.uuid for c in sim.calls] == [call_uuid]          # one call placed, not two
    # beta cannot see or hang up acme's live call; acme can
    assert request(daemon, "GET", f"/v1/calls/{call_uuid}", world["beta"])[0] == 404
    assert request(daemon, "POST", f"/v1/calls/{call_uuid}/hangup", world["beta"])[0] == 404
    assert request(daemon, "GET", "/v1/calls", world["beta"])[2]["calls"] == []
    assert [c["call_uuid"] for c in request(daemon, "GET", "/v1/calls", acme)[2]["calls"]] \
        == [call_uuid]
    status, _, live = request(daemon, "GET", f"/v1/calls/{call_uuid}", acme)
    assert status == 200 and live["state"] == "answered" and live["tenant"] == "acme"
    status, _, body = request(daemon, "POST", f"/v1/calls/{call_uuid}/hangup", acme)
    assert status == 202, body
    got = daemon.wait_until(lambda: len(receiver.received) >= 3 and receiver.received,
                            what="three webhook deliveries")
    cdr = daemon.wait_until(lambda: rows(world["url"], "SELECT billed_seconds, cost, carrier "
                                         "FROM calls WHERE call_uuid = %s", call_uuid),
                            what="the CDR")[0]
    events = sorted((json.loads(d["body"]) for d in got), key=lambda e: e["sequence"])
    assert [(e["sequence"], e["event"]) for e in events] == \
        [(1, "created"), (2, "answered"), (3, "completed")]
    assert {e["call_uuid"] for e in events} == {call_uuid}
    final = events[-1]["data"]
    assert final["duration_seconds"] == cdr[0] and final["cost"] == str(cdr[1])
    assert final["carrier"] == cdr[2] == "budgetel"
    from test_webhooks import doc_verify
    verify = doc_verify()
    assert all(verify(world["secret"], d["headers"]["Switchd-Signature"], d["body"]) for d in got)
    # the finished call, with legs and cost
    status, _, done = request(daemon, "GET", f"/v1/calls/{call_uuid}", acme)
    assert status == 200 and done["state"] == "ended" and done["cost"] == str(cdr[1])
    assert done["legs"] and done["legs"][-1]["carrier"] == "budgetel"
    status, _, listed = request(daemon, "GET", f"/v1/calls/{call_uuid}/events", acme)
    assert [e["event"] for e in listed["events"]] == ["created", "answered", "completed"]
    assert all(e["delivered_at"] for e in listed["events"])


@pytest.mark.slow
def test_routing_explained_rates_and_health(world, switch):
    sim, daemon = switch
    acme = world["acme"]
    status, _, body = request(daemon, "POST", "/v1/routing/test", acme, {"number": "02079460999"})
    assert status == 200 and body["result"] == "routed", body
    assert body["number"] == "+442079460999" and body["max_duration"] > 0
    assert [(r["carrier"], r["gateway"]) for r in body["routes"]] == [
        ("budgetel", "budgetel_gw1"), ("globex", "globex_gw1"), ("globex", "globex_gw2"),
        ("primo", "primo_gw1")]
    assert body["routes"][0]["rate_per_min"] == "0.009000"
    assert [c["position"] for c in body["carriers"]] == [0, 1, 3]   # of each first leg
    status, _, body = request(daemon, "POST", "/v1/routing/test", acme, {"number": "+81312345678"})
    skipped = {c["carrier"]: c["skipped"] for c in body["carriers"]}
    assert body["routes"][0]["carrier"] == "primo" and skipped["budgetel"] == "no_rate"
    status, _, body = request(daemon, "POST", "/v1/routing/test", acme, {"number": "+449001234567"})
    assert body["result"] == "refused" and body["reason"] == "forbidden_destination", body
    assert body["sip_code"] == 403 and "44900" in body["detail"]
    status, _, body = request(daemon, "POST", "/v1/routing/test", world["beta"],
                              {"number": "+442079460999", "tenant": "acme"})
    assert status == 404 and body["field"] == "tenant"
    status, _, body = request(daemon, "POST", "/v1/routing/test", acme, {"numbr": "1"})
    assert status == 400 and body["field"] == "number"
    # no call was placed, no slot held
    assert sim.calls == [] and request(daemon, "GET", "/v1/calls", acme)[2]["calls"] == []
    # the same from the shell
    env = {**daemon.env, "PYTHONPATH": str(ROOT)}
    out = gevent.get_hub().threadpool.apply(lambda: subprocess.run(
        [sys.executable, "-m", "switchd.cli", "route", "+81312345678", "--tenant", "acme"],
        env=env, capture_output=True, text=True, timeout=30))
    assert out.returncode == 0, out.stderr
    assert "routed" in out.stdout and "skipped: no_rate" in out.stdout and "primo" in out.stdout
    # per-carrier rates of a number
    status, _, body = request(daemon, "GET", "/v1/rates/+447700900123", acme)
    assert {r["carrier"]: r["rate_per_min"] for r in body["rates"]} == \
        {"budgetel": "0.025000", "globex": "0.021000", "primo": "0.030000"}
    # carrier health: admin only (no token configured: the operator, as documented)
    assert request(daemon, "GET", "/v1/carriers/primo/health", acme)[0] == 403
    status, _, body = request(daemon, "GET", "/v1/carriers/primo/health")
    assert status == 200 and body["score"] == 100 and body["state"] == "up"
    from switchd.sim import GatewayBehaviour
    sim.set_gateway("primo_gw1", GatewayBehaviour(fail_cause="NORMAL_TEMPORARY_FAILURE",
                                                  sip_status=503))
    status, _, body = request(daemon, "POST", "/v1/calls", acme, {"destination": "+81312345678"})
    assert status == 200 and body["answered"] is False, body
    hurt = daemon.wait_until(
        lambda: (lambda h: h if h["consecutive_failures"] else None)(
            request(daemon, "GET", "/v1/carriers/primo/health")[2]), what="primo's failure counted")
    assert hurt["score"] < 100
    status, _, body = request(daemon, "POST", "/v1/carriers/primo/health/reset")
    assert status == 200 and (body["score"], body["consecutive_failures"], body["state"]) == \
        (100, 0, "up")
    assert request(daemon, "POST", "/v1/carriers/nope/health/reset")[0] == 404


@pytest.mark.slow
def test_routed_calls_send_events_once_their_tenant_is_known(world, switch):
    """A call placed through the dialplan (mod_xml_curl): its first events carry no tenant;
    created is held until routing names it, then numbered first. A busy callee ends in
    `busy`, without duration or cost."""
    sim, daemon = switch
    receiver = world["receiver"]
    answered = sim.place_call("+4930123999", accountcode="acme", hold_seconds=5)
    assert answered.wait(30)
    from switchd.sim import GatewayBehaviour
    for gw in ("budgetel_gw1", "globex_gw1", "globex_gw2", "primo_gw1"):
        sim.set_gateway(gw, GatewayBehaviour(fail_cause="USER_BUSY", sip_status=486))
    busy = sim.place_call("+4930123998", accountcode="acme")
    assert busy.wait(30)
    got = daemon.wait_until(
        lambda: sum(json.loads(d["body"])["event"] in ("completed", "busy")
                    for d in receiver.received) >= 2 and receiver.received,
        what="both calls' final events")
    events = [json.loads(d["body"]) for d in got]
    seq = lambda uuid: sorted((e["sequence"], e["event"]) for e in events  # noqa: E731
                              if e["call_uuid"] == uuid)
    assert seq(answered.uuid) == [(1, "created"), (2, "answered"), (3, "completed")]
    assert seq(busy.uuid) == [(1, "created"), (2, "busy")]
    final = next(e for e in events if e["event"] == "busy")
    assert final["data"]["hangup_cause"] == "USER_BUSY" and "cost" not in final["data"]
    created = next(e for e in events if e["call_uuid"] == answered.uuid and e["event"] == "created")
    assert created["tenant"] == "acme" and created["data"]["destination"] == "+4930123999"


@pytest.mark.slow
def test_budget_alert_reaches_the_tenants_webhook(world, start_switch):
    with psycopg.connect(world["url"], autocommit=True) as conn:
        conn.execute("UPDATE tenants SET monthly_budget = 0.01 WHERE name = 'acme'")
    sim, daemon = start_switch(world["url"])
    status, _, body = request(daemon, "POST", "/v1/calls", world["acme"],
                              {"destination": "02079460999"})
    assert status == 200 and body["answered"], body
    # Billed seconds follow FreeSWITCH's billsec (whole seconds): a call killed in its first
    # simulated second bills nothing. Let it talk a few simulated seconds first.
    sim_call = next(c for c in sim.calls if c.uuid == body["call_uuid"])
    daemon.wait_until(lambda: sim_call.answered_leg and sim.clock.now_us()
                      - sim_call.answered_leg.answered_us > 3_000_000, what="3 s of talk")
    sim.kill_call(body["call_uuid"])            # 60 s billed at 0.009/min: 90 % of 0.01
    got = daemon.wait_until(lambda: (lambda alerts: alerts if len(alerts) >= 2 else None)(
        [json.loads(d["body"]) for d in world["receiver"].received
         if json.loads(d["body"])["event"] == "budget.threshold"]), what="budget alerts")
    assert sorted((a["tenant"], a["data"]["threshold_percent"], a["data"]["spent"])
                  for a in got) == [("acme", 75, "0.009000"), ("acme", 90, "0.009000")]
    with psycopg.connect(world["url"]) as conn:     # recorded once, for restarts to find
        assert conn.execute("SELECT threshold FROM budget_alerts WHERE tenant = 'acme' "
                            "ORDER BY threshold").fetchall() == [(75,), (90,)]
