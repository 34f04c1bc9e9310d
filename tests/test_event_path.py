"""The ESL event path never waits on the database, and one bad event never stops it
(DESIGN.md §5 "Slow or broken handler", STYLE.md §6).

Both tests run the real Daemon (real PostgreSQL, the demo world) in a child interpreter
monkey-patched by gevent, as `switchd run` is, and feed ChannelEvents through the real
`Daemon.handle_event`. The parent holds an ACCESS EXCLUSIVE lock on the CDR tables to make
the database as slow as it gets: every write waits for the lock. The child reports on
stdout, one JSON object per phase; the parent decides when the lock goes.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from switchd.demo_world import write_world
from switchd.admin.provision import provision
from daemon_harness import free_port

ROOT = Path(__file__).resolve().parent.parent
CALLS = 300                 # 7 events each
EVENTS_PER_CALL = 7

_CHILD = r"""
from gevent import monkey; monkey.patch_all()
import json, sys, time, uuid
import gevent
from switchd.config import load_config
from switchd.daemon import Daemon
from switchd.adapters.esl.connection import ESLConnection
from switchd.adapters.esl.events import ChannelEvent
from switchd.metrics import ESL_HANDLER_ERRORS

mode, url, data_dir, esl_port = sys.argv[1:5]
config = load_config(environ={"SWITCHD_DATA_DIR": data_dir, "SWITCHD_HTTP_PORT": "0",
                              "SWITCHD_ESL_PORT": esl_port, "SWITCHD_ESL_PASSWORD": "x-test",
                              "SWITCHD_LOG_LEVEL": "warning"})
daemon = Daemon(config, url).start()       # ESL points at nothing: it just keeps retrying
CORE = "c0ffee00-0000-4000-8000-000000000000"
seq = 0
T0 = int(time.time() * 1e6)


def say(**kw):
    print(json.dumps(kw), flush=True)


def uid(name):
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def call_events(tag, ts=None):
    # One answered outbound call through globex, as the router's variables describe it.
    global seq
    a, b = uid(f"a-{tag}"), uid(f"b-{tag}")
    common = {"switchd_tenant": "acme", "switchd_direction": "outbound",
              "switchd_max_duration": "3600", "switchd_route_id": uid(f"r-{tag}")}
    carrier = {**common, "switchd_carrier": "globex", "switchd_rate": "0.0100",
               "switchd_connect_fee": "0", "switchd_increments": "6/6", "switchd_prefix": "49"}
    t_ans, t_end = T0 + 2_000_000, T0 + 32_000_000
    steps = [
        ("CHANNEL_CREATE", a, {"direction": "inbound", "vars": common}),
        ("CHANNEL_CREATE", b, {"direction": "outbound", "other_leg_uuid": a, "vars": carrier,
                               "gateway": "globex_gw1"}),
        ("CHANNEL_ANSWER", b, {"direction": "outbound", "other_leg_uuid": a, "vars": carrier,
                               "gateway": "globex_gw1", "answered_us": t_ans}),
        ("CHANNEL_ANSWER", a, {"direction": "inbound", "vars": common, "answered_us": t_ans}),
        ("CHANNEL_BRIDGE", a, {"direction": "inbound", "vars": common, "other_leg_uuid": b,
                               "answered_us": t_ans}),
        ("CHANNEL_HANGUP_COMPLETE", b, {"direction": "outbound", "other_leg_uuid": a,
                                        "vars": carrier, "gateway": "globex_gw1",
                                        "answered_us": t_ans, "hangup_us": t_end,
                                        "hangup_cause": "NORMAL_CLEARING", "sip_status": 200,
                                        "billmsec": 30_000}),
        ("CHANNEL_HANGUP_COMPLETE", a, {"direction": "inbound", "vars": common,
                                        "answered_us": t_ans, "hangup_us": t_end,
                                        "hangup_cause": "NORMAL_CLEARING", "billmsec": 30_000}),
    ]
    out = []
    for name, uuid, kw in steps:
        seq += 1
        out.append(ChannelEvent(name=name, uuid=uuid, call_uuid=a, core_uuid=CORE,
                                sequence=seq, timestamp_us=ts or T0 + seq, created_us=T0, **kw))
    return out


def burst(prefix, n):
    # As the dispatcher does: handle, and let other greenlets run between reads.
    events = [e for i in range(n) for e in call_events(f"{prefix}{i}")]
    began = time.perf_counter()
    for i, event in enumerate(events):
        daemon.handle_event(event)
        if i % 100 == 99:
            gevent.sleep(0)
    return len(events), time.perf_counter() - began


def wait_written(n, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = daemon.writer.stats()
        if stats["written"] >= n and stats["queue_depth"] == 0:
            return
        gevent.sleep(0.05)


def wait_parent():
    # In a thread: a blocking read here would freeze every greenlet, the writer's open
    # transaction included, and the parent's LOCK TABLE would wait on us forever.
    gevent.get_hub().threadpool.apply(sys.stdin.readline)


if mode == "slow_db":
    n = int(sys.argv[5])
    count, unlocked = burst("warm", n)      # the same burst with a free database
    wait_written(n)
    gevent.sleep(0.3)
    written_before = daemon.writer.written
    say(phase="ready", events=count, seconds=unlocked, written=written_before)
    wait_parent()                            # the parent now holds the lock
    gaps = []
    def ticker():
        last = time.perf_counter()
        while True:
            gevent.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
    tick = gevent.spawn(ticker)
    count, locked = burst("slow", n)
    gevent.sleep(1.0)                        # the writer sits on the lock meanwhile
    tick.kill()
    say(phase="burst", events=count, seconds=locked, live=len(daemon.registry),
        written=daemon.writer.written - written_before, max_gap=max(gaps), ticks=len(gaps))
    wait_parent()                            # the parent released the lock
    wait_written(2 * n)
    daemon.stop()
    say(phase="done")
else:   # poison: the real dispatcher greenlet, one event whose handling raises
    conn = ESLConnection("127.0.0.1", int(esl_port), "x-test", on_event=daemon.handle_event)
    dispatcher = gevent.spawn(conn.process_events)
    real_submit = daemon.writer.submit_event
    def submit_event(record):
        if record.leg_uuid == uid("a-poison"):
            raise RuntimeError("injected handler bug")
        real_submit(record)
    daemon.writer.submit_event = submit_event
    before = ESL_HANDLER_ERRORS.labels("CHANNEL_CREATE")._value.get()
    events = call_events("poison")[:1]                         # raises in the handler
    events += call_events("future", ts=10 ** 19)[:1]             # absurd timestamp: tolerated
    events += [e for i in range(20) for e in call_events(f"after{i}")]
    for event in events:
        conn.post(event)
    deadline = time.monotonic() + 10
    while conn._events.qsize() and time.monotonic() < deadline:
        gevent.sleep(0.02)
    gevent.sleep(0.2)
    live = sorted(c.call_uuid for c in daemon.registry.live_calls())
    live = ["a-future" if u == uid("a-future") else u for u in live]
    errors = ESL_HANDLER_ERRORS.labels("CHANNEL_CREATE")._value.get() - before
    say(phase="handled", live=live, errors=errors, dispatcher_alive=not dispatcher.dead)
    gevent.sleep(1.0)
    daemon.stop()
    say(phase="done")
"""


@pytest.fixture
def world_url(migrated_pg_url, tmp_path):
    provision(migrated_pg_url, write_world(tmp_path))
    return migrated_pg_url


def _spawn(mode, url, tmp_path, *extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHD_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen([sys.executable, "-c", _CHILD, mode, url, str(tmp_path),
                             str(free_port()), *map(str, extra)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT)


def _read(child, timeout=20.0) -> dict:
    # A child whose loop is blocked prints nothing at all: fail, do not hang.
    ready, _, _ = select.select([child.stdout], [], [], timeout)
    assert ready, "the child printed nothing: its event loop is blocked"
    line = child.stdout.readline()
    assert line, f"the child exited with {child.wait()}"
    return json.loads(line)


def _tell(child) -> None:
    child.stdin.write("go\n")
    child.stdin.flush()


def _uid(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def _count(url, table, where="TRUE") -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()[0]


def test_slow_database_does_not_slow_event_intake(world_url, tmp_path):
    child = _spawn("slow_db", world_url, tmp_path, CALLS)
    try:
        warm = _read(child, timeout=30)
        assert warm["events"] == CALLS * EVENTS_PER_CALL and warm["written"] == CALLS, warm
        with psycopg.connect(world_url) as locker:
            locker.execute("SET lock_timeout = '10s'")
            locker.execute("LOCK TABLE calls, call_legs, call_events IN ACCESS EXCLUSIVE MODE")
            _tell(child)
            burst = _read(child)
            print("free database:", warm, "\nlocked database:", burst)
            # The database took nothing the whole time, yet every event was applied at the
            # speed of a free database and the loop kept ticking every 10 ms.
            assert burst["written"] == 0, burst
            assert burst["live"] == 0, burst              # all 300 calls ended in memory
            assert burst["seconds"] < max(1.0, 4 * warm["seconds"]), (warm, burst)
            # A hub blocked on the locked tables would not tick again before this test
            # releases them (after this read): 2 s of slack is a busy machine's, no more.
            assert burst["max_gap"] < 2.0 and burst["ticks"] > 50, burst
            locker.commit()                                # the database is back
        _tell(child)
        assert _read(child, timeout=30)["phase"] == "done"
        assert child.wait(timeout=15) == 0
    finally:
        if child.poll() is None:
            child.kill()
    # What was queued behind the lock landed: both bursts, every call, leg and event.
    assert _count(world_url, "calls") == 2 * CALLS
    assert _count(world_url, "call_legs") == 2 * 2 * CALLS
    assert _count(world_url, "call_events") == 2 * CALLS * EVENTS_PER_CALL
    assert _count(world_url, "calls", "carrier = 'globex' AND billed_seconds = 30") == 2 * CALLS


def test_handler_exception_on_one_event_never_stops_the_loop(world_url, tmp_path):
    child = _spawn("poison", world_url, tmp_path)
    try:
        handled = _read(child, timeout=30)
        assert handled["errors"] == 1 and handled["dispatcher_alive"], handled
        # The poisoned CREATE was lost (its call never started); the absurd timestamp was
        # tolerated (that call is live, as its only event said); the 20 after both ended.
        assert handled["live"] == ["a-future"], handled
        assert _read(child, timeout=30)["phase"] == "done"
        assert child.wait(timeout=15) == 0
    finally:
        if child.poll() is None:
            child.kill()
    assert _count(world_url, "calls") == 20
    assert _count(world_url, "call_events", f"leg_uuid = '{_uid('a-future')}'") == 1
    assert _count(world_url, "call_events", f"leg_uuid = '{_uid('a-poison')}'") == 0
