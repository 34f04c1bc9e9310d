"""A carrier that answers with an SDP FreeSWITCH cannot use, end to end on the simulator
(GatewayBehaviour.unusable_answer; the real switch: tests/realswitch/test_answer_then_fail.py).
The cheapest carrier for a London number (budgetel, given a connect fee here) answers and
is refused by the switch; the next (globex) carries the call. switchd bills budgetel its
connect fee (docs/rates.md), charges its health, and its money metric shows each carrier's
own share."""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import pytest

from daemon_harness import failover_steps, metric, rows
from switchd.admin.rates_import import import_rates
from switchd.sim import GatewayBehaviour

pytestmark = pytest.mark.slow

FEE = Decimal("0.001000")            # budgetel's 44 line: 0.0090/min + this, 60/60


def _globex(billsec: int) -> tuple[int, Decimal]:
    """globex's 44 line by hand: 0.0110/min + 0.0010 connect fee, 6/6."""
    billed = 0 if billsec <= 0 else 6 + -(-max(billsec - 6, 0) // 6) * 6
    cost = Decimal("0.0010") + Decimal("0.0110") * billed / 60
    return billed, cost.quantize(Decimal("0.000001"), ROUND_HALF_UP)


def test_a_refused_answer_pays_its_connect_fee_and_fails_over(world_url, start_switch,
                                                              tmp_path):
    deck = tmp_path / "budgetel.csv"
    deck.write_text("prefix,rate_per_min,connect_fee,initial_increment,subsequent_increment\n"
                    "44,0.0090,0.0010,60,60\n1,0.0060,0,60,60\n")
    import_rates(world_url, deck, "budgetel")
    sim, daemon = start_switch(world_url)
    sim.set_gateway("budgetel_gw1", GatewayBehaviour(unusable_answer=True))
    call = sim.place_call("02079460555", accountcode="acme", hold_seconds=20)
    assert call.wait(30) and call.result == "answered", (call.result, call.causes)
    assert [leg.gateway for leg in call.legs] == ["budgetel_gw1", "globex_gw1"]
    assert call.causes == ["INCOMPATIBLE_DESTINATION", "NORMAL_CLEARING"]
    refused, carried = call.legs
    # FreeSWITCH's billsec: end_epoch - answer_epoch, whole seconds
    billed, globex_cost = _globex(carried.hangup_us // 1_000_000 - carried.answered_us // 1_000_000)
    (total,) = daemon.wait_until(lambda: rows(
        world_url, "SELECT cost FROM calls WHERE call_uuid = %s AND ended_at IS NOT NULL",
        call.uuid), what="the call's CDR")
    legs = {r[0]: r[1:] for r in rows(
        world_url, "SELECT leg_uuid, carrier, answered_at IS NOT NULL, billed_seconds, cost, "
                   "unrated, disposition FROM call_legs WHERE call_uuid = %s", call.uuid)}
    assert legs[refused.uuid] == ("budgetel", False, 0, FEE, False, "carrier_failure")
    assert legs[carried.uuid] == ("globex", True, billed, globex_cost, False, "answered")
    assert total == (FEE + globex_cost,)
    assert metric(daemon, "switchd_cost_total", carrier="budgetel") == float(FEE)
    assert metric(daemon, "switchd_cost_total", carrier="globex") == float(globex_cost)
    step = failover_steps(daemon, world_url, call.uuid)
    assert step == [("failover: attempt 1 via budgetel/budgetel_gw1: INCOMPATIBLE_DESTINATION "
                     "-> unreachable: next",)]
    assert metric(daemon, "switchd_failovers_total", carrier="budgetel") == 1
