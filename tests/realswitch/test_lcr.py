"""LCR on the switch: each destination reaches its cheapest carrier (counted at the carrier),
a carrier's 503 moves the call on to the next one, and the CDR's cost is the one computed by
hand from what FreeSWITCH measured (its billsec) and the deck (docs/rates.md, Rating a leg)."""
from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal

import pytest

from . import world


def expected_cost(billsec: int, rate: str, fee: str, initial: int, subsequent: int):
    """Independent oracle: FreeSWITCH's billsec, increments, connect fee, one half-up
    rounding."""
    s = billsec
    if s <= 0:     # answered: the connect fee is due whatever the talk time (docs/rates.md)
        return 0, Decimal(fee).quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)
    billed = initial if s <= initial else initial + math.ceil((s - initial) / subsequent) * subsequent
    cost = Decimal(fee) + Decimal(rate) * billed / 60
    return billed, cost.quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)


@pytest.mark.parametrize("dialled, carrier, prefix", world.DESTINATIONS,
                         ids=[d[1] for d in world.DESTINATIONS])
def test_each_destination_reaches_its_cheapest_carrier_and_is_rated(backend, dialled, carrier, prefix):
    gateway = world.GATEWAY_OF[carrier]
    out = backend.call(dialled, hold_s=1.5)
    assert out.answered, out
    # the switch's own view: one INVITE, at the cheapest carrier only
    assert backend.invites() == {gw: int(gw == gateway) for gw in ("gw_a", "gw_b", "gw_c")}
    assert [(leg.gateway, leg.cause) for leg in out.legs] == [(gateway, "NORMAL_CLEARING")]
    billmsec = out.legs[0].billmsec
    assert 1400 <= billmsec <= 3000, billmsec      # the caller held 1.5 s after the answer
    billsec = out.legs[0].billsec
    assert billsec in (billmsec // 1000, billmsec // 1000 + 1), (billsec, billmsec)
    billed, cost = expected_cost(billsec, *world.rate_of(carrier, prefix))
    cdr = backend.rs.wait_cdr(out.call_uuid)
    assert (cdr["carrier"], cdr["gateway"], cdr["attempts"]) == (carrier, gateway, 1)
    assert (cdr["billed_seconds"], cdr["cost"]) == (billed, cost)
    legs = backend.rs.rows("SELECT billmsec, billed_seconds, cost FROM call_legs "
                           "WHERE call_uuid = %s AND carrier = %s", out.call_uuid, carrier)
    assert legs == [(billmsec, billed, cost)]


@pytest.mark.parametrize("code", ["503", "403"])     # 403: CALL_REJECTED, like a 603 decline
def test_carrier_failure_fails_over_to_the_next_carrier(backend, code):
    backend.set_carrier("gw_a", code)
    out = backend.call(world.US_NUMBER, hold_s=1.0)
    assert out.answered, out
    assert backend.invites() == {"gw_a": 1, "gw_b": 1, "gw_c": 0}
    assert [(leg.gateway, leg.sip_status) for leg in out.legs][:1] == [("gw_a", int(code))]
    assert [leg.gateway for leg in out.legs] == ["gw_a", "gw_b"]
    cdr = backend.rs.wait_cdr(out.call_uuid)
    assert (cdr["carrier"], cdr["first_choice_carrier"], cdr["attempts"]) == ("bravo", "alpha", 2)
