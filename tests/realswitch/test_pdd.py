"""Ring-out and PDD on the real switch: a carrier that rings (180) and never answers ends at
leg_timeout as ALLOTTED_TIMEOUT, which switchd files as no answer (not a max-duration cut,
and no carrier failure); PDD is the time to that 180, not to an answer."""
from __future__ import annotations

import pytest

from daemon_harness import metric

from . import world

pytestmark = pytest.mark.realswitch


def test_ring_out_is_no_answer_and_pdd_comes_from_progress(realswitch, rs_daemon):
    realswitch.carrier("gw_a").set_mode("ring")
    result = realswitch.call(world.US_NUMBER, hold_ms=500)
    legs = realswitch.wait_call(result, timeout=30)
    carrier_legs = legs[1:]
    # FreeSWITCH's own view: the first carrier leg rang out at leg_timeout.
    assert carrier_legs[0].gateway == "gw_a" and carrier_legs[0].cause == "ALLOTTED_TIMEOUT"
    assert carrier_legs[0].billmsec == 0
    # The failover table's `timeout` row (next): the next carrier answers the call.
    assert [h.gateway for h in carrier_legs] == ["gw_a", "gw_b"] and result.code == 200
    rs_daemon.wait_cdr(legs[0].uuid)
    (leg,) = rs_daemon.rows("SELECT hangup_cause, disposition, pdd_ms, progress_at IS NOT NULL, "
                            "EXTRACT(EPOCH FROM ended_at - started_at) FROM call_legs "
                            "WHERE call_uuid = %s AND carrier = 'alpha'", legs[0].uuid)
    cause, disposition, pdd_ms, progressed, rang_for = leg
    # Filed as the callee's no-answer (not a max-duration cut), PDD to the 180.
    assert (cause, disposition, progressed) == ("ALLOTTED_TIMEOUT", "no_answer", True)
    assert pdd_ms is not None and pdd_ms < 1000 < rang_for * 1000
    # ... and not charged to the carrier: alpha's live health gauge is untouched (a charge
    # would set it to 95; it is exported once a carrier's health has moved).
    status, text = rs_daemon.process.get("/metrics")
    assert status == 200
    assert 'switchd_carrier_health{carrier="alpha"} 95' not in text
    assert metric(rs_daemon.process, "switchd_carrier_health", carrier="alpha") in (0, 100)
    # FreeSWITCH's CDR may file the call first; ESL's record, the one with the call's
    # disposition, follows within the CDR writer's gather time.
    (call,) = rs_daemon.wait_until(lambda: rs_daemon.rows(
        "SELECT disposition, carrier FROM calls WHERE call_uuid = %s AND disposition IS NOT NULL",
        legs[0].uuid), what="ESL's record of the call")
    assert call == ("answered", "bravo")


def test_answered_call_pdd_and_disposition(realswitch, rs_daemon):
    result = realswitch.call(world.US_NUMBER, hold_ms=1000)
    assert result.code == 200
    legs = realswitch.wait_call(result)
    rs_daemon.wait_cdr(legs[0].uuid)
    (leg,) = rs_daemon.rows("SELECT disposition, pdd_ms, EXTRACT(EPOCH FROM answered_at - "
                            "started_at) * 1000 FROM call_legs WHERE call_uuid = %s "
                            "AND carrier = 'alpha'", legs[0].uuid)
    disposition, pdd_ms, to_answer_ms = leg
    assert disposition == "answered" and pdd_ms is not None and pdd_ms <= to_answer_ms + 1
