"""Faults on the real switch: switchd killed, ESL lost, and FreeSWITCH enforcing the max
duration of an originated call on its own.

After each fault switchd's registry (GET /v1/calls), its caps and the switch must agree, and
every call FreeSWITCH carried must have exactly one `calls` row, rated by hand from
FreeSWITCH's own billsec (its CHANNEL_HANGUP_COMPLETE) with test_lcr.py's oracle.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
from decimal import Decimal

import pytest

from . import world
from .backends import RsDaemon
from .common import poll
from .test_lcr import expected_cost

pytestmark = pytest.mark.realswitch

FRANCE = "+33142685300"        # bravo (gw_b): 0.0100/min + 0.0050 connect fee, 6/6
MAX_S = 3                      # tenant `brief`


def _live(rs) -> list[dict]:
    status, body = rs.process.get("/v1/calls")
    return body.get("calls", []) if status == 200 and isinstance(body, dict) else []


def _assert_one_rated_cdr(rs, switch, result, carrier="bravo", prefix="33"):
    """The call FreeSWITCH carried has one `calls` row, rated from its carrier leg's billsec."""
    a, b = switch.wait_call(result)
    assert b.gateway == world.GATEWAY_OF[carrier], b
    rate, fee, initial, subsequent = world.rate_of(carrier, prefix)
    billed, cost = expected_cost(b.billsec, rate, fee, initial, subsequent)
    if b.billsec == 0 and b.billmsec > 0:       # answered for under a second: docs/rates.md,
        billed, cost = 0, Decimal(fee).quantize(Decimal("0.000001"))   # the connect fee only
    rs.wait_until(lambda: rs.rows("SELECT 1 FROM calls WHERE call_uuid = %s AND ended_at IS NOT "
                                  "NULL AND cdr_source = 'switch'", a.uuid),
                  what=f"the switch-settled CDR of {a.uuid}")
    assert rs.rows("SELECT count(*) FROM calls WHERE call_uuid = %s", a.uuid) == [(1,)]
    cdr = rs.cdr(a.uuid)
    assert (cdr["carrier"], cdr["billed_seconds"], cdr["cost"]) == (carrier, billed, cost), \
        (cdr, b.billsec)
    return a, b, cdr


def test_switchd_sigkilled_with_calls_up_adopts_them_and_bills_each_once(
        realswitch, make_rs_daemon, rs_world_url, tmp_path):
    # started by hand, not by make_rs_daemon: that one must exit 0 on SIGTERM at teardown
    rs = RsDaemon.start(realswitch, rs_world_url, tmp_path / "killed", None, True)
    try:
        handles = [realswitch.call_async(FRANCE, tenant="acme", hold_ms=hold)
                   for hold in (6000, 7000, 8000)]
        rs.wait_until(lambda: len([c for c in _live(rs) if c["state"] == "answered"]) == 3,
                      what="three calls answered in switchd")
    finally:
        rs.process.kill()                       # SIGKILL: no goodbye, registry lost
    assert rs.process.proc.returncode == -9
    # FreeSWITCH carries on: 3 A-legs + 3 carrier legs (`show channels` reads the switch's
    # core db, written behind the calls: poll it)
    poll(lambda: realswitch.channel_count() == 6, 10, "six channels up on the switch")
    rs2 = make_rs_daemon()                      # resync on connect adopts the live calls
    adopted = rs2.wait_until(lambda: (lambda c: len(c) == 3 and c)(_live(rs2)),
                             what="the three live calls adopted")
    results = [h.wait() for h in handles]
    assert all(r.answered and r.ended_by == "caller" for r in results), results
    a_uuids = set()
    for result in results:
        a, b, cdr = _assert_one_rated_cdr(rs2, realswitch, result)
        a_uuids.add(a.uuid)
        print(f"\nadopted call {a.uuid}: billsec={b.billsec} -> {cdr['billed_seconds']}s, "
              f"{cdr['cost']}")
    assert {c["call_uuid"] for c in adopted} == a_uuids
    rs2.wait_until(lambda: _live(rs2) == [] and realswitch.channel_count() == 0 or None,
                   what="no call live in switchd nor on the switch")


def _originate_brief(realswitch, rs):
    """An originated call for tenant `brief` (3 s), left up by the carrier: FreeSWITCH's own
    hangup of the leg, and switchd's one `calls` row for it once the switch's CDR is in."""
    status, body = rs.originate({"tenant": "brief", "destination": world.US_NUMBER})
    assert status == 200 and body["answered"] is True, body
    assert [a["gateway"] for a in body["attempts"]] == ["gw_a"]
    leg_uuid = body["call_uuid"]
    (leg,) = poll(lambda: [h for h in realswitch.hangups() if h.uuid == leg_uuid], 15,
                  "FreeSWITCH to hang the originated leg up")
    rs.wait_until(lambda: rs.rows(
        "SELECT 1 FROM calls WHERE call_uuid = %s AND cdr_source = 'switch'", leg_uuid),
        what="the switch's CDR of the originated call")
    assert rs.rows("SELECT count(*) FROM calls WHERE call_uuid = %s", leg_uuid) == [(1,)]
    return leg, rs.cdr(leg_uuid)


def test_originated_call_is_cut_by_the_switch_at_the_tenants_max(realswitch, rs_daemon):
    leg, cdr = _originate_brief(realswitch, rs_daemon)
    assert (leg.cause, leg.gateway) == ("ALLOTTED_TIMEOUT", "gw_a"), leg
    assert (MAX_S - 1) * 1000 <= leg.billmsec <= (MAX_S + 0.5) * 1000, leg.billmsec
    assert (cdr["tenant"], cdr["carrier"], cdr["hangup_cause"]) == \
        ("brief", "alpha", "ALLOTTED_TIMEOUT"), cdr
    rs_daemon.wait_until(lambda: _live(rs_daemon) == [] or None, what="no live call")
    print(f"\noriginated call cut by FreeSWITCH: {leg.cause} billmsec={leg.billmsec} "
          f"billsec={leg.billsec}")


def test_originated_call_cut_at_max_is_rated_from_the_switchs_billsec(realswitch, rs_daemon):
    leg, cdr = _originate_brief(realswitch, rs_daemon)
    assert leg.cause == "ALLOTTED_TIMEOUT" and leg.billsec > 0, leg
    billed, cost = expected_cost(leg.billsec, *world.rate_of("alpha", "1"))
    assert (cdr["billed_seconds"], cdr["cost"]) == (billed, cost), (cdr, leg.billsec)


def _esl_sockets(pid: int, esl_port: int) -> list[str]:
    """The local ports of `pid`'s TCP connections to the switch's ESL port."""
    out = subprocess.run(["ss", "-Htnp", "state", "established", "dport", f"= :{esl_port}"],
                         capture_output=True, text=True, check=True).stdout
    return [re.search(r":(\d+)\s+\S+:%d" % esl_port, line).group(1)
            for line in out.splitlines() if f"pid={pid}," in line]


def test_esl_cut_with_calls_up_every_call_one_rated_cdr_no_slot_left(realswitch, rs_daemon):
    """switchd's ESL connection is aborted by the kernel (`ss -K`) while it is frozen
    (SIGSTOP), and one call is hung up on the switch (uuid_kill) before it runs again: switchd reconnects,
    resyncs, and every call still ends with one CDR rated from FreeSWITCH's billsec."""
    handles = [realswitch.call_async(FRANCE, tenant="acme", hold_ms=hold)
               for hold in (15_000, 8000)]
    live = rs_daemon.wait_until(lambda: (lambda c: len(c) == 2 and c)(
        [c for c in _live(rs_daemon) if c["state"] == "answered" and c["age_s"] >= 1.5]),
        what="two calls answered and talking")
    pid, esl = rs_daemon.process.proc.pid, realswitch.plan.esl
    [port] = _esl_sockets(pid, esl)
    os.kill(pid, signal.SIGSTOP)
    try:
        cut = subprocess.run(["ss", "-K", "-Htn", "sport", f"= :{port}", "dport", f"= :{esl}"],
                             capture_output=True, text=True)
        assert cut.returncode == 0, cut.stderr
        # the call ends on the switch while switchd has no ESL
        gone = next(c["call_uuid"] for c in live
                    if realswitch.api(f"uuid_exists {c['call_uuid']}").strip() == "true")
        assert realswitch.api(f"uuid_kill {gone}").startswith("+OK")
        # no waiting for its HANGUP_COMPLETE here: mod_json_cdr posts to the frozen daemon first
    finally:
        os.kill(pid, signal.SIGCONT)
    poll(lambda: [h for h in realswitch.hangups() if h.uuid == gone], 20,
         "the killed call's hangup on the switch")
    rs_daemon.wait_until(lambda: _esl_sockets(pid, esl) not in ([], [port]) or None, 15,
                         "switchd to reconnect to ESL on a new connection")
    results = [h.wait() for h in handles]
    assert all(r.answered for r in results), results
    for result in results:
        a, b, cdr = _assert_one_rated_cdr(rs_daemon, realswitch, result)
        print(f"\ncall {a.uuid} ({'ended in the gap' if a.uuid == gone else 'after'}): "
              f"{a.cause} billsec={b.billsec} -> {cdr['billed_seconds']}s, {cdr['cost']}")
    assert any(r.ended_by == "switch" for r in results)
    rs_daemon.wait_until(lambda: _live(rs_daemon) == [] and realswitch.channel_count() == 0
                         or None, what="no call live in switchd nor on the switch")
    # no caps slot left: a call for the tenant is admitted again
    after = realswitch.call(FRANCE, tenant="acme", hold_ms=500)
    assert after.answered, after
