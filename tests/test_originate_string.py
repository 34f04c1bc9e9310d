"""The originate line of one attempt, and the decision to place the next (no I/O)."""
from __future__ import annotations

import pytest

from dialplan.xml_answer import BridgeLeg
from switchd.calls.originate import originate_string, should_try_next


def test_origination_uuid_is_per_leg_never_call_wide():
    leg = BridgeLeg("gw_b", "+442079460999", {"switchd_carrier": "b", "leg_timeout": 20})
    line = originate_string("0b6f1c1e-0000-4000-8000-000000000002", {"switchd_tenant": "acme"},
                            leg, "&park()", 60, 30)
    head, _, rest = line.partition("}")
    assert "origination_uuid" not in head
    assert rest.startswith("[origination_uuid=0b6f1c1e-0000-4000-8000-000000000002,")
    assert rest.endswith("]sofia/gateway/gw_b/+442079460999 &park()")
    assert "|" not in line and "execute_on_answer='sched_hangup +60 ALLOTTED_TIMEOUT'" in head


@pytest.mark.parametrize("cause,sip,go_on", [
    ("CALL_REJECTED", 403, True), ("CALL_REJECTED", 603, False), ("USER_BUSY", 486, False),
    ("NORMAL_TEMPORARY_FAILURE", 503, True), ("NO_USER_RESPONSE", 408, True),
    ("UNALLOCATED_NUMBER", 404, False), ("ORIGINATOR_CANCEL", 487, False),
    ("GATEWAY_DOWN", None, True)])
def test_should_try_next(cause, sip, go_on):
    assert should_try_next(cause, sip) is go_on


def test_should_try_next_follows_the_operators_failover_rows():
    from dialplan.failover import parse_table
    assert should_try_next("CALL_REJECTED", 403, parse_table({"403": "stop"})) is False
    assert should_try_next("USER_BUSY", 486, parse_table({"486": "next"})) is True
