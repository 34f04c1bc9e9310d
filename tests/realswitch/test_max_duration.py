"""Max duration on a call coming in to the switch: FreeSWITCH itself cuts it.

Tenant `brief` allows 3 s. FreeSWITCH's scheduler fires `sched_hangup +N` on whole seconds
(due at the truncated epoch second plus N, checked at least every 0.5 s), so the cut lands
in [N-1, N+0.5] s after the answer: assert that window, on FreeSWITCH's own billmsec."""
from __future__ import annotations

from . import world

MAX_S = 3


def test_inbound_call_is_cut_at_the_tenants_max_duration(backend):
    out = backend.call(world.DESTINATIONS[0][0], tenant="brief", hold_s=10)
    assert out.answered, out
    assert out.a_cause == "ALLOTTED_TIMEOUT", out
    assert (MAX_S - 1) * 1000 <= out.a_billmsec <= (MAX_S + 0.5) * 1000, out.a_billmsec
    assert [leg.gateway for leg in out.legs] == ["gw_a"]
    assert (MAX_S - 1) * 1000 <= out.legs[0].billmsec <= (MAX_S + 0.5) * 1000, out.legs
    if backend.name == "real":     # the caller heard the switch hang up, in the same window
        caller = out.caller
        assert caller.ended_by == "switch" and "ALLOTTED_TIMEOUT" in caller.bye_reason, caller
        assert MAX_S - 1 <= caller.duration <= MAX_S + 0.5 + 0.2, caller   # + loopback latency
    cdr = backend.rs.wait_cdr(out.call_uuid)
    assert cdr["tenant"] == "brief" and cdr["carrier"] == "alpha"
