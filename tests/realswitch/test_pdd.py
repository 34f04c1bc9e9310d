"""Ring-out and PDD on the real switch: a carrier that rings (180) and never answers ends at
leg_timeout as ALLOTTED_TIMEOUT, which switchd files as no answer (not a max-duration cut,
and no carrier failure); PDD is the time to that 180, not to an answer."""
from __future__ import annotations

import pytest

from . import world

pytestmark = pytest.mark.realswitch


def test_ring_out_is_no_answer_and_pdd_comes_from_progress(realswitch, rs_daemon):
    realswitch.carrier("gw_a").set_mode("ring")
    result = realswitch.call(world.US_NUMBER, hold_ms=500)
    assert result.code != 200
    legs = realswitch.wait_call(result, timeout=30)
    carrier_legs = legs[1:]
    # FreeSWITCH's own view: the first carrier leg rang out at leg_timeout.
    assert carrier_legs[0].gateway == "gw_a" and carrier_legs[0].cause == "ALLOTTED_TIMEOUT"
    assert carrier_legs[0].billmsec == 0
    # A ring-out is the callee's no-answer: not retried through the next carrier.
    assert [h.gateway for h in carrier_legs] == ["gw_a"]
    rs_daemon.wait_cdr(legs[0].uuid)
    (leg,) = rs_daemon.rows("SELECT hangup_cause, disposition, pdd_ms, progress_at IS NOT NULL, "
                            "EXTRACT(EPOCH FROM ended_at - started_at) FROM call_legs "
                            "WHERE call_uuid = %s AND carrier = 'alpha'", legs[0].uuid)
    cause, disposition, pdd_ms, progressed, rang_for = leg
    assert (cause, disposition, progressed) == ("ALLOTTED_TIMEOUT", "no_answer", True)
    assert pdd_ms is not None and pdd_ms < 1000 < rang_for * 1000
    (call,) = rs_daemon.rows("SELECT disposition, pdd_ms FROM calls WHERE call_uuid = %s",
                             legs[0].uuid)
    assert call == ("no_answer", pdd_ms)


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
