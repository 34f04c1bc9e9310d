"""switchd/calls/retries.py against a real PostgreSQL: pending retries claimed once across
daemons (FOR UPDATE SKIP LOCKED), due only at their time on the injected clock, attempts
interrupted by a dead daemon closed and never placed again, the daily cap atomic."""
from __future__ import annotations

import threading
import uuid
from datetime import date, datetime, timedelta, timezone

import psycopg
import pytest

from switchd.calls.retries import (INTERRUPTED_AFTER, AttemptEnd, AttemptStore,
                                   RetryScheduler)

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
REQUEST = {"tenant": "acme", "destination": "+442079460999", "retry": {"max_attempts": 2}}


def _first(store, call, at=T0, retry_at=None, outcome="busy"):
    store.begin(call, 1, tenant="acme", destination="+442079460999", campaign=None,
                attempt_call_uuid=call, scheduled_at=at, started_at=at, request=REQUEST,
                daemon="d0")
    store.finish(call, 1, AttemptEnd(outcome, at + timedelta(seconds=5), "USER_BUSY", 486,
                                     "alpha", "gw_a", 1), retry_at)


@pytest.fixture
def store(migrated_pg_url):
    s = AttemptStore(migrated_pg_url)
    yield s
    s.close()


def test_a_retry_is_due_at_its_time_on_the_clock(store):
    call = str(uuid.uuid4())
    due = T0 + timedelta(seconds=65)
    _first(store, call, retry_at=due)
    placed = []
    clock = {"now": due - timedelta(microseconds=1)}
    scheduler = RetryScheduler(store, placed.append, clock=lambda: clock["now"], daemon="d1")
    assert scheduler.step() == 0
    clock["now"] = due
    assert scheduler.step() == 1
    scheduler.drain(5)
    assert [(r["call_uuid"], r["attempt"], r["scheduled_at"]) for r in placed] == [(call, 2, due)]
    assert placed[0]["request"] == REQUEST
    rows = store.attempts(call)
    assert [(r["attempt"], r["state"]) for r in rows] == [(1, "done"), (2, "running")]
    assert rows[1]["started_at"] == due and rows[0]["final"] is False
    assert scheduler.step() == 0                       # claimed once


def test_not_ready_leaves_retries_pending(store):
    call = str(uuid.uuid4())
    _first(store, call, retry_at=T0)
    placed = []
    scheduler = RetryScheduler(store, placed.append, clock=lambda: T0 + timedelta(hours=1),
                               ready=lambda: False)
    assert scheduler.step() == 0 and placed == []
    assert store.attempts(call)[1]["state"] == "pending"


def test_two_daemons_claiming_at_once_never_take_the_same_retry(migrated_pg_url):
    stores = [AttemptStore(migrated_pg_url) for _ in range(2)]
    calls = [str(uuid.uuid4()) for _ in range(60)]
    for call in calls:
        _first(stores[0], call, retry_at=T0)
    claimed: dict[str, list] = {"a": [], "b": []}
    start = threading.Barrier(2)

    def claim(name, store):
        start.wait()
        while True:
            rows = store.claim_due(T0 + timedelta(minutes=1), name, limit=3)
            if not rows:
                return
            claimed[name] += [r["call_uuid"] for r in rows]
    threads = [threading.Thread(target=claim, args=(n, s)) for n, s in zip("ab", stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    everything = claimed["a"] + claimed["b"]
    assert sorted(everything) == sorted(calls)           # each claimed exactly once
    assert claimed["a"] and claimed["b"]                 # and both daemons took part
    with psycopg.connect(migrated_pg_url) as conn:
        by = dict(conn.execute("SELECT claimed_by, count(*) FROM originate_attempts "
                               "WHERE attempt = 2 GROUP BY 1").fetchall())
    assert by == {"a": len(claimed["a"]), "b": len(claimed["b"])}
    for s in stores:
        s.close()


def test_an_attempt_whose_daemon_died_is_closed_not_placed_again(store):
    call = str(uuid.uuid4())
    _first(store, call, retry_at=T0)
    store.claim_due(T0, "dead-daemon")
    heard = []
    scheduler = RetryScheduler(store, lambda row: pytest.fail("placed again"),
                               clock=lambda: T0 + INTERRUPTED_AFTER - timedelta(seconds=1))
    scheduler.on_interrupted = heard.append
    assert scheduler.step() == 0 and heard == []
    scheduler.clock = lambda: T0 + INTERRUPTED_AFTER + timedelta(seconds=1)
    scheduler.step()
    assert [h["call_uuid"] for h in heard] == [call]
    last = store.attempts(call)[1]
    assert (last["state"], last["outcome"], last["final"]) == ("done", "interrupted", True)


def test_the_daily_cap_counts_atomically_per_tenant_number_and_day(migrated_pg_url):
    stores = [AttemptStore(migrated_pg_url) for _ in range(4)]
    day = date(2026, 11, 30)
    got = []

    def take(store):
        for _ in range(5):
            got.append(store.take_daily("acme", "+15551230000", day, 7))
    threads = [threading.Thread(target=take, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(g for g in got if g is not None) == list(range(1, 8))
    assert got.count(None) == 20 - 7
    assert stores[0].daily_count("acme", "+15551230000", day) == 7
    assert stores[0].take_daily("acme", "+15551230000", day + timedelta(days=1), 7) == 1
    assert stores[0].take_daily("other", "+15551230000", day, 7) == 1
    assert stores[0].take_daily("acme", "+15551230000", day, None) == 8     # no cap: counted
    stores[0].housekeeping(day + timedelta(days=3))
    assert stores[0].daily_count("acme", "+15551230000", day) == 0
    for s in stores:
        s.close()


def test_pending_retries_are_cancelled_by_call_or_campaign(store):
    calls = [str(uuid.uuid4()) for _ in range(3)]
    for call in calls:
        _first(store, call, retry_at=T0 + timedelta(minutes=5))
    with psycopg.connect(store.conns.db_url) as conn:
        conn.execute("UPDATE originate_attempts SET campaign = 'spring' WHERE call_uuid = ANY(%s)",
                     (calls[1:],))
    with pytest.raises(ValueError):
        store.cancel_pending(T0, "why")                      # never everything at once
    assert [r["call_uuid"] for r in store.cancel_pending(T0, "hung up", call_uuid=calls[0])] == [
        calls[0]]
    gone = store.cancel_pending(T0, "campaign stopped", campaign="spring", tenant="acme")
    assert sorted(r["call_uuid"] for r in gone) == sorted(calls[1:])
    assert store.cancel_pending(T0, "again", campaign="spring") == []
    last = store.attempts(calls[2])[1]
    assert (last["state"], last["outcome"], last["final"], last["note"]) == (
        "done", "cancelled", True, "campaign stopped")
    assert store.claim_due(T0 + timedelta(hours=1), "d") == []
