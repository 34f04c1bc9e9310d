"""`switchd calls` against a running daemon (a real subprocess) with live calls, and
against nothing at all (DESIGN.md §6, §10: one-line reason, non-zero exit)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gevent
import pytest

from daemon_harness import free_port

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args, http_port: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHD_")}
    env.update({"SWITCHD_HTTP_PORT": str(http_port), "PYTHONPATH": str(ROOT)})
    run = lambda: subprocess.run([sys.executable, "-m", "switchd.cli", "calls", *args],
                                 env=env, cwd=ROOT, capture_output=True, text=True, timeout=30)
    # In a thread: the simulator's greenlets (this process) keep playing the calls meanwhile.
    return gevent.get_hub().threadpool.apply(run)


@pytest.fixture
def switch(world_url, start_switch):
    # Real time (scale 1), so the age the daemon reports is real seconds.
    return start_switch(world_url, seed=5, time_scale=1.0, answer_delay_s=0.2)


def test_calls_lists_live_calls_as_table_and_json(switch):
    sim, daemon = switch
    placed = [sim.place_call("+4930123456", accountcode="acme", hold_seconds=600),   # globex
              sim.place_call("02079460123", accountcode="acme", hold_seconds=600)]   # budgetel
    want = {c.uuid for c in placed}
    daemon.wait_until(lambda: want == {c["call_uuid"] for c in daemon.get("/v1/calls")[1]["calls"]
                                       if c["state"] == "answered" and c["gateway"]},
                      what="both calls answered and listed")
    gevent.sleep(1.1)                                     # an age of at least a second

    out = _cli("--json", http_port=daemon.http_port)
    assert out.returncode == 0, out.stderr
    rows = {r["call_uuid"]: r for r in json.loads(out.stdout)}
    assert set(rows) == want
    for call, gateway in zip(placed, ("globex_gw1", "budgetel_gw1")):
        row = rows[call.uuid]
        assert (row["tenant"], row["direction"], row["legs"], row["gateway"], row["state"]) == (
            "acme", "outbound", 2, gateway, "answered"), row
        assert 1 <= row["age_s"] < 60, row
        assert 0 < int(row["max_duration"]) <= 3600, row

    out = _cli(http_port=daemon.http_port)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["CALL", "UUID", "TENANT", "DIR", "LEGS", "GATEWAY", "STATE",
                                "AGE", "MAX"]
    assert lines[-1] == "2 live call(s)"
    for call, gateway in zip(placed, ("globex_gw1", "budgetel_gw1")):
        line = next(l for l in lines if l.startswith(call.uuid))
        cells = line.split()
        row = rows[call.uuid]
        assert cells[1:6] == ["acme", "outbound", "2", gateway, "answered"], line
        assert cells[6].endswith("s") and int(cells[6][:-1]) >= 1, line
        assert cells[7] == f"{row['max_duration']}s", line

    for call in placed:
        sim.kill_call(call.uuid)
        assert call.wait(10)
    daemon.wait_until(lambda: not daemon.get("/v1/calls")[1]["calls"], what="no live calls")
    out = _cli(http_port=daemon.http_port)
    assert out.returncode == 0 and out.stdout.splitlines()[-1] == "0 live call(s)", out


@pytest.mark.parametrize("args", [(), ("--json",)])
def test_calls_without_a_daemon_exits_5_with_one_line(args):
    port = free_port()                                    # nothing listens here
    out = _cli(*args, http_port=port)
    assert out.returncode == 5, out                       # unavailable dependency
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the daemon" in lines[0] and str(port) in lines[0], lines
