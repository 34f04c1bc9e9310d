"""Originate on the real switch: one `bgapi originate` per carrier attempt, each leg its own
UUID (as FreeSWITCH's own CHANNEL_HANGUP_COMPLETE events show), a carrier's 403 moving on to
the next carrier and a callee's 603 stopping there."""
from __future__ import annotations


import pytest

from . import world
from .common import poll

pytestmark = pytest.mark.realswitch


def _hangups(switch, uuids):
    """FreeSWITCH's own CHANNEL_HANGUP_COMPLETE of each leg UUID, once all have one."""
    def found():
        by_uuid = {h.uuid: h for h in switch.hangups() if h.uuid in uuids}
        return [by_uuid[u] for u in uuids] if len(by_uuid) == len(uuids) else None
    return poll(found, 20, f"hangup events of {uuids}")


def test_originate_fails_over_on_403_each_leg_its_own_uuid(realswitch, rs_daemon):
    realswitch.carrier("gw_a").set_mode("403")
    status, body = rs_daemon.originate({"tenant": "acme", "destination": world.US_NUMBER})
    assert status == 200 and body["answered"] is True, body
    attempts = body["attempts"]
    assert [a["gateway"] for a in attempts] == ["gw_a", "gw_b"]
    uuids = [a["leg_uuid"] for a in attempts]
    assert uuids[0] == body["call_uuid"] and len(set(uuids)) == 2
    assert realswitch.invites() == {"gw_a": 1, "gw_b": 1, "gw_c": 0}
    realswitch.api(f"uuid_kill {uuids[1]}")
    first, second = _hangups(realswitch, uuids)
    assert (first.cause, first.sip_term_status, first.gateway) == ("CALL_REJECTED", 403, "gw_a")
    assert second.gateway == "gw_b" and second.billmsec > 0
    cdr = rs_daemon.wait_cdr(body["call_uuid"])
    assert (cdr["carrier"], cdr["first_choice_carrier"], cdr["attempts"]) == ("bravo", "alpha", 2)
    assert cdr["answered_at"] is not None
    # the call row may come before the last leg's (each leg's record arrives on its own)
    legs = rs_daemon.wait_until(lambda: (lambda r: r if len(r) == 2 else None)(rs_daemon.rows(
        "SELECT leg_uuid, sip_status FROM call_legs WHERE call_uuid = %s ORDER BY started_at",
        body["call_uuid"])), what="both attempts' leg rows")
    assert [l[0] for l in legs] == uuids and legs[0][1] == 403


def test_originate_stops_on_a_callees_603(realswitch, rs_daemon):
    realswitch.carrier("gw_a").set_mode("603")
    status, body = rs_daemon.originate({"tenant": "acme", "destination": world.US_NUMBER})
    assert status == 200 and body["answered"] is False, body
    assert [a["gateway"] for a in body["attempts"]] == ["gw_a"]
    assert body["result"].startswith("-ERR CALL_REJECTED")
    assert realswitch.invites() == {"gw_a": 1, "gw_b": 0, "gw_c": 0}
    (leg,) = _hangups(realswitch, [body["call_uuid"]])
    assert (leg.cause, leg.sip_term_status) == ("CALL_REJECTED", 603)
    cdr = rs_daemon.wait_cdr(body["call_uuid"])
    assert cdr["answered_at"] is None and cdr["hangup_cause"] == "CALL_REJECTED"
