"""FreeSWITCH's own CDR settles the money (issue 9), on the real switch.

mod_json_cdr (conftest: every leg's CDR POSTed to the daemon's /fs/cdr, 3 retries 1 s
apart, then <fs>/log/json_cdr/) is the record of truth: the stored CDR must equal what
FreeSWITCH itself measured (its billsec), rated by hand here from the deck in world.py.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

from daemon_harness import metric

from .fsharness import poll

pytestmark = pytest.mark.realswitch

ROOT = Path(__file__).resolve().parents[2]
FRANCE = "+33142685300"        # bravo: 0.0100/min + 0.0050 connect fee, 6/6


def hand_cost(billsec: int, rate="0.0100", fee="0.0050", initial=6, sub=6) -> tuple[int, Decimal]:
    """DESIGN §4 by hand: billed seconds by increments from FreeSWITCH's billsec."""
    if billsec <= 0:
        billed = 0
    elif billsec <= initial:
        billed = initial
    else:
        billed = initial + -(-(billsec - initial) // sub) * sub
    cost = Decimal(fee) + Decimal(rate) * billed / 60
    return billed, cost.quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)


def _switch_rows(rs, call_uuid):
    return rs.rows("SELECT leg_uuid, cdr_source, billsec, billed_seconds, cost, provisional "
                   "FROM call_legs WHERE call_uuid = %s ORDER BY started_at", call_uuid)


def test_call_cdr_posted_by_the_switch_equals_its_billsec(realswitch, rs_daemon):
    result = realswitch.call(FRANCE, headers={"X-Tenant": "acme"}, hold_ms=7300)
    assert result.answered
    a, *carrier_legs = realswitch.wait_call(result)
    [b] = carrier_legs
    assert b.gateway == "gw_b"
    # both legs' CDRs arrive over HTTP and settle the call
    rs_daemon.wait_until(lambda: rs_daemon.rows(
        "SELECT 1 FROM calls WHERE call_uuid = %s AND cdr_source = 'switch'", a.uuid),
        what="the switch's CDRs for the call")
    legs = {row[0]: row for row in _switch_rows(rs_daemon, a.uuid)}
    assert set(legs) == {a.uuid, b.uuid} and {r[1] for r in legs.values()} == {"switch"}
    billed, cost = hand_cost(b.billsec)
    assert legs[b.uuid][2:6] == (b.billsec, billed, cost, False)
    cdr = rs_daemon.wait_cdr(a.uuid)
    assert (cdr["billed_seconds"], cdr["cost"], cdr["carrier"]) == (billed, cost, "bravo")
    print(f"\nreal switch: billsec={b.billsec} billmsec={b.billmsec} -> billed {billed}s, "
          f"cost {cost}")


def _call_cdrs_left_to_the_error_dir(realswitch, rs, hold_ms: int):
    """A call that ends while switchd is down: FreeSWITCH's posts of both legs' CDRs fail
    and mod_json_cdr writes them to its err-log-dir. Returns (a, b, err_dir, file names)."""
    handle = realswitch.call_async(FRANCE, headers={"X-Tenant": "acme"}, hold_ms=hold_ms)
    rs.wait_until(lambda: realswitch.channel_count() >= 2 and rs.process.get("/v1/calls")[1]
                  .get("calls"), what="the call to be up")
    assert rs.process.terminate() == 0          # switchd down while FreeSWITCH will post
    result = handle.wait()
    assert result.answered
    a, b = realswitch.wait_call(result)
    err_dir = realswitch.fs_dir / "log" / "json_cdr"
    wanted = {f"{a.uuid}.cdr.json", f"{b.uuid}.cdr.json"}
    poll(lambda: wanted <= {p.name for p in err_dir.glob("*.cdr.json")}, 30,
         "mod_json_cdr to give up and write its error directory")
    return a, b, err_dir, wanted


def test_cdrs_the_switch_could_not_post_are_imported_from_its_error_dir(
        realswitch, make_rs_daemon, tmp_path):
    rs = make_rs_daemon()
    a, b, err_dir, wanted = _call_cdrs_left_to_the_error_dir(realswitch, rs, hold_ms=6000)
    # this call's files as FreeSWITCH wrote them (the shared directory may also hold late
    # CDRs of other tests' calls, posted while no daemon listened)
    own_dir = tmp_path / "err"
    own_dir.mkdir()
    for name in wanted:
        shutil.copy2(err_dir / name, own_dir / name)
    env = {**os.environ, "SWITCHD_DATABASE_URL": rs.db_url, "PYTHONPATH": str(ROOT),
           "SWITCHD_DATA_DIR": str(tmp_path / "import")}
    run = subprocess.run([sys.executable, "-m", "switchd.cli", "cdr", "import", str(own_dir)],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 stored, 0 refused" in run.stdout, run.stdout
    legs = {row[0]: row for row in _switch_rows(rs, a.uuid)}
    billed, cost = hand_cost(b.billsec)
    assert legs[b.uuid][1:6] == ("switch", b.billsec, billed, cost, False)
    cdr = rs.cdr(a.uuid)
    assert (cdr["billed_seconds"], cdr["cost"], cdr["hangup_cause"]) == \
        (billed, cost, "NORMAL_CLEARING")
    print(f"\nreal switch, imported: billsec={b.billsec} -> billed {billed}s, cost {cost}; "
          f"{run.stdout.strip()}")


def test_the_daemon_imports_what_the_switch_wrote_to_its_error_dir(realswitch, make_rs_daemon):
    """cdr.import_dir pointed at mod_json_cdr's err-log-dir (switchd on the switch's host):
    the CDRs FreeSWITCH could not post while switchd was down settle the call once switchd
    is back, with no operator, and their files move to imported/."""
    a, b, err_dir, wanted = _call_cdrs_left_to_the_error_dir(realswitch, make_rs_daemon(),
                                                            hold_ms=3000)
    rs2 = make_rs_daemon(extra_env={"SWITCHD_CDR_IMPORT_DIR": str(err_dir),
                                    "SWITCHD_CDR_IMPORT_INTERVAL": "0.5"})
    rs2.wait_until(lambda: {r[1] for r in _switch_rows(rs2, a.uuid)} == {"switch"}
                   and len(_switch_rows(rs2, a.uuid)) == 2, 30,
                   "the daemon to import both legs' CDRs from the error directory")
    assert not wanted & {p.name for p in err_dir.glob("*.cdr.json")}
    assert wanted <= {p.name for p in (err_dir / "imported").glob("*.cdr.json")}
    billed, cost = hand_cost(b.billsec)
    legs = {row[0]: row for row in _switch_rows(rs2, a.uuid)}
    assert legs[b.uuid][1:6] == ("switch", b.billsec, billed, cost, False)
    assert rs2.rows("SELECT count(*), sum(cost), sum(billed_seconds), bool_or(provisional) "
                    "FROM calls WHERE call_uuid = %s", a.uuid) == [(1, cost, billed, False)]
    assert metric(rs2.process, "switchd_cdr_import_refused_files") == 0
    print(f"\nreal switch, imported by the daemon: billsec={b.billsec} -> billed {billed}s, "
          f"cost {cost}")


def test_switchd_restarting_while_the_switch_posts_loses_no_cdr(realswitch, make_rs_daemon,
                                                               tmp_path):
    """switchd stops with a call up and starts again while FreeSWITCH posts the call's
    CDRs: each arrives by a retry, or, when every retry fell in the gap, from the error
    directory. Either way: one call row, one row per leg, FreeSWITCH's billsec."""
    rs = make_rs_daemon()
    handle = realswitch.call_async(FRANCE, headers={"X-Tenant": "acme"}, hold_ms=4000)
    rs.wait_until(lambda: rs.process.get("/v1/calls")[1].get("calls"), what="the call up")
    assert rs.process.terminate() == 0
    result = handle.wait()
    a, b = realswitch.wait_call(result)
    rs2 = make_rs_daemon()                      # FreeSWITCH is retrying meanwhile
    err_dir = realswitch.fs_dir / "log" / "json_cdr"

    def settled():
        stored = {r[0] for r in _switch_rows(rs2, a.uuid) if r[1] == "switch"}
        written = {p.name.split(".")[0] for p in err_dir.glob("*.cdr.json")}
        return {a.uuid, b.uuid} <= stored | written and (stored, written)
    stored, written = rs2.wait_until(settled, 20, "each CDR posted or written to err-log-dir")
    if written & {a.uuid, b.uuid}:
        own_dir = tmp_path / "err"            # this call's files only (see above)
        own_dir.mkdir()
        for uuid in written & {a.uuid, b.uuid}:
            shutil.copy2(err_dir / f"{uuid}.cdr.json", own_dir / f"{uuid}.cdr.json")
        env = {**os.environ, "SWITCHD_DATABASE_URL": rs2.db_url, "PYTHONPATH": str(ROOT),
               "SWITCHD_DATA_DIR": str(tmp_path / "import")}
        run = subprocess.run([sys.executable, "-m", "switchd.cli", "cdr", "import", str(own_dir)],
                             env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
    legs = {row[0]: row for row in _switch_rows(rs2, a.uuid)}
    assert set(legs) == {a.uuid, b.uuid} and {r[1] for r in legs.values()} == {"switch"}
    billed, cost = hand_cost(b.billsec)
    assert rs2.rows("SELECT count(*), sum(cost), sum(billed_seconds) FROM calls "
                    "WHERE call_uuid = %s", a.uuid) == [(1, cost, billed)]
    print(f"\nswitchd restarted mid-post: {len(stored & {a.uuid, b.uuid})} CDR(s) by retry, "
          f"{len(written & {a.uuid, b.uuid})} from err-log-dir; billed {billed}s, cost {cost}")


def test_freeswitch_killed_mid_call_leaves_a_provisional_rated_cdr_and_no_slot(
        realswitch, rs_daemon):
    """No CDR can come from a switch killed with SIGKILL: the call is billed provisionally
    from what ESL knew (answer time, the leg's tariff) up to the moment ESL was lost."""
    import signal

    from . import fsconfig
    from .fsharness import _alive
    handle = realswitch.call_async(FRANCE, headers={"X-Tenant": "acme"}, hold_ms=120_000)
    live = rs_daemon.wait_until(
        lambda: [c for c in rs_daemon.process.get("/v1/calls")[1].get("calls", [])
                 if c["state"] == "answered" and c["age_s"] >= 3.5],
        what="the call answered and talking for 3.5 s")
    call_uuid = live[0]["call_uuid"]
    pid = realswitch.fs_pid
    # The switch's own clock, in which it stamps the answer, need not be ours: seen in CI,
    # FreeSWITCH stamped this call's creation, INVITE and answer with one time 4.3 s behind
    # time.time() (its timer thread's clock had stood still). switchd bills in the switch's.
    killed_at = int(realswitch.api("strmicroepoch").strip()) / 1e6
    os.kill(pid, signal.SIGKILL)
    poll(lambda: not _alive(pid), 10, "FreeSWITCH to die")
    handle.proc.kill()
    # the kernel frees a killed process's sockets a moment after it is gone
    poll(lambda: all(fsconfig.port_free(p) for p in (realswitch.plan.esl, realswitch.plan.sip)),
         30, "FreeSWITCH's ports to be released", 0.2)
    realswitch.restart()                        # the daemon reconnects and resyncs
    rs_daemon.wait_until(lambda: rs_daemon.rows(
        "SELECT 1 FROM calls WHERE call_uuid = %s AND ended_at IS NOT NULL", call_uuid),
        what="the provisional CDR")
    [(provisional, unrated, cause, source)] = rs_daemon.rows(
        "SELECT provisional, unrated, hangup_cause, cdr_source FROM calls WHERE call_uuid = %s",
        call_uuid)
    assert (provisional, unrated, cause, source) == (True, False, "UNKNOWN_AFTER_RESYNC", "esl")
    [(answered_at, billsec, billed, cost, leg_provisional)] = rs_daemon.rows(
        "SELECT answered_at, billsec, billed_seconds, cost, provisional FROM call_legs "
        "WHERE call_uuid = %s AND carrier = 'bravo'", call_uuid)
    talked = killed_at - answered_at.timestamp()
    assert leg_provisional and abs(billsec - talked) <= 1.5, (billsec, talked)
    assert (billed, cost) == hand_cost(billsec) and cost > 0
    assert rs_daemon.process.get("/v1/calls")[1]["calls"] == []       # no slot, no live call
    print(f"\nreal switch killed after {talked:.2f}s of talk: provisional billsec={billsec}, "
          f"billed {billed}s, cost {cost}")
