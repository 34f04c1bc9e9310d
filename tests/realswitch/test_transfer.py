"""A carrier that transfers an answered call (an in-dialog REFER), on a real FreeSWITCH
1.10.12. FreeSWITCH accepts the REFER (202) and blind-transfers the *caller* into the
dialplan with the Refer-To number (`transfer_source` `bl_xfer:19005550100/public/XML`),
hanging up the carrier's leg; mod_xml_curl then asks switchd about that number, on the
caller's channel, which still carries the answered attempt's variables
(`originate_disposition` SUCCESS). That lookup is no failed attempt: switchd ends the
call there (docs/routing.md §4a) rather than ring the callee again through the next
carrier or place a call to the number the carrier chose."""
from __future__ import annotations

import pytest

from daemon_harness import metric

from . import world

pytestmark = pytest.mark.realswitch

TARGET = "19005550100"


def test_a_carriers_transfer_of_an_answered_call_ends_the_call(realswitch, rs_daemon):
    refer_to = f"sip:{TARGET}@127.0.0.1:{realswitch.plan.sip}"
    realswitch.carrier("gw_a").set_mode("refer", contact=refer_to)
    result = realswitch.call(world.US_NUMBER, headers={"X-Tenant": "acme"}, hold_ms=8000)
    assert result.code == 200 and result.ended_by != "caller", result   # switchd ended it
    legs = realswitch.wait_call(result)
    a, carriers = legs[0], legs[1:]
    # what FreeSWITCH did: the carrier's leg answered, then hung up by the transfer; the
    # caller transferred to the carrier's number, then hung up by switchd's answer
    assert [leg.gateway for leg in carriers] == ["gw_a"]
    (answered,) = carriers
    assert answered.billmsec > 0 and answered.cause == "NORMAL_CLEARING"
    assert answered.headers["variable_transfer_destination"] == f"blind:{TARGET}"
    assert a.headers["Caller-Destination-Number"] == TARGET
    assert a.cause == "NORMAL_CLEARING"
    assert realswitch.invites() == {"gw_a": 1, "gw_b": 0, "gw_c": 0}   # nobody rung again
    # switchd: one answered call on alpha, billed; the transfer refused in the routing log
    cdr = rs_daemon.wait_cdr(a.uuid)
    assert (cdr["carrier"], cdr["attempts"]) == ("alpha", 1)
    assert cdr["answered_at"] is not None and cdr["cost"] > 0
    steps = rs_daemon.wait_until(lambda: (lambda r: r if len(r) == 2 else None)(rs_daemon.rows(
        "SELECT result, reason FROM routing_decisions WHERE call_uuid = %s ORDER BY created_at",
        a.uuid)), what="both routing-log rows")
    assert steps[0] == ("routed", "lcr")
    assert steps[1] == ("refused", f"transferred after answer: alpha/gw_a answered; the "
                                   f"transfer to {TARGET} is not followed")
    assert metric(rs_daemon.process, "switchd_failovers_total", carrier="alpha") == 0
    assert rs_daemon.rows("SELECT health FROM carriers WHERE name = 'alpha'") == [(100,)]
