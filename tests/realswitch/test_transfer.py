"""Transfers of an answered call (an in-dialog REFER, a blind transfer), on a real
FreeSWITCH 1.10.12. FreeSWITCH accepts a REFER (202), hangs up the side that sent it and
sends the *other* side into the dialplan with the Refer-To number; mod_xml_curl then asks
switchd about that number, on that other side's channel, which is already answered.

- The carrier REFERs: the caller's channel comes back still carrying the answered
  attempt's variables (`originate_disposition` SUCCESS). That lookup is no failed attempt:
  switchd ends the call there (docs/routing.md §4a) rather than ring the callee again
  through the next carrier or place a call to the number the carrier chose.
- The caller REFERs (an agent transferring the callee): the carrier's leg asks, and
  switchd routes the number as a call of the same tenant. Its max duration starts at once
  (`sched_hangup`; an `execute_on_answer` would never run on a channel answered before)."""
from __future__ import annotations

import pytest

from daemon_harness import metric

from . import world
from .common import poll

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


def test_with_disable_transfer_a_carriers_refer_is_refused_and_the_call_talks_on(
        realswitch, make_rs_daemon):
    """The operator's other choice (docs/routing.md §4a): `disable-transfer` on the sofia
    profile. The profile then no longer allows REFER (sofia.c: NUTAG_ALLOW("REFER") only
    with MFLAG_REFER), so the SIP stack answers the carrier's REFER 405 Method Not Allowed
    before mod_sofia's own 403 could, and the call talks on to the caller's hang-up: no
    transfer, no second lookup, billed for all of its talk."""
    realswitch.set_profile_params({"disable-transfer": "true"})
    rs_daemon = make_rs_daemon()
    refer_to = f"sip:{TARGET}@127.0.0.1:{realswitch.plan.sip}"
    carrier = realswitch.carrier("gw_a")
    carrier.set_mode("refer", contact=refer_to)
    result = realswitch.call(world.US_NUMBER, headers={"X-Tenant": "acme"}, hold_ms=4000)
    assert result.code == 200 and result.ended_by == "caller", result
    assert carrier.responses("REFER") == [405]          # sent 1 s after the answer
    legs = realswitch.wait_call(result)
    a, (answered,) = legs[0], legs[1:]
    assert answered.gateway == "gw_a" and answered.cause == "NORMAL_CLEARING"
    assert "variable_transfer_destination" not in answered.headers
    assert a.headers["Caller-Destination-Number"] != TARGET
    assert answered.billsec >= 3, answered.billmsec     # the caller's 4 s, not the 1 s
    assert realswitch.invites() == {"gw_a": 1, "gw_b": 0, "gw_c": 0}
    cdr = rs_daemon.wait_cdr(a.uuid)
    assert (cdr["carrier"], cdr["attempts"], cdr["billed_seconds"]) == (
        "alpha", 1, answered.billsec)
    assert cdr["cost"] > 0
    assert rs_daemon.rows("SELECT result, reason FROM routing_decisions WHERE call_uuid = %s",
                          a.uuid) == [("routed", "lcr")]
    assert metric(rs_daemon.process, "switchd_dialplan_requests_total",
                  outcome="transfer_refused") in (None, 0)


def test_with_disable_transfer_a_callers_refer_is_refused_too(realswitch, make_rs_daemon):
    """The same setting refuses the callers' transfers on that profile (an agent's blind
    transfer): 405, and the call goes on on its first carrier, nothing routed again."""
    realswitch.set_profile_params({"disable-transfer": "true"})
    rs_daemon = make_rs_daemon()
    result = realswitch.call(world.US_NUMBER, tenant="acme", hold_ms=1500,
                             refer_to="+33142685300")
    assert (result.code, result.refer_answer, result.ended_by) == (200, 405, "caller"), result
    legs = realswitch.wait_call(result)
    a, (answered,) = legs[0], legs[1:]
    assert answered.gateway == "gw_a" and answered.billsec >= 2, answered.billmsec
    assert realswitch.invites() == {"gw_a": 1, "gw_b": 0, "gw_c": 0}
    cdr = rs_daemon.wait_cdr(a.uuid)
    assert (cdr["carrier"], cdr["billed_seconds"]) == ("alpha", answered.billsec)
    assert rs_daemon.rows("SELECT count(*) FROM routing_decisions") == [(1,)]


def test_a_callers_blind_transfer_is_routed_and_cut_at_the_tenants_max_duration(
        realswitch, rs_daemon):
    """Tenant `brief` (max_call_seconds 3): the caller answered on alpha transfers the
    callee to a French number after 1 s. The callee's leg is routed to bravo, the
    cheapest for France, and the transferred call is cut 3 s after the transfer."""
    france = "+33142685300"
    result = realswitch.call(world.US_NUMBER, tenant="brief", hold_ms=1000, refer_to=france)
    assert result.code == 200 and result.ended_by == "switch", result   # the referrer's BYE
    assert result.refer_answer == 202
    hangups = poll(lambda: (lambda h: h if len(h) == 3 else None)(realswitch.hangups()), 20,
                   "the caller's, the callee's and the transfer's hangups")
    a, callee, target = sorted(hangups, key=lambda h: int(h.headers["Caller-Channel-Created-Time"]))
    assert (a.direction, callee.gateway, target.gateway) == ("inbound", "gw_a", "gw_b")
    assert f"bl_xfer:{france}/" in callee.headers["variable_transfer_source"]
    assert target.headers["Caller-Destination-Number"] == france
    # FreeSWITCH's own clock: the callee's leg ends ALLOTTED_TIMEOUT 3 s after switchd
    # answered the transfer's lookup (just before the transfer's leg was created), the
    # transfer's leg with it. sched_hangup counts whole epoch seconds, so the cut lands in
    # [N-1, N+0.5] s (as in test_max_duration.py).
    routed_us = int(target.headers["Caller-Channel-Created-Time"])
    cut_us = int(callee.headers["Caller-Channel-Hangup-Time"])
    assert callee.cause == "ALLOTTED_TIMEOUT"
    assert 2.0e6 <= cut_us - routed_us <= 3.5e6, cut_us - routed_us
    assert target.billmsec <= 3500
    assert realswitch.invites() == {"gw_a": 1, "gw_b": 1, "gw_c": 0}
    poll(lambda: realswitch.channel_count() == 0, 10, "no channel left on the switch")
    # switchd: the transfer routed for the same tenant, and both calls billed
    (row,) = rs_daemon.wait_until(lambda: rs_daemon.rows(
        "SELECT tenant, result, reason FROM routing_decisions WHERE call_uuid = %s",
        callee.uuid) or None, what="the transfer's routing decision")
    assert row == ("brief", "routed", "lcr")
    # two calls, each billed by its own carrier leg: the first (alpha, the callee's leg to
    # its end) and the transfer (keyed by the callee's leg, bravo), both the tenant's
    first = rs_daemon.wait_cdr(a.uuid)
    transfer = rs_daemon.wait_cdr(callee.uuid)
    assert (first["tenant"], first["carrier"], first["attempts"]) == ("brief", "alpha", 1)
    assert (transfer["tenant"], transfer["carrier"], transfer["attempts"]) == ("brief", "bravo", 1)
    legs = dict(rs_daemon.rows("SELECT leg_uuid, call_uuid FROM call_legs WHERE leg_uuid IN "
                               "(%s, %s)", callee.uuid, target.uuid))
    assert legs == {callee.uuid: a.uuid, target.uuid: callee.uuid}
    assert transfer["cost"] > 0 and first["cost"] > 0


def test_a_callers_transfer_holds_its_own_caps_slots(realswitch, make_rs_daemon):
    """alpha and bravo may carry one channel each, acme three calls. While a transfer is up
    (the callee's leg on alpha, the transfer's leg on bravo) both carriers are full: a new
    call to the US goes to charlie. Once everything has ended, every slot is free again:
    three calls at once are admitted."""
    from .test_caps import _capped
    rs = make_rs_daemon(world_toml=_capped(3, alpha=1, bravo=1))
    first = realswitch.call_async(world.US_NUMBER, tenant="acme", hold_ms=1000,
                                  refer_to="+33142685300")
    poll(lambda: realswitch.invites()["gw_b"] == 1 or None, 20, "the transfer dialled on gw_b")
    # The transfer is the tenant's call from its routing on (not from the callee's leg's
    # hangup, the first event FreeSWITCH sends with its variables): listed with its
    # tenant and its limit while it is up.
    transfer = rs.wait_until(lambda: [c for c in rs.process.get("/v1/calls")[1]["calls"]
                                      if c["carrier"] == "bravo"] or None,
                             what="the transfer's call, answered on bravo")
    assert [(c["tenant"], c["max_duration"]) for c in transfer] == [("acme", 3600)], transfer
    second = realswitch.call(world.US_NUMBER, tenant="acme", hold_ms=500)
    assert second.answered, second
    assert realswitch.invites() == {"gw_a": 1, "gw_b": 1, "gw_c": 1}     # alpha, bravo full
    first.wait()
    realswitch.api("hupall NORMAL_CLEARING")
    poll(lambda: realswitch.channel_count() == 0 or None, 20, "every channel down")
    rs.wait_until(lambda: rs.process.get("/v1/calls")[1].get("calls") == [] or None,
                  what="no live call in switchd")
    rs.wait_until(lambda: rs.rows("SELECT count(*) FROM calls WHERE ended_at IS NOT NULL")
                  == [(3,)] or None, what="the three calls' CDRs")
    results = [h.wait() for h in [realswitch.call_async(world.US_NUMBER, tenant="acme",
                                                         hold_ms=1500) for _ in range(3)]]
    assert [r.code for r in results] == [200, 200, 200], results
