"""A carrier answering 302 Moved Temporarily, on a real FreeSWITCH 1.10.12.

Left to itself, sofia follows a carrier's redirect (sofia.c, `sofia_handle_sip_r_invite`
and `nua_callstate_terminated`): to a host it has no gateway to, it re-INVITEs the Contact
on the same channel, so the call is answered wherever the carrier said, as that carrier's
leg; to FreeSWITCH's own address, it transfers the caller into the dialplan with the
Contact's number. Both take the call past routing and billing. switchd sets
`outbound_redirect_fatal=true` on every carrier leg: the leg then ends
REQUESTED_CHAN_UNAVAIL with `proto_specific_hangup_cause` `sip:302` (and no
`sip_term_status`), and the call goes on to the next carrier (row `3xx`, docs/routing.md
§4a). "Elsewhere" is a sipp answering on 127.0.0.2, an address FreeSWITCH has no gateway
to; its INVITE count says whether the redirect was followed."""
from __future__ import annotations

import re

import pytest

from daemon_harness import metric

from . import world
from .common import poll

pytestmark = pytest.mark.realswitch

PREMIUM = "19005550100"      # where the carrier sends the call


def _contact(realswitch, elsewhere, host: str) -> str:
    if host == "elsewhere":
        return f"sip:{PREMIUM}@{elsewhere.ip}:{elsewhere.ports.sip}"
    return f"sip:{PREMIUM}@127.0.0.1:{realswitch.plan.sip}"     # FreeSWITCH's own profile


def _failover_step(rs, call_uuid):
    return rs.wait_until(lambda: [r for r in rs.rows(
        "SELECT reason FROM routing_decisions WHERE call_uuid = %s", call_uuid)
        if r[0].startswith("failover")] or None, what="the failover step in the routing log")


@pytest.mark.parametrize("host", ["elsewhere", "own"])
def test_a_carriers_redirect_is_not_followed_the_next_carrier_carries_the_call(
        realswitch, rs_daemon, elsewhere, host):
    realswitch.carrier("gw_a").set_mode("redirect", contact=_contact(realswitch, elsewhere, host))
    result = realswitch.call(world.US_NUMBER, headers={"X-Tenant": "acme"}, hold_ms=1500)
    assert result.code == 200, result
    legs = realswitch.wait_call(result)
    a, carriers = legs[0], legs[1:]
    assert [leg.gateway for leg in carriers] == ["gw_a", "gw_b"]
    redirected, answered = carriers
    # what FreeSWITCH did with the 302
    assert (redirected.cause, redirected.sip_term_status, redirected.billmsec) == (
        "REQUESTED_CHAN_UNAVAIL", None, 0)
    assert redirected.headers["variable_proto_specific_hangup_cause"] == "sip:302"
    assert redirected.headers["variable_sip_redirect_contact_user_0"] == PREMIUM
    assert answered.billmsec > 0
    assert realswitch.invites() == {"gw_a": 1, "gw_b": 1, "gw_c": 0}
    assert elsewhere.invites() == 0
    # the caller was not transferred to the carrier's number
    assert a.headers["Caller-Destination-Number"] == world.US_NUMBER
    assert not rs_daemon.rows("SELECT 1 FROM routing_decisions WHERE destination LIKE %s",
                              f"%{PREMIUM}%")
    # switchd: the next carrier carried and billed it; the redirecting one was charged
    cdr = rs_daemon.wait_cdr(a.uuid)
    assert (cdr["carrier"], cdr["first_choice_carrier"], cdr["attempts"]) == ("bravo", "alpha", 2)
    assert cdr["billed_seconds"] == 6 and str(cdr["cost"]) == "0.000600"   # 6/6 at 0.0060/min
    (step,) = _failover_step(rs_daemon, a.uuid)
    assert re.search(r"REQUESTED_CHAN_UNAVAIL sip 302 -> 3xx: next", step[0]), step
    leg_row = rs_daemon.wait_until(lambda: rs_daemon.rows(
        "SELECT sip_status, disposition, cost FROM call_legs WHERE leg_uuid = %s",
        redirected.uuid) or None, what="the redirected leg's row")
    assert leg_row == [(302, "carrier_failure", 0)]
    assert metric(rs_daemon.process, "switchd_failovers_total", carrier="alpha") == 1
    rs_daemon.wait_until(lambda: rs_daemon.rows(
        "SELECT health FROM carriers WHERE name = 'alpha'") == [(95,)], what="alpha charged")


def test_an_operators_3xx_stop_row_ends_the_call_at_a_redirect(realswitch, make_rs_daemon,
                                                                 elsewhere, tmp_path):
    config = tmp_path / "switchd.toml"
    config.write_text('[failover]\n"3xx" = "stop"\n')
    rs = make_rs_daemon(extra_env={"SWITCHD_CONFIG": str(config)})
    realswitch.carrier("gw_a").set_mode("redirect",
                                        contact=_contact(realswitch, elsewhere, "elsewhere"))
    result = realswitch.call(world.US_NUMBER, headers={"X-Tenant": "acme"}, hold_ms=500)
    assert result.code == 503, result          # never the 302: the caller is not redirected
    legs = realswitch.wait_call(result)
    assert [leg.gateway for leg in legs[1:]] == ["gw_a"]
    assert realswitch.invites() == {"gw_a": 1, "gw_b": 0, "gw_c": 0}
    assert elsewhere.invites() == 0
    (step,) = _failover_step(rs, legs[0].uuid)
    assert "-> 3xx: stop" in step[0], step


def test_an_originated_call_is_not_redirected(realswitch, rs_daemon, elsewhere):
    realswitch.carrier("gw_a").set_mode("redirect",
                                        contact=_contact(realswitch, elsewhere, "elsewhere"))
    status, body = rs_daemon.originate({"tenant": "acme", "destination": world.US_NUMBER})
    assert status == 200 and body["answered"] is True, body
    uuids = [a["leg_uuid"] for a in body["attempts"]]
    assert [a["gateway"] for a in body["attempts"]] == ["gw_a", "gw_b"]
    assert realswitch.invites() == {"gw_a": 1, "gw_b": 1, "gw_c": 0}
    assert elsewhere.invites() == 0
    realswitch.api(f"uuid_kill {uuids[1]}")
    hangups = poll(lambda: (lambda h: h if len(h) == 2 else None)(
        {x.uuid: x for x in realswitch.hangups() if x.uuid in uuids}), 20, "both attempts' hangups")
    redirected, answered = hangups[uuids[0]], hangups[uuids[1]]
    assert (redirected.cause, redirected.billmsec) == ("REQUESTED_CHAN_UNAVAIL", 0)
    assert redirected.headers["variable_proto_specific_hangup_cause"] == "sip:302"
    assert answered.gateway == "gw_b" and answered.billmsec > 0
    cdr = rs_daemon.wait_cdr(body["call_uuid"])
    assert (cdr["carrier"], cdr["first_choice_carrier"], cdr["attempts"]) == ("bravo", "alpha", 2)
