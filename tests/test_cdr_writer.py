"""CDR writer and spool against a real PostgreSQL: batching, superseding, outage → spool →
replay, overflow, poison records, crash-torn spool lines, and cooperative yielding under
gevent (in a monkey-patched subprocess)."""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import gevent
import psycopg
import pytest
from hypothesis import given, settings, strategies as st
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from switchd.adapters.db.cdr_writer import CallRecord, CdrWriter, EventRecord, LegRecord
from switchd.adapters.db.spool import Spool, dumps, loads

T0 = datetime(2025, 3, 10, 12, 0, tzinfo=timezone.utc)
ROOT = Path(__file__).resolve().parents[1]


def call(i, **kw):
    base = dict(call_uuid=f"call-{i}", direction="outbound", tenant="acme", started_at=T0,
                answered_at=T0 + timedelta(seconds=2), ended_at=T0 + timedelta(seconds=62),
                hangup_cause="NORMAL_CLEARING", carrier="alpha", first_choice_carrier="alpha",
                attempts=1, billed_seconds=60, cost=Decimal("0.012500"))
    base.update(kw)
    return CallRecord(**base)


def leg(i):
    return LegRecord(leg_uuid=f"leg-{i}", call_uuid=f"call-{i}", direction="outbound",
                     carrier="alpha", gateway="alpha-lon", started_at=T0, ended_at=T0,
                     billmsec=59001, billed_seconds=60, rate_per_min=Decimal("0.0125"),
                     connect_fee=Decimal("0"), increments="60/6", cost=Decimal("0.012500"))


def event(i):
    return EventRecord(core_uuid="core-1", event_seq=i, name="CHANNEL_HANGUP_COMPLETE", at=T0,
                       call_uuid=f"call-{i}", leg_uuid=f"leg-{i}", data={"cause": "NORMAL"})


def count(url, table):
    with psycopg.connect(url) as c:
        return c.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
                         ).fetchone()[0]


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        gevent.sleep(0.05)
    return False


def make_writer(url, tmp_path, **kw):
    kw.setdefault("flush_interval", 0.05)
    return CdrWriter(url, spool=Spool.in_data_dir(tmp_path), **kw)


# --- spool -------------------------------------------------------------------------------
def test_spool_roundtrip_is_exact_and_replay_deletes_after_commit(tmp_path):
    spool = Spool.in_data_dir(tmp_path, max_file_bytes=200)
    recs = [{"cost": Decimal("0.0000010"), "at": T0, "id": uuid.UUID(int=5), "n": i}
            for i in range(10)]
    spool.append(recs[:5])
    spool.append(recs[5:])
    assert spool.records == 10 and len(list((tmp_path / "spool").iterdir())) >= 2
    assert loads(dumps(recs[0])) == recs[0]
    assert str(loads(dumps(recs[0]))["cost"]) == "0.0000010"   # trailing zero kept

    def boom(_):
        raise RuntimeError("db down")
    with pytest.raises(RuntimeError):
        spool.replay(boom)
    assert spool.records == 10                                 # nothing deleted

    got = []
    result = spool.replay(got.extend)
    assert got == recs and result.records == 10 and spool.records == 0
    assert list((tmp_path / "spool").glob("spool-*")) == []
    assert Spool.in_data_dir(tmp_path).records == 0


def test_spool_skips_and_reports_torn_last_line(tmp_path):
    spool = Spool.in_data_dir(tmp_path)
    spool.append([{"a": 1}, {"a": 2}])
    spool.close()
    (path,) = (tmp_path / "spool").glob("spool-*.jsonl")
    with path.open("ab") as fh:
        fh.write(b'{"a": 3, "cost": {"$deci')   # the crash hit mid-write
    reopened = Spool.in_data_dir(tmp_path)                   # a restarted process
    assert reopened.records == 3
    got = []
    result = reopened.replay(got.extend)
    assert got == [{"a": 1}, {"a": 2}]
    assert len(result.skipped) == 1 and "torn last line" in result.skipped[0]
    assert reopened.records == 0
    reopened.append([{"a": 4}])                  # new file after restart, sequence continues
    reopened.replay(got.extend)
    assert got[-1] == {"a": 4}


@settings(max_examples=200, deadline=None)
@given(st.decimals(allow_nan=False, allow_infinity=False),
       st.datetimes(timezones=st.just(timezone.utc)),
       st.text())
def test_spool_encoding_is_exact(amount, at, text):
    record = {"cost": amount, "at": at, "nested": [{"x": amount}], "s": text}
    back = loads(dumps(record))
    assert back == record and str(back["cost"]) == str(amount)
    assert back["at"].tzinfo is not None


# --- writer ------------------------------------------------------------------------------
def test_writes_all_kinds_in_batches(migrated_pg_url, tmp_path):
    writer = make_writer(migrated_pg_url, tmp_path, batch_size=50).start()
    for i in range(120):
        writer.submit_call(call(i, route_id=str(uuid.uuid4())))
        writer.submit_leg(leg(i))
        writer.submit_event(event(i))
    writer.submit_decision({"id": uuid.uuid4(), "direction": "outbound", "result": "routed",
                            "reason": "lcr", "candidates": [{"rate": Decimal("0.01")}]})
    assert wait_for(lambda: writer.written == 120)
    writer.stop()
    assert count(migrated_pg_url, "calls") == 120
    assert count(migrated_pg_url, "call_legs") == 120
    assert count(migrated_pg_url, "call_events") == 120
    assert count(migrated_pg_url, "routing_decisions") == 1
    with psycopg.connect(migrated_pg_url) as c:
        assert c.execute("SELECT cost FROM calls WHERE call_uuid = 'call-7'").fetchone()[0] \
            == Decimal("0.012500")
    assert writer.stats()["spool_records"] == 0


def test_real_cdr_supersedes_reconstructed_never_the_reverse(migrated_pg_url, tmp_path):
    writer = make_writer(migrated_pg_url, tmp_path).start()
    writer.submit_call(call(1, reconstructed=True, ended_at=None, cost=Decimal(0)))
    writer.submit_call(call(1))                                       # the real one
    writer.submit_call(call(1, reconstructed=True, cost=Decimal(9)))  # late, poorer
    writer.submit_call(call(2, answered_at=None, ended_at=None))      # interim
    writer.submit_call(call(2, cost=Decimal("0.5")))                  # final
    writer.submit_call(call(2, answered_at=None, ended_at=None))      # stale interim replayed
    writer.stop()
    with psycopg.connect(migrated_pg_url) as c:
        rows = {u: (r, cost) for u, r, cost in
                c.execute("SELECT call_uuid, reconstructed, cost FROM calls").fetchall()}
    assert rows["call-1"] == (False, Decimal("0.012500"))
    assert rows["call-2"] == (False, Decimal("0.500000"))


def test_queue_overflow_goes_to_spool_not_dropped(migrated_pg_url, tmp_path):
    writer = make_writer(migrated_pg_url, tmp_path, queue_max=3)
    for i in range(10):                       # writer not started: queue fills up
        writer.submit_call(call(i))
    assert writer.stats()["queue_depth"] == 3 and writer.spool.records == 7
    writer.start()
    writer.stop()
    assert count(migrated_pg_url, "calls") == 10


def test_database_outage_mid_load_spools_then_replays(migrated_pg_url, pg_admin_url, tmp_path):
    """Stop the database under the writer (terminate its backend and refuse connections),
    keep submitting, bring it back: every record ends up stored exactly once."""
    dbname = conninfo_to_dict(migrated_pg_url)["dbname"]
    writer = make_writer(migrated_pg_url, tmp_path, batch_size=20, backoff_max=0.2).start()
    for i in range(50):
        writer.submit_call(call(i))
    assert wait_for(lambda: writer.written == 50)

    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(
            sql.Identifier(dbname)))
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                      (dbname,))
        for i in range(50, 300):
            writer.submit_call(call(i))
            writer.submit_event(event(i))
            if i % 50 == 0:
                gevent.sleep(0.05)
        assert wait_for(lambda: writer.spool.records >= 500 and writer.stats()["queue_depth"] == 0)
        stats = writer.stats()
        assert stats["can_store"] and not stats["db_connected"] and stats["last_error"]
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(
            sql.Identifier(dbname)))

    assert wait_for(lambda: writer.spool.records == 0 and writer.written >= 300, timeout=15)
    writer.stop()
    assert count(migrated_pg_url, "calls") == 300
    assert count(migrated_pg_url, "call_events") == 250


def test_stop_with_database_down_spools_everything_and_next_writer_replays(
        migrated_pg_url, tmp_path):
    dead = "postgresql://127.0.0.1:1/none?connect_timeout=1"
    writer = make_writer(dead, tmp_path).start()
    for i in range(25):
        writer.submit_call(call(i))
    started = time.monotonic()
    writer.stop(timeout=5)
    assert time.monotonic() - started < 5
    assert Spool.in_data_dir(tmp_path).records == 25
    # A restarted daemon, database back: the spool drains idempotently (replay twice).
    spool_dir = tmp_path / "spool"
    (copy,) = [p.read_bytes() for p in spool_dir.glob("spool-*.jsonl")]
    for _ in range(2):
        (spool_dir / "spool-999999999999.jsonl").write_bytes(copy)
        writer = make_writer(migrated_pg_url, tmp_path).start()
        assert wait_for(lambda: writer.spool.records == 0)
        writer.stop()
    assert count(migrated_pg_url, "calls") == 25


def test_poison_record_is_parked_and_does_not_block_the_rest(migrated_pg_url, tmp_path):
    writer = make_writer(migrated_pg_url, tmp_path).start()
    writer.submit_call(call(1))
    writer.submit_call(call(2, direction=None))      # violates NOT NULL: never storable
    writer.submit_call(call(3))
    writer.stop()
    assert count(migrated_pg_url, "calls") == 2 and writer.rejected == 1
    parked = (tmp_path / "spool" / "rejected.jsonl").read_text().splitlines()
    assert len(parked) == 1 and "NotNullViolation" in json.loads(parked[0])["reason"]
    assert writer.spool.records == 0


def test_writer_throughput_sanity(migrated_pg_url, tmp_path):
    writer = make_writer(migrated_pg_url, tmp_path, batch_size=500).start()
    started = time.monotonic()
    for i in range(3000):
        writer.submit_call(call(i))
        writer.submit_leg(leg(i))
    assert wait_for(lambda: writer.written == 3000, timeout=30)
    elapsed = time.monotonic() - started
    writer.stop()
    assert elapsed < 15, f"3000 CDRs + legs took {elapsed:.1f}s"


# --- cooperative under gevent --------------------------------------------------------------
_CHILD = r"""
from gevent import monkey; monkey.patch_all()
import sys, time, json, gevent
from decimal import Decimal
from switchd.adapters.db.cdr_writer import CdrWriter, CallRecord
from switchd.adapters.db.spool import Spool
url, data_dir = sys.argv[1], sys.argv[2]
ticks = 0
def ticker():
    global ticks
    while True:
        gevent.sleep(0.01); ticks += 1
gevent.spawn(ticker)
w = CdrWriter(url, flush_interval=0.01, spool=Spool.in_data_dir(data_dir)).start()
w.submit_call(CallRecord(call_uuid="blocked", direction="outbound", cost=Decimal("1")))
gevent.sleep(1.0)   # the writer sits on the locked table meanwhile
print(json.dumps({"phase": "blocked", "ticks": ticks, "written": w.written}), flush=True)
sys.stdin.readline()  # parent releases the lock
deadline = time.monotonic() + 10
while w.written < 1 and time.monotonic() < deadline:
    gevent.sleep(0.02)
w.stop()
print(json.dumps({"phase": "done", "written": w.written}), flush=True)
"""


def _readline(child, timeout=10.0) -> dict:
    # A blocked (unpatched) child would print nothing at all: fail fast, do not hang.
    ready, _, _ = select.select([child.stdout], [], [], timeout)
    assert ready, "child printed nothing: the event loop was blocked by the database"
    return json.loads(child.stdout.readline())


def test_slow_database_does_not_block_other_greenlets(migrated_pg_url, tmp_path):
    """A writer stuck on a table lock must leave the event loop free (DESIGN.md §5)."""
    with psycopg.connect(migrated_pg_url) as locker:
        locker.execute("LOCK TABLE calls IN ACCESS EXCLUSIVE MODE")   # held until commit
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        child = subprocess.Popen([sys.executable, "-c", _CHILD, migrated_pg_url, str(tmp_path)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 env=env, cwd=ROOT)
        try:
            blocked = _readline(child)
            # The writer has not committed, yet the ticker ran ~100 times in that second.
            assert blocked["written"] == 0
            assert blocked["ticks"] >= 50, blocked
            locker.commit()
            child.stdin.write("go\n")
            child.stdin.flush()
            done = _readline(child)
            assert done["written"] == 1
            assert child.wait(timeout=15) == 0
        finally:
            if child.poll() is None:
                child.kill()
    assert count(migrated_pg_url, "calls") == 1
