"""Failover by the carrier's answer, end to end on the simulator: every row of the default
table (docs/routing.md §4a). The cheapest carrier for a London number (budgetel_gw1) fails
the way a real carrier would; the next attempt comes back to switchd as a new lookup after
the `transfer`, exactly as FreeSWITCH 1.10.12 does it, and switchd answers the next
carrier's bridge (globex_gw1) or the caller's code. Health moves only for carrier-side
failures; the routing log shows each step."""
from __future__ import annotations

import pytest

from daemon_harness import metric, rows
from switchd.sim import GatewayBehaviour

FIRST, NEXT = "budgetel_gw1", "globex_gw1"

# (cause, SIP status the carrier answered, or None) -> table key, charged to the carrier?
NEXT_ROWS = [
    ("NORMAL_TEMPORARY_FAILURE", 500, "5xx", True),
    ("NORMAL_TEMPORARY_FAILURE", 503, "5xx", True),
    ("NETWORK_OUT_OF_ORDER", 502, "5xx", True),
    ("RECOVERY_ON_TIMER_EXPIRE", 408, "408", True),
    ("CALL_REJECTED", 403, "403", True),
    ("CALL_REJECTED", 401, "401", True),
    ("CALL_REJECTED", 407, "407", True),
    ("NO_USER_RESPONSE", 480, "480", True),
    ("ALLOTTED_TIMEOUT", None, "timeout", False),        # ring-out at leg_timeout
    # `unreachable` (no SIP answer, a carrier-side cause) is not played by the simulator
    # (its carriers answer the SIP code sofia maps a cause back to); see the unit tests.
    ("GATEWAY_DOWN", None, "not_sent", False),           # nothing sent, nothing answered
]
STOP_ROWS = [
    ("USER_BUSY", 486), ("USER_BUSY", 600), ("CALL_REJECTED", 603),
    ("UNALLOCATED_NUMBER", 404), ("INVALID_NUMBER_FORMAT", 484), ("ORIGINATOR_CANCEL", 487),
]


def _cdr(daemon, url, call_uuid):
    return daemon.wait_until(lambda: rows(
        url, "SELECT carrier, first_choice_carrier, attempts, answered_at IS NOT NULL "
             "FROM calls WHERE call_uuid = %s", call_uuid), what=f"CDR of {call_uuid}")[0]


def _decisions(url, call_uuid):
    return rows(url, "SELECT result, reason, sip_code FROM routing_decisions "
                     "WHERE call_uuid = %s", call_uuid)


@pytest.mark.slow
@pytest.mark.parametrize("cause, sip, key, charged", NEXT_ROWS)
def test_carrier_side_rows_go_to_the_next_carrier(switch, world_url, cause, sip, key, charged):
    sim, daemon = switch
    sim.set_gateway(FIRST, GatewayBehaviour(fail_cause=cause, sip_status=sip))
    call = sim.place_call("02079460555", accountcode="acme", hold_seconds=20)
    assert call.wait(30) and call.result == "answered", (call.result, call.causes)
    assert [leg.gateway for leg in call.legs] == [FIRST, NEXT]
    carrier, first, attempts, answered = _cdr(daemon, world_url, call.uuid)
    assert (carrier, first, attempts, answered) == ("globex", "budgetel", 2, True)
    steps = daemon.wait_until(lambda: [d for d in _decisions(world_url, call.uuid)
                                       if d[1].startswith("failover")] or None,
                              what="the failover step in the routing log")
    assert steps[0][0] == "routed" and f"-> {key}: next" in steps[0][1], steps
    # the CDR is written after the leg's outcome reached the health book
    assert metric(daemon, "switchd_failovers_total", carrier="budgetel") == (1 if charged else 0)


@pytest.mark.slow
def test_a_bridge_leg_the_switch_throttled_goes_to_the_same_carrier_a_second_later(
        switch, world_url):
    """FreeSWITCH's sessions-per-second throttle refuses the carrier leg's session (the
    caller's own started): no channel, DESTINATION_OUT_OF_ORDER. The cheapest carrier
    gets the call once more after a pause, not the next one at once."""
    sim, daemon = switch
    sim.refuse_sessions(1, skip=1)
    call = sim.place_call("02079460555", accountcode="acme", hold_seconds=20)
    assert call.wait(30) and call.result == "answered", (call.result, call.causes)
    assert sim.throttled == 1
    assert [leg.gateway for leg in call.legs] == [FIRST]     # the refused leg made none
    carrier, first, attempts, answered = _cdr(daemon, world_url, call.uuid)
    assert (carrier, first, attempts, answered) == ("budgetel", "budgetel", 1, True)
    step = daemon.wait_until(lambda: [d for d in _decisions(world_url, call.uuid)
                                      if d[1].startswith("failover")] or None,
                             what="the failover step in the routing log")
    assert "-> not_sent: next; our switch failed the leg: budgetel/budgetel_gw1 once more" \
        in step[0][1], step
    assert metric(daemon, "switchd_switch_refused_legs_total", path="dialplan") == 1
    assert metric(daemon, "switchd_failovers_total", carrier="budgetel") == 0


@pytest.mark.slow
def test_a_leg_our_switch_fails_twice_goes_to_the_next_carrier(switch, world_url):
    """DESTINATION_OUT_OF_ORDER without a SIP answer every time on the cheapest gateway
    (sofia cannot place it): once more there, then the next carrier; nobody is charged."""
    sim, daemon = switch
    sim.set_gateway(FIRST, GatewayBehaviour(fail_cause="DESTINATION_OUT_OF_ORDER"))
    call = sim.place_call("02079460556", accountcode="acme", hold_seconds=20)
    assert call.wait(30) and call.result == "answered", (call.result, call.causes)
    assert [leg.gateway for leg in call.legs] == [FIRST, FIRST, NEXT]
    carrier, first, attempts, answered = _cdr(daemon, world_url, call.uuid)
    assert (carrier, first, attempts, answered) == ("globex", "budgetel", 3, True)
    assert metric(daemon, "switchd_failovers_total", carrier="budgetel") == 0


@pytest.mark.slow
@pytest.mark.parametrize("cause, sip", STOP_ROWS)
def test_callee_rows_stop_and_the_caller_hears_the_code(switch, world_url, cause, sip):
    sim, daemon = switch
    sim.set_gateway(FIRST, GatewayBehaviour(fail_cause=cause, sip_status=sip))
    call = sim.place_call("02079460777", accountcode="acme", hold_seconds=20)
    assert call.wait(30) and call.result != "answered"
    assert [leg.gateway for leg in call.legs] == [FIRST]        # nobody else was rung
    assert call.route.respond[0] == sip                          # what the caller heard
    carrier, first, attempts, answered = _cdr(daemon, world_url, call.uuid)
    assert (carrier, attempts, answered) == ("budgetel", 1, False)
    stop = daemon.wait_until(lambda: [d for d in _decisions(world_url, call.uuid)
                                      if d[1].startswith("failover stop")] or None,
                             what="the stop step in the routing log")
    assert stop[0][0] == "refused" and stop[0][2] == sip
    assert metric(daemon, "switchd_failovers_total", carrier="budgetel") == 0


@pytest.mark.slow
def test_every_carrier_failing_ends_with_the_last_code(switch, world_url):
    sim, daemon = switch
    for gateway in ("budgetel_gw1", "globex_gw1", "globex_gw2", "primo_gw1"):
        sim.set_gateway(gateway, GatewayBehaviour(fail_cause="NORMAL_TEMPORARY_FAILURE",
                                                  sip_status=503))
    call = sim.place_call("02079460888", accountcode="acme", hold_seconds=20)
    assert call.wait(30) and call.result != "answered"
    assert [leg.gateway for leg in call.legs] == ["budgetel_gw1", "globex_gw1", "globex_gw2",
                                                  "primo_gw1"]
    assert call.route.respond[0] == 503
    assert _cdr(daemon, world_url, call.uuid)[2] == 4
    last = daemon.wait_until(lambda: [d for d in _decisions(world_url, call.uuid)
                                      if d[1].startswith("failover exhausted")] or None,
                             what="the exhausted step")
    assert last[0][2] == 503


@pytest.mark.slow
def test_a_ring_out_at_leg_timeout_moves_on_without_blame(switch, world_url):
    """budgetel rings past its gateway's leg_timeout (20 s): FreeSWITCH ends the leg
    ALLOTTED_TIMEOUT and the continuation tries globex; the callee not answering is not
    budgetel's failure."""
    sim, daemon = switch
    sim.set_gateway(FIRST, GatewayBehaviour(answer_delay_s=120))
    call = sim.place_call("02079460556", accountcode="acme", hold_seconds=20)
    assert call.wait(30) and call.result == "answered"
    assert [(leg.gateway, leg.cause) for leg in call.legs][0] == (FIRST, "ALLOTTED_TIMEOUT")
    assert _cdr(daemon, world_url, call.uuid)[:3] == ("globex", "budgetel", 2)
    assert metric(daemon, "switchd_failovers_total", carrier="budgetel") == 0


@pytest.mark.slow
@pytest.mark.parametrize("name, number, clean_name, clean_number", [
    ('Bad \\"q\\" <x>', "+441234567890", "Bad q x", "+441234567890"),   # was DESTINATION_OUT_OF_ORDER
    ("x${uuid}", "12${uuid}34", "xuuid", "anonymous"),                      # was sofia's 900
    ("a%0Ab", "1001", "a b", "1001"),
    ("A" * 300, "1001", "A" * 48, "1001"),
])
def test_hostile_caller_ids_route_with_a_clean_caller_id(switch, world_url, name, number,
                                                         clean_name, clean_number):
    """Unsanitised, the simulator fails these legs as sofia does (docs/simulator.md)."""
    sim, daemon = switch
    call = sim.place_call("02079460999", caller=number, caller_name=name, accountcode="acme",
                          hold_seconds=20)
    assert call.wait(30) and call.result == "answered", (call.result, call.causes)
    assert [leg.gateway for leg in call.legs] == [FIRST]
    sent = dict(call.route.set_vars)
    assert sent["effective_caller_id_name"] == clean_name
    assert sent["effective_caller_id_number"] == clean_number
    assert _cdr(daemon, world_url, call.uuid)[2] == 1
    assert metric(daemon, "switchd_failovers_total") == 0
