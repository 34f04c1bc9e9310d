"""The retry schedule against an injected clock: the real Daemon (real PostgreSQL, the demo
world) and the simulator in one child interpreter monkey-patched by gevent, as `switchd
run` is. The child gives the Originator and the RetryScheduler a clock it moves by hand,
so a retry 60 s (of that clock) away is placed at once, and exactly when it is due: not
one millisecond before. The child also listens on the final-outcome hook the campaign
dialer uses. It reports one JSON object per line; the parent asserts."""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from dialplan.retry import DEFAULT_POLICY, delay_ms, jitter_unit

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

_CHILD = r"""
from gevent import monkey; monkey.patch_all()
import json, sys
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
import gevent
from switchd.config import load_config
from switchd.daemon import Daemon
from switchd.sim import GatewayBehaviour, Simulator
from switchd.calls.originate import OriginateRequest

url, data_dir = sys.argv[1:3]
sim = Simulator(password="x-test", seed=5, time_scale=50.0, heartbeat_interval=None,
                default_gateway=GatewayBehaviour(answer_delay_s=1.0))
_, port = sim.start()
config = load_config(environ={"SWITCHD_DATA_DIR": data_dir, "SWITCHD_HTTP_PORT": "0",
                              "SWITCHD_ESL_PORT": str(port), "SWITCHD_ESL_PASSWORD": "x-test",
                              "SWITCHD_LOG_LEVEL": "warning"})
daemon = Daemon(config, url).start()
while not daemon.esl.connected:
    gevent.sleep(0.05)


class Clock:
    now = datetime(2026, 11, 30, 9, 0, 0, 123000, tzinfo=timezone.utc)

    def __call__(self):
        return self.now


clock = Clock()
daemon.originator.clock = clock
daemon.retries.clock = clock
finals = []
daemon.originator.add_final_listener(lambda final: finals.append(asdict(final)))
daemon.originator.add_final_listener(lambda final: 1 / 0)   # a broken listener stops nothing


def say(**kw):
    print(json.dumps(kw, default=str), flush=True)


def rows(call):
    return daemon.attempt_store.attempts(call)


def run_due(call, attempt):
    # move the clock to just before the retry is due, then to when it is due
    due = rows(call)[attempt - 1]["scheduled_at"]
    clock.now = due - timedelta(milliseconds=1)
    early = daemon.retries.step()
    gevent.sleep(0.6)                      # the daemon's own scheduler ticks too: same clock
    early_state = rows(call)[attempt - 1]["state"]
    clock.now = due
    daemon.retries.step()
    while rows(call)[attempt - 1]["state"] != "done":
        gevent.sleep(0.05)
    clock.now += timedelta(seconds=7)      # time the attempt took, on the injected clock
    return early, early_state

sim.set_gateway("budgetel_gw1", GatewayBehaviour(fail_cause="USER_BUSY", sip_status=486))
first = daemon.originator.originate(OriginateRequest.from_json(
    {"tenant": "acme", "destination": "02079460999", "reference": "contact-17",
     "retry": {"max_attempts": 3, "on": ["busy"]}}))
call = first["call_uuid"]
say(phase="first", outcome=first["outcome"], final=first["final"],
    next_attempt_at=first["next_attempt_at"], finals=len(finals))
early2 = run_due(call, 2)                 # busy again
sim.set_gateway("budgetel_gw1", GatewayBehaviour(answer_delay_s=1.0))
early3 = run_due(call, 3)                 # answered
say(phase="retries", early=[early2, early3], rows=rows(call), finals=finals)
sim.kill_call(rows(call)[2]["attempt_call_uuid"])

sim.set_gateway("budgetel_gw1", GatewayBehaviour(fail_cause="UNALLOCATED_NUMBER", sip_status=404))
before = len(finals)
gone = daemon.originator.originate(OriginateRequest.from_json(
    {"tenant": "acme", "destination": "02079460998", "retry": {"max_attempts": 3}}))
say(phase="permanent", outcome=gone["outcome"], final=gone["final"], finals=finals[before:],
    rows=rows(gone["call_uuid"]))
sim.set_gateway("budgetel_gw1", GatewayBehaviour(fail_cause="USER_BUSY", sip_status=486))
before = len(finals)
waiting = daemon.originator.originate(OriginateRequest.from_json(
    {"tenant": "acme", "destination": "02079460997", "reference": "c-9",
     "retry": {"max_attempts": 3}}))
cancelled = daemon.originator.cancel_retries(call_uuid=waiting["call_uuid"], why="stopped")
say(phase="cancel", final=waiting["final"], cancelled=cancelled, finals=finals[before:])
daemon.stop()
sim.stop()
"""


def test_retries_follow_the_injected_clock_and_the_final_hook_fires_once(world_url, tmp_path):
    child = subprocess.run([sys.executable, "-c", _CHILD, world_url, str(tmp_path)],
                           capture_output=True, text=True, timeout=180, cwd=ROOT,
                           env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert child.returncode == 0, child.stderr[-4000:]
    phases = {p["phase"]: p for p in map(json.loads, child.stdout.splitlines())}
    first = phases["first"]
    assert (first["outcome"], first["final"], first["finals"]) == ("busy", False, 0)

    retries = phases["retries"]
    rows = retries["rows"]
    call = rows[0]["attempt_call_uuid"]
    assert [r["outcome"] for r in rows] == ["busy", "busy", "answered"]
    # nothing placed a millisecond early: the rows were still pending then
    assert retries["early"] == [[0, "pending"], [0, "pending"]]
    for before, after in zip(rows, rows[1:]):
        n = before["attempt"]
        expected = timedelta(milliseconds=delay_ms(DEFAULT_POLICY, "busy", n,
                                                   jitter_unit(call, n)))
        scheduled = datetime.fromisoformat(after["scheduled_at"])
        assert scheduled - datetime.fromisoformat(before["ended_at"]) == expected
        assert datetime.fromisoformat(after["started_at"]) == scheduled     # placed when due
    # the default table: 60 s ±20 %, then 120 s ±20 %
    gaps = [datetime.fromisoformat(b["scheduled_at"]) - datetime.fromisoformat(a["ended_at"])
            for a, b in zip(rows, rows[1:])]
    assert timedelta(seconds=48) <= gaps[0] <= timedelta(seconds=72)
    assert timedelta(seconds=96) <= gaps[1] <= timedelta(seconds=144)
    (final,) = retries["finals"]
    assert final["call_uuid"] == call and final["outcome"] == "answered" and final["answered"]
    assert final["attempts"] == 3 and final["attempt_call_uuid"] == rows[2]["attempt_call_uuid"]
    assert final["carrier"] == "budgetel" and final["tenant"] == "acme"
    assert final["reference"] == "contact-17" and final["destination"] == "+442079460999"

    permanent = phases["permanent"]
    assert permanent["outcome"] == "invalid_number" and permanent["final"] is True
    (final,) = permanent["finals"]           # heard before originate() returned
    assert final["outcome"] == "invalid_number" and final["attempts"] == 1
    assert final["sip_status"] == 404 and len(permanent["rows"]) == 1
    assert final["reference"] is None

    cancel = phases["cancel"]
    assert cancel["final"] is False and cancel["cancelled"] == 1
    (final,) = cancel["finals"]
    assert (final["outcome"], final["attempts"], final["reference"], final["note"]) == (
        "cancelled", 1, "c-9", "stopped")
