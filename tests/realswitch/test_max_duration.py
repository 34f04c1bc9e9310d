"""Max duration on a call coming in to the switch: FreeSWITCH itself cuts it.

Tenant `brief` allows 3 s. FreeSWITCH's scheduler fires `sched_hangup +N` on whole seconds
(due at the truncated epoch second plus N, checked at least every 0.5 s), so the cut lands
in [N-1, N+0.5] s after the answer: assert that window, on FreeSWITCH's own billmsec."""
from __future__ import annotations

from daemon_harness import metric

from . import world
from .common import poll

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


GRACE_S = 1


def test_a_call_whose_scheduled_hangup_is_lost_is_cut_by_the_watchdog(realswitch, make_rs_daemon):
    """The switch's own cut is deleted from its scheduler (`sched_del`, as a reloaded or
    misbehaving switch would lose it): switchd's watchdog kills the call once it outlives
    max + grace, on FreeSWITCH's own clock."""
    daemon = make_rs_daemon(extra_env={"SWITCHD_WATCHDOG_GRACE_SECONDS": str(GRACE_S)})
    handle = realswitch.call_async(world.DESTINATIONS[0][0], tenant="brief", hold_ms=20_000)

    def answered_a_leg():
        return next((e["Unique-ID"] for e in realswitch.events("CHANNEL_ANSWER")
                     if e.get("Call-Direction") == "inbound"), None)
    a_leg = poll(answered_a_leg, 10, "the caller's leg answered")
    poll(lambda: a_leg in realswitch.api("show tasks"), 5, "the switch's scheduled hangup")
    assert realswitch.api(f"sched_del {a_leg}").startswith("+OK Deleted: 1")
    # the scheduler marks it destroyed at once; its task list forgets it on its next pass
    poll(lambda: a_leg not in realswitch.api("show tasks"), 5, "the hangup task gone")

    legs = realswitch.wait_call(handle.wait(), timeout=20)
    a = legs[0]
    assert a.uuid == a_leg and a.cause == "ALLOTTED_TIMEOUT", a
    # never before answer + max + grace; within the watchdog's 1 s round after it
    assert (MAX_S + GRACE_S - 0.2) * 1000 <= a.billmsec <= (MAX_S + GRACE_S + 1.5) * 1000, a
    assert metric(daemon.process, "switchd_watchdog_kills_total") == 1.0
    cdr = daemon.wait_cdr(a_leg)
    assert cdr["tenant"] == "brief" and cdr["hangup_cause"] == "ALLOTTED_TIMEOUT"
