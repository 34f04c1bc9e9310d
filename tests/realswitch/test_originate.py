"""Originate on the real switch: one `bgapi originate` per carrier attempt, each leg its own
UUID (as FreeSWITCH's own CHANNEL_HANGUP_COMPLETE events show), a carrier's 403 moving on to
the next carrier and a callee's 603 stopping there."""
from __future__ import annotations


import pytest

from . import world
from .common import poll

pytestmark = pytest.mark.realswitch


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
    first, second = realswitch.wait_hangups(uuids)
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
    (leg,) = realswitch.wait_hangups([body["call_uuid"]])
    assert (leg.cause, leg.sip_term_status) == ("CALL_REJECTED", 603)
    cdr = rs_daemon.wait_cdr(body["call_uuid"])
    assert cdr["answered_at"] is None and cdr["hangup_cause"] == "CALL_REJECTED"


@pytest.mark.slow
def test_originate_follows_the_operators_failover_rows(realswitch, make_rs_daemon, tmp_path):
    """`[failover]` "403" = "stop", "486" = "next": an originated call stops at the carrier's
    403 and moves on from a busy callee, as a routed call would."""
    config = tmp_path / "switchd.toml"
    config.write_text('[failover]\n"403" = "stop"\n"486" = "next"\n')
    rs = make_rs_daemon(extra_env={"SWITCHD_CONFIG": str(config)})
    realswitch.carrier("gw_a").set_mode("403")
    status, body = rs.originate({"tenant": "acme", "destination": world.US_NUMBER})
    assert status == 200 and body["answered"] is False, body
    assert [a["gateway"] for a in body["attempts"]] == ["gw_a"]
    (leg,) = realswitch.wait_hangups([body["call_uuid"]])
    assert (leg.cause, leg.sip_term_status) == ("CALL_REJECTED", 403)
    assert realswitch.invites() == {"gw_a": 1, "gw_b": 0, "gw_c": 0}

    realswitch.carrier("gw_a").set_mode("486")
    status, body = rs.originate({"tenant": "acme", "destination": world.US_NUMBER})
    assert status == 200 and body["answered"] is True, body
    uuids = [a["leg_uuid"] for a in body["attempts"]]
    assert [a["gateway"] for a in body["attempts"]] == ["gw_a", "gw_b"]
    assert realswitch.invites() == {"gw_a": 2, "gw_b": 1, "gw_c": 0}
    realswitch.api(f"uuid_kill {uuids[1]}")
    busy, answered = realswitch.wait_hangups(uuids)
    assert (busy.cause, busy.sip_term_status) == ("USER_BUSY", 486)
    assert answered.gateway == "gw_b" and answered.billmsec > 0


def test_originate_with_every_carrier_failing_tries_each_once_and_fails(realswitch, rs_daemon):
    for gateway in ("gw_a", "gw_b", "gw_c"):
        realswitch.carrier(gateway).set_mode("503")
    status, body = rs_daemon.originate({"tenant": "acme", "destination": world.US_NUMBER})
    assert status == 200 and body["answered"] is False, body
    assert [a["gateway"] for a in body["attempts"]] == ["gw_a", "gw_b", "gw_c"]
    assert (body["outcome"], body["final"]) == ("congestion", True)    # 503; no retry asked
    uuids = [a["leg_uuid"] for a in body["attempts"]]
    assert uuids[0] == body["call_uuid"] and len(set(uuids)) == 3
    assert realswitch.invites() == {"gw_a": 1, "gw_b": 1, "gw_c": 1}
    legs = realswitch.wait_hangups(uuids)
    assert [(h.gateway, h.sip_term_status, h.billmsec) for h in legs] == [
        ("gw_a", 503, 0), ("gw_b", 503, 0), ("gw_c", 503, 0)]
    cdr = rs_daemon.wait_cdr(body["call_uuid"])
    assert cdr["answered_at"] is None and cdr["attempts"] == 3 and cdr["cost"] in (0, None)


# --- retries of the whole call (docs/originate.md) --------------------------------------------
RETRY_WORLD = world.WORLD_TOML.replace(
    'max_call_seconds = 3600\n', 'max_call_seconds = 3600\nretry = { busy = 4, jitter_percent = 0 }\n', 1)


def _attempt_rows(daemon, call_uuid):
    return daemon.rows("SELECT attempt, state, outcome, cause, sip_status, gateway, final, note,"
                       " scheduled_at, started_at, ended_at, attempt_call_uuid::text"
                       " FROM originate_attempts WHERE call_uuid = %s ORDER BY attempt", call_uuid)


def _receiver():
    """A webhook receiver on a port the OS picks (the run's range is the switch's)."""
    import socket
    from api_helpers import Receiver
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return Receiver(port).up()


def test_a_busy_callee_is_retried_after_the_backoff_and_answers(realswitch, make_rs_daemon):
    receiver = _receiver()
    try:
        _busy_then_answered(realswitch, make_rs_daemon, receiver)
    finally:
        receiver.down()


def _busy_then_answered(realswitch, make_rs_daemon, receiver):
    import json
    from datetime import timedelta
    import psycopg
    from switchd.api import webhooks
    daemon = make_rs_daemon(world_toml=RETRY_WORLD)
    with psycopg.connect(daemon.db_url, autocommit=True) as conn:
        webhooks.set_webhook(conn, "acme", receiver.url)
    realswitch.carrier("gw_a").set_mode("486")
    status, body = daemon.originate({"tenant": "acme", "destination": world.US_NUMBER,
                                     "retry": {"max_attempts": 3, "on": ["busy"]}})
    assert status == 200 and body["outcome"] == "busy" and body["final"] is False, body
    # the callee's busy stops failover: one INVITE, to the first carrier only
    assert realswitch.invites() == {"gw_a": 1, "gw_b": 0, "gw_c": 0}
    realswitch.carrier("gw_a").set_mode("answer")        # the callee is free now
    rows = daemon.wait_until(lambda: (lambda r: r if len(r) == 2 and r[1][1] == "done" else None)(
        _attempt_rows(daemon, body["call_uuid"])), what="the retry's outcome")
    (n1, _, out1, cause1, sip1, gw1, final1, _, _, _, ended1, call1), \
        (n2, _, out2, _, _, gw2, final2, note2, due2, started2, _, call2) = rows
    assert (out1, cause1, sip1, gw1, final1) == ("busy", "USER_BUSY", 486, "gw_a", False)
    assert (out2, gw2, final2, note2) == ("answered", "gw_a", True, "answered")
    assert due2 - ended1 == timedelta(seconds=4) and started2 >= due2      # the backoff
    assert call1 == body["call_uuid"] != call2
    invites = realswitch.carrier("gw_a").invite_log()
    assert len(invites) == 2 and invites[0]["call_id"] != invites[1]["call_id"]
    assert realswitch.invites() == {"gw_a": 2, "gw_b": 0, "gw_c": 0}
    realswitch.api(f"uuid_kill {call2}")
    busy_leg, answered_leg = realswitch.wait_hangups([call1, call2])
    assert (busy_leg.cause, busy_leg.sip_term_status) == ("USER_BUSY", 486)
    assert answered_leg.billmsec > 0
    cdr = daemon.wait_cdr(call2)
    assert cdr["answered_at"] is not None and cdr["carrier"] == "alpha"
    # Each attempt's webhook events name the call POST /v1/calls answered, and the attempt.
    def finals():
        got = [json.loads(d["body"]) for d in receiver.received]
        ends = [e for e in got if e["event"] in ("busy", "completed")]
        return got if len(ends) == 2 else None
    events = poll(finals, 20, "both attempts' final webhook events")
    assert sorted((e["call_uuid"], e["event"], e["origin_call_uuid"], e["attempt"])
                  for e in events if e["event"] in ("busy", "completed")) == sorted(
        [(call1, "busy", call1, 1), (call2, "completed", call1, 2)])
    assert {(e["origin_call_uuid"], e["attempt"]) for e in events} == {(call1, 1), (call1, 2)}


def test_an_unallocated_number_is_never_retried(realswitch, make_rs_daemon):
    daemon = make_rs_daemon(world_toml=RETRY_WORLD)
    realswitch.carrier("gw_a").set_mode("404")
    status, body = daemon.originate({"tenant": "acme", "destination": world.US_NUMBER,
                                     "retry": {"max_attempts": 3}})
    assert status == 200 and body["outcome"] == "invalid_number" and body["final"] is True, body
    (row,) = _attempt_rows(daemon, body["call_uuid"])   # no pending row: nothing will follow
    assert row[1:8] == ("done", "invalid_number", "UNALLOCATED_NUMBER", 404, "gw_a", True,
                        "invalid_number: never retried")
    (leg,) = realswitch.wait_hangups([body["call_uuid"]])
    assert (leg.cause, leg.sip_term_status) == ("UNALLOCATED_NUMBER", 404)
    assert realswitch.invites() == {"gw_a": 1, "gw_b": 0, "gw_c": 0}
