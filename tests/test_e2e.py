"""End to end: the simulator (FreeSWITCH) → `switchd run` (a real subprocess) → PostgreSQL.

Each test provisions the demo world into a fresh database, starts the simulator and the
daemon, places calls through mod_xml_curl-shaped lookups and ESL events, and reads the
outcome back from PostgreSQL: the route chosen, failover, refusals, rated CDRs.
"""
from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal

import pytest

from switchd.sim import GatewayBehaviour
from daemon_harness import metric, rows
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.slow


def _sample(daemon, name, **labels):
    """The value of one sample of `name` on /metrics, or None when it has none."""
    status, text = daemon.get("/metrics")
    assert status == 200
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def _call_row(url, call_uuid):
    found = rows(url, "SELECT carrier, first_choice_carrier, attempts, billed_seconds, cost, "
                      "answered_at IS NOT NULL, tenant, direction, hangup_cause "
                      "FROM calls WHERE call_uuid = %s", call_uuid)
    return found[0] if found else None


def _wait_cdr(daemon, url, call_uuid):
    return daemon.wait_until(lambda: _call_row(url, call_uuid), what=f"CDR of {call_uuid}")


def _expected_cost(billmsec, rate, fee, initial, subsequent):
    """Independent oracle of DESIGN §4 (not dialplan.rating): started seconds, increments,
    connect fee, one half-up rounding to 6 places."""
    s = math.ceil(billmsec / 1000)
    if s <= 0:
        return 0, Decimal(0)
    billed = initial if s <= initial else initial + math.ceil((s - initial) / subsequent) * subsequent
    cost = Decimal(fee) + Decimal(rate) * billed / 60
    return billed, cost.quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)


@pytest.mark.parametrize("dialled, carrier, rate, fee, inc", [
    ("02079460123", "budgetel", "0.0090", "0", 60),     # UK fixed: budgetel cheapest
    ("+4930123456", "globex", "0.0100", "0", 6),         # Germany: globex cheapest
    ("+81312345678", "primo", "0.0500", "0", 1),         # Japan: only primo covers it
])
def test_call_routes_to_cheapest_carrier_and_is_rated(switch, world_url, dialled, carrier, rate, fee, inc):
    sim, daemon = switch
    call = sim.place_call(dialled, accountcode="acme", hold_seconds=95)
    assert call.wait(30) and call.result == "answered", (call.result, call.causes)
    row = _wait_cdr(daemon, world_url, call.uuid)
    assert row[0] == carrier and row[1] == carrier and row[2] == 1
    legs = rows(world_url, "SELECT billmsec, billed_seconds, cost, rate_per_min FROM call_legs "
                            "WHERE call_uuid = %s AND carrier = %s", call.uuid, carrier)
    assert len(legs) == 1
    billmsec, billed, cost, stored_rate = legs[0]
    assert billmsec == call.billmsec and billmsec >= 94_000
    assert (billed, cost) == _expected_cost(billmsec, rate, fee, inc, inc)
    assert row[3] == billed and row[4] == cost and stored_rate == Decimal(rate)


def test_failover_when_cheapest_fails_and_health_moves(switch, world_url):
    sim, daemon = switch
    sim.set_gateway("budgetel_gw1", GatewayBehaviour(fail_cause="NORMAL_TEMPORARY_FAILURE",
                                                     sip_status=503))
    call = sim.place_call("02079460555", accountcode="acme", hold_seconds=30)
    assert call.wait(30) and call.result == "answered"
    row = _wait_cdr(daemon, world_url, call.uuid)
    carrier, first, attempts = row[0], row[1], row[2]
    assert (carrier, first, attempts) == ("globex", "budgetel", 2)
    failed_leg = rows(world_url, "SELECT hangup_cause, sip_status, cost FROM call_legs "
                                  "WHERE call_uuid = %s AND carrier = 'budgetel'", call.uuid)
    assert failed_leg == [("NORMAL_TEMPORARY_FAILURE", 503, Decimal(0))]
    daemon.wait_until(lambda: rows(world_url, "SELECT health FROM carriers WHERE name = 'budgetel'")[0][0] == 95,
                      what="budgetel health 100 - 5 persisted")


def test_busy_callee_does_not_fail_over_or_blame_the_carrier(switch, world_url):
    sim, daemon = switch
    sim.set_gateway("budgetel_gw1", GatewayBehaviour(fail_cause="USER_BUSY", sip_status=486))
    call = sim.place_call("02079460777", accountcode="acme", hold_seconds=30)
    assert call.wait(30) and call.result == "failed"
    row = _wait_cdr(daemon, world_url, call.uuid)
    assert row[2] == 1 and row[0] == "budgetel" and row[5] is False and row[4] == 0
    # The live score, not the table (persisted every 2 s, so it reads 100 either way): the
    # daemon moves the gauge in the same handler, before it queues the CDR read above.
    assert _sample(daemon, "switchd_carrier_health", carrier="budgetel") in (None, 100.0)


@pytest.mark.parametrize("dialled, accountcode, code", [
    ("02079460123", "nobody", 403),          # unknown tenant
    ("09001234567", "acme", 403),            # UK premium rate: blocked prefix 44900
    ("12", "acme", 484),                     # not a number
    ("+61212345678", "acme", 404),           # Australia: no carrier covers it
])
def test_refusals_answer_the_right_sip_code(switch, world_url, dialled, accountcode, code):
    sim, daemon = switch
    call = sim.place_call(dialled, accountcode=accountcode, hold_seconds=10)
    assert call.wait(30)
    assert call.result == "refused", call.result
    decisions = daemon.wait_until(lambda: rows(
        world_url, "SELECT result, sip_code, reason FROM routing_decisions WHERE call_uuid = %s",
        call.uuid), what="routing decision row")
    assert decisions[0][0] == "refused" and decisions[0][1] == code, decisions
    # The refused call is still an outbound attempt: its CDR and switchd_calls_total say so
    # (the caller's A-leg is "inbound" to FreeSWITCH; that once labelled it inbound).
    row = _wait_cdr(daemon, world_url, call.uuid)
    assert row[7] == "outbound" and row[5] is False, row
    assert row[6] == (None if accountcode == "nobody" else "acme")
    assert metric(daemon, "switchd_calls_total", direction="outbound", result="failed") == 1
    assert metric(daemon, "switchd_calls_total", direction="inbound") == 0


def test_inbound_did_reaches_the_tenant_extension(switch, world_url):
    sim, daemon = switch
    call = sim.place_call("+442079460100", caller="+12125550199", hold_seconds=20)
    assert call.wait(30)
    # switchd transfers to 1000 in `default`, hands that lookup back (`not found`) and the
    # simulator's static extension answers it: the caller alone, no carrier leg.
    assert call.result == "answered" and call.legs == []
    assert [(d, c) for d, c, _ in call.lookups] == [("+442079460100", "public"), ("1000", "default")]
    assert dict(call.set_vars).get("route_source") == "static_extension"
    row = _wait_cdr(daemon, world_url, call.uuid)
    assert row[6] == "acme" and row[7] == "inbound"
    decision = rows(world_url, "SELECT result, reason FROM routing_decisions WHERE call_uuid = %s "
                    "ORDER BY created_at", call.uuid)
    assert decision == [("routed", "did"), ("routed", "did_extension_handoff")]


def test_live_calls_are_listed_and_metrics_move(switch, world_url):
    sim, daemon = switch
    call = sim.place_call("+4930123999", accountcode="acme", hold_seconds=600)
    # Tenant and limits reach the registry with the first event after the dialplan's `set`s.
    daemon.wait_until(lambda: any(c["call_uuid"] == call.uuid and c["tenant"]
                                  for c in daemon.get("/v1/calls")[1]["calls"]),
                      what="call listed by /v1/calls with its tenant")
    listed = next(c for c in daemon.get("/v1/calls")[1]["calls"] if c["call_uuid"] == call.uuid)
    assert listed["tenant"] == "acme" and listed["direction"] == "outbound"
    assert int(listed["max_duration"]) > 0
    sim.kill_call(call.uuid)
    assert call.wait(30)
    _wait_cdr(daemon, world_url, call.uuid)
    # Samples, not names: the HELP line names every metric before anything is counted.
    assert metric(daemon, "switchd_calls_total") >= 1
    assert metric(daemon, "switchd_routing_decision_seconds_count") >= 1
