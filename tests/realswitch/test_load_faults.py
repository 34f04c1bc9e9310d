"""Money under load on the real switch: the periodic resync at 20 calls/s, switchd
SIGKILLed and restarted while 10 calls/s keep coming, PostgreSQL unreachable under
20 calls/s, and CDR posts stuck behind a locked table while calls keep being routed.

The oracle is FreeSWITCH itself: the CHANNEL_HANGUP_COMPLETE events the harness's own ESL
listener saw. Every call it carried (an inbound A-leg) must end with exactly one `calls`
row settled by the switch's CDR, every answered carrier leg rated by hand from FreeSWITCH's
billsec (test_lcr.py's oracle), nothing left provisional, and no caps slot held.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from daemon_harness import metric

from . import world
from .backends import RsDaemon
from .common import poll
from .pgproxy import PgProxy
from .test_lcr import expected_cost

pytestmark = [pytest.mark.realswitch, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
FRANCE = "+33142685300"        # bravo (gw_b): 0.0100/min + 0.0050 connect fee, 6/6


def _carried(switch, a_legs_before: set[str] = frozenset()):
    """(A-legs, answered carrier legs) FreeSWITCH carried, from its own hangup events."""
    hangups = switch.hangups()
    a_legs = [h for h in hangups if h.direction == "inbound" and h.uuid not in a_legs_before]
    carrier = [h for h in hangups if h.direction == "outbound" and h.billmsec > 0]
    return a_legs, carrier


def _hand_cost(leg) -> tuple[int, Decimal]:
    rate, fee, initial, subsequent = world.rate_of("bravo", "33")
    if leg.billsec == 0:                      # answered for under a second: the fee only
        return 0, Decimal(fee).quantize(Decimal("0.000001"))
    return expected_cost(leg.billsec, rate, fee, initial, subsequent)


def _assert_every_call_billed_once_from_the_switch(rs, switch, a_legs, carrier_legs):
    a_uuids = {a.uuid for a in a_legs}
    rs.wait_until(lambda: rs.rows(
        "SELECT count(*) FROM calls WHERE call_uuid = ANY(%s) AND cdr_source = 'switch' "
        "AND NOT provisional AND ended_at IS NOT NULL", list(a_uuids)) == [(len(a_uuids),)],
        timeout=60, what=f"{len(a_uuids)} calls settled by the switch's CDR")
    assert rs.rows("SELECT count(*), count(DISTINCT call_uuid) FROM calls") == [
        (len(a_uuids), len(a_uuids))]
    assert rs.rows("SELECT count(*) FROM calls WHERE hangup_cause LIKE 'UNKNOWN%%' OR "
                   "provisional OR unrated") == [(0,)]
    stored = {leg: (billsec, billed, cost) for leg, billsec, billed, cost in rs.rows(
        "SELECT leg_uuid, billsec, billed_seconds, cost FROM call_legs WHERE leg_uuid = ANY(%s)",
        [b.uuid for b in carrier_legs])}
    expected = {b.uuid: (b.billsec, *_hand_cost(b)) for b in carrier_legs}
    assert stored == expected
    total = sum((cost for _, _, cost in expected.values()), Decimal(0))
    assert rs.rows("SELECT sum(cost) FROM calls") == [(total,)]
    return total


def _no_call_left(rs, switch):
    rs.wait_until(lambda: (rs.process.get("/v1/calls")[1].get("calls") == []
                           and switch.channel_count() == 0) or None,
                  what="no call live in switchd nor on the switch")


def test_periodic_resync_at_20_calls_a_second_closes_no_live_call(realswitch, make_rs_daemon):
    rs = make_rs_daemon(extra_env={"SWITCHD_ESL_RESYNC_INTERVAL": "1"})
    resyncs_before = metric(rs.process, "switchd_resyncs_total")
    load = realswitch.load_async(FRANCE, rate=20, count=200, hold_ms=2000).wait()
    # A machine too busy to answer a lookup within mod_xml_curl's timeout gets the static
    # fallback's 503 for that call: FreeSWITCH's choice, billed as refused. Most must pass.
    assert load.answered + sum(load.rejected.values()) == 200 and load.answered >= 100, load
    # (an INVITE sofia refuses by itself under load creates no channel: A-legs <= 200)
    a_legs, carrier = poll(lambda: realswitch.channel_count() == 0 and (
        lambda a, c: len(c) == load.answered and (a, c))(*_carried(realswitch)), 30,
        "every channel hung up, each answered carrier leg's hangup seen")
    assert load.answered <= len(a_legs) <= 200, (len(a_legs), load)
    total = _assert_every_call_billed_once_from_the_switch(rs, realswitch, a_legs, carrier)
    resyncs = metric(rs.process, "switchd_resyncs_total") - resyncs_before
    assert resyncs >= 5, resyncs                # the resync did run, many times, under load
    assert metric(rs.process, "switchd_resync_closed_legs_total") == 0
    _no_call_left(rs, realswitch)
    print(f"\n200 calls at 20/s ({load.answered} answered, refused {load.rejected}), "
          f"{resyncs:.0f} resyncs: none closed, total {total}")


def test_switchd_sigkilled_under_10_calls_a_second_loses_no_call(realswitch, make_rs_daemon,
                                                                rs_world_url, tmp_path):
    # started by hand: a SIGKILLed daemon cannot pass make_rs_daemon's exit-0 check
    first = RsDaemon.start(realswitch, rs_world_url, tmp_path / "killed", None, True)
    try:
        handle = realswitch.load_async(FRANCE, rate=10, count=150, hold_ms=3000)
        first.wait_until(lambda: metric(first.process, "switchd_calls_total") >= 20 or None,
                         what="calls flowing through switchd")
    finally:
        first.process.kill()
    assert first.process.proc.returncode == -9
    # While no switchd listens, FreeSWITCH refuses new calls (the static fallback's 503)
    # and retries its CDR posts; then switchd is back and adopts what is up.
    poll(lambda: sum(1 for h in realswitch.hangups() if h.direction == "inbound") >= 40, 30,
         "calls going on while switchd is down")
    second = make_rs_daemon()
    load = handle.wait()
    assert load.answered + sum(load.rejected.values()) == 150, load
    a_legs, carrier = poll(lambda: realswitch.channel_count() == 0 and (
        lambda a, c: len(c) == load.answered and (a, c))(*_carried(realswitch)), 30,
        "every channel hung up, each answered carrier leg's hangup seen")
    assert load.answered <= len(a_legs) <= 150, (len(a_legs), load)
    # CDRs whose every post fell in the gap are in mod_json_cdr's error directory: the
    # operator replays them (docs/operations.md).
    err_dir = realswitch.fs_dir / "log" / "json_cdr"
    written = list(err_dir.glob("*.cdr.json"))
    if written:
        own = tmp_path / "err"
        own.mkdir()
        for path in written:
            shutil.copy2(path, own / path.name)
        env = {**os.environ, "SWITCHD_DATABASE_URL": second.db_url, "PYTHONPATH": str(ROOT),
               "SWITCHD_DATA_DIR": str(tmp_path / "import")}
        run = subprocess.run([sys.executable, "-m", "switchd.cli", "cdr", "import", str(own)],
                             env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
    # Refused calls (switchd down) have a row too: FreeSWITCH's CDR of a call nobody routed.
    total = _assert_every_call_billed_once_from_the_switch(second, realswitch, a_legs, carrier)
    _no_call_left(second, realswitch)
    print(f"\nSIGKILL under 10 calls/s: {load.answered} answered, {load.rejected} refused, "
          f"{len(written)} CDR(s) from the error directory, total {total}")


def test_postgresql_down_under_20_calls_a_second_loses_no_cdr(realswitch, rs_world_url,
                                                              tmp_path):
    """PostgreSQL unreachable while calls come and go: routing goes on from memory, CDRs
    (switchd's and the switch's) are fsync'd to the spool and written once it is back."""
    proxy = PgProxy(rs_world_url).start()
    rs = RsDaemon.start(realswitch, proxy.url, tmp_path / "daemon", None, True)
    try:
        handle = realswitch.load_async(FRANCE, rate=20, count=400, hold_ms=2000)
        rs.wait_until(lambda: metric(rs.process, "switchd_calls_total") >= 20 or None,
                      what="calls flowing through switchd")
        proxy.cut()
        ended_before = sum(1 for h in realswitch.hangups() if h.direction == "inbound")
        # down until 200 more calls have ended on the switch (about 10 s at 20/s)
        poll(lambda: sum(1 for h in realswitch.hangups() if h.direction == "inbound")
             >= ended_before + 200, 60, "200 calls ending while PostgreSQL is down", 0.2)
        # switchd saw it (and stayed ready: it routes from memory, CDRs go to the spool)
        rs.wait_until(lambda: metric(rs.process, "switchd_database_up") == 0 or None,
                      what="switchd_database_up 0")
        assert rs.process.get("/readyz")[0] == 200
        proxy.restore()
        load = handle.wait()
        assert load.answered + sum(load.rejected.values()) == 400 and load.answered >= 200, load
        a_legs, carrier = poll(lambda: realswitch.channel_count() == 0 and (
            lambda a, c: len(c) == load.answered and (a, c))(*_carried(realswitch)), 30,
            "every channel hung up, each answered carrier leg's hangup seen")
        total = _assert_every_call_billed_once_from_the_switch(rs, realswitch, a_legs, carrier)
        _no_call_left(rs, realswitch)
        print(f"\nPostgreSQL down under 20 calls/s: {load.answered} answered, refused "
              f"{load.rejected}, total {total}")
    finally:
        if proxy.is_cut:
            proxy.restore()
        assert rs.process.terminate() == 0, rs.process.log()[-3000:]
        proxy.stop()


def test_cdr_posts_stuck_on_postgresql_never_cost_a_call_its_route(realswitch, make_rs_daemon):
    """The call tables locked while 20 calls come and go: every leg's CDR post waits for its
    commit, far more posts than http.max_in_flight (2 here), yet every dialplan lookup is
    answered and every call carried. FreeSWITCH holds a channel (and its hangup-complete
    event) until its post is answered: past cdr.commit_timeout the posts are spooled and
    answered, so the switch lets every channel go while the lock still holds; once it goes,
    every CDR settles from the spool."""
    rs = make_rs_daemon(extra_env={"SWITCHD_HTTP_MAX_IN_FLIGHT": "2",
                                   "SWITCHD_CDR_COMMIT_TIMEOUT": "2"})
    with psycopg.connect(rs.db_url) as blocker:
        blocker.execute("LOCK TABLE call_legs IN EXCLUSIVE MODE")     # writers wait
        load = realswitch.load_async(FRANCE, rate=5, count=20, hold_ms=500).wait()
        a_legs, carrier = poll(lambda: realswitch.channel_count() == 0 and (
            lambda a, c: len(a) == len(c) == 20 and (a, c))(*_carried(realswitch)), 60,
            "every channel let go by the switch, its CDR answered, while the lock holds")
        assert rs.rows("SELECT count(*) FROM call_legs") == [(0,)]     # nothing committed
        blocker.rollback()
    assert load.answered == 20, load
    assert metric(rs.process, "switchd_http_requests_shed_total", endpoint="dialplan") == 0
    assert metric(rs.process, "switchd_switch_cdrs_total", outcome="spooled") == 40
    _assert_every_call_billed_once_from_the_switch(rs, realswitch, a_legs, carrier)
    assert not list((realswitch.fs_dir / "log" / "json_cdr").glob("*.cdr.json"))
    _no_call_left(rs, realswitch)
