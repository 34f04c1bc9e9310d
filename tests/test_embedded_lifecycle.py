"""The embedded PostgreSQL's life through real `switchd` commands: a one-shot command stops
what it started and reuses what runs; server output goes to DATA_DIR/postgres.log; `db
status|stop`; the demo leaves nothing behind, or keeps data `switchd report` can read.
Processes are found by data directory (/proc), so other tests' servers never count."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from cli_harness import ROOT, assert_one_line_failure, cli_env, postgres_pids, run_cli
from switchd.adapters.db.embedded import EmbeddedPostgres

INITDB_CHATTER = "The files belonging to this database system"
DEMO_CONTRACT_KEYS = {"calls", "answered", "failed", "total_cost", "by_carrier", "failovers",
                      "cdrs_stored"}


@pytest.fixture
def data_dir(tmp_path):
    path = tmp_path / "data"
    yield path
    EmbeddedPostgres(path).stop()          # whatever a failed test left, never a leak


def test_a_one_shot_command_stops_the_server_it_started(data_dir):
    env = cli_env(SWITCHD_DATA_DIR=str(data_dir))
    out = run_cli("migrate", env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("applied 001") and out.stderr == ""
    assert postgres_pids(data_dir) == []
    log = (data_dir / "postgres.log").read_text()
    assert INITDB_CHATTER in log and "database system is shut down" in log

    out = run_cli("migrate", env=env)
    assert (out.returncode, out.stdout.strip(), out.stderr) == (0, "database is up to date", "")
    assert postgres_pids(data_dir) == []


def test_a_running_server_is_reused_left_running_and_stopped_by_db_stop(data_dir):
    daemon_side = EmbeddedPostgres(data_dir)      # what `switchd run` would have started
    assert daemon_side.start() is True
    pid = daemon_side.status().pid
    env = cli_env(SWITCHD_DATA_DIR=str(data_dir))

    assert run_cli("migrate", env=env).returncode == 0
    assert daemon_side.status().pid == pid and postgres_pids(data_dir)

    status = json.loads(run_cli("db", "status", "--json", env=env).stdout)
    assert status["running"] is True and status["pid"] == pid
    assert status["data_dir"] == str(data_dir.resolve()) and status["size_bytes"] > 1_000_000
    text = run_cli("db", "status", "--data-dir", data_dir, env=cli_env()).stdout
    assert f"running, pid {pid}" in text and str(data_dir.resolve()) in text

    with psycopg.connect(daemon_side.url("switchd")):        # a client, as the daemon is
        out = run_cli("db", "stop", env=env)
        assert_one_line_failure(out, 1, "1 client(s) are connected", "--force")
        assert daemon_side.status().running
        out = run_cli("db", "stop", "--force", env=env)
        assert out.returncode == 0 and f"pid {pid}" in out.stdout, out.stderr
    assert postgres_pids(data_dir) == []
    status = json.loads(run_cli("db", "status", "--json", env=env).stdout)
    assert status["running"] is False and status["pid"] is None
    out = run_cli("db", "stop", env=env)
    assert out.returncode == 0 and "no embedded PostgreSQL is running" in out.stdout


def test_a_server_orphaned_by_its_starter_is_stopped_by_the_last_command_out(data_dir):
    # A command that started the server and left it to a client still connected, then
    # exited: the next command to end with nobody else connected stops it.
    started = subprocess.run(
        [sys.executable, "-c", "import sys; from switchd.adapters.db.embedded import EmbeddedPostgres; "
         "print(EmbeddedPostgres(sys.argv[1]).start())", str(data_dir)],
        env=cli_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert started.stdout.strip() == "True", started.stderr
    assert postgres_pids(data_dir) and EmbeddedPostgres(data_dir).orphaned()
    out = run_cli("migrate", env=cli_env(SWITCHD_DATA_DIR=str(data_dir)))
    assert out.returncode == 0, out.stderr
    assert postgres_pids(data_dir) == []
    assert not (data_dir / "postgres.owner").exists()


def test_db_status_of_a_fresh_data_dir_creates_nothing(data_dir):
    out = run_cli("db", "status", env=cli_env(SWITCHD_DATA_DIR=str(data_dir)))
    assert out.returncode == 0 and "no embedded PostgreSQL here yet" in out.stdout
    assert not (data_dir / "postgres").exists()


def _demo_env(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    return scratch, cli_env(TMPDIR=str(scratch))


@pytest.mark.slow
def test_the_demo_leaves_no_postgres_and_no_directory_behind(tmp_path):
    scratch, env = _demo_env(tmp_path)
    out = run_cli("demo", "--calls", "20", "--json", env=env, timeout=180)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert DEMO_CONTRACT_KEYS <= set(summary)
    assert summary["calls"] == summary["cdrs_stored"] == 20
    assert summary["inbound"] + summary["outbound"] == 20 and summary["inbound"] >= 1
    assert summary["attempts"] >= summary["outbound"] and summary["currency"] == "EUR"
    assert summary["data_dir"] is None
    assert list(scratch.iterdir()) == []
    assert postgres_pids(scratch) == []


@pytest.mark.slow
def test_demo_keep_keeps_its_directory_for_report(tmp_path):
    scratch, env = _demo_env(tmp_path)
    out = run_cli("demo", "--calls", "5", "--keep", "--json", env=env, timeout=180)
    assert out.returncode == 0, out.stderr
    kept = Path(json.loads(out.stdout)["data_dir"])
    assert kept.parent == scratch.resolve() and (kept / "postgres" / "PG_VERSION").exists()
    assert f"switchd report --data-dir {kept}" in out.stderr
    assert postgres_pids(scratch) == []
    out = run_cli("report", "--by", "tenant", "--json", "--data-dir", kept, env=env)
    assert out.returncode == 0, out.stderr
    assert sum(r["calls"] for r in json.loads(out.stdout)) == 5
    assert postgres_pids(scratch) == []


@pytest.mark.slow
def test_an_interrupted_demo_cleans_up(tmp_path):
    scratch, env = _demo_env(tmp_path)
    # Ctrl-C: SIGINT handled as Python does by default (a shell's background job ignores it).
    proc = subprocess.Popen([sys.executable, "-m", "switchd.cli", "demo", "--calls", "5000"],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while not postgres_pids(scratch) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert postgres_pids(scratch), "the demo never started its PostgreSQL"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "switchd demo: interrupted" and "Traceback" not in err
    assert postgres_pids(scratch) == []
    assert list(scratch.iterdir()) == []


@pytest.mark.slow
def test_kept_demo_data_is_read_by_report_with_its_calls_in_the_past(tmp_path, data_dir):
    out = run_cli("demo", "--calls", "20", "--json", "--data-dir", data_dir, timeout=180)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["data_dir"] == str(data_dir.resolve())
    assert "switchd report --data-dir" in out.stderr
    assert postgres_pids(data_dir) == []

    out = run_cli("report", "--by", "tenant", "--json", "--data-dir", data_dir)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert sum(r["calls"] for r in rows) == summary["calls"] == 20
    assert sum(Decimal(r["cost"]) for r in rows) == Decimal(summary["total_cost"])
    # A later --until widens the window; it never hides the last 30 days.
    out = run_cli("report", "--by", "tenant", "--json", "--until", "2099-01-01", "--data-dir", data_dir)
    assert sum(r["calls"] for r in json.loads(out.stdout)) == 20
    assert postgres_pids(data_dir) == []

    server = EmbeddedPostgres(data_dir)
    server.start()
    try:
        with psycopg.connect(server.url("switchd")) as conn:
            in_future = conn.execute("SELECT count(*) FROM calls WHERE started_at > now() "
                                     "OR ended_at > now()").fetchone()[0]
            # every call settled by the simulated switch's own CDR, none left provisional
            settled = conn.execute("SELECT count(*) FILTER (WHERE cdr_source = 'switch' AND "
                                   "NOT provisional), count(*) FROM calls").fetchone()
    finally:
        server.stop()
    assert in_future == 0
    assert settled == (20, 20)

    again = run_cli("demo", "--calls", "10", "--json", "--data-dir", data_dir, timeout=180)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["cdrs_stored"] == 10          # a kept demo starts over


def test_the_demo_refuses_a_data_dir_it_did_not_create(data_dir):
    assert run_cli("migrate", env=cli_env(SWITCHD_DATA_DIR=str(data_dir))).returncode == 0
    out = run_cli("demo", "--calls", "5", "--data-dir", data_dir)
    assert_one_line_failure(out, 2, str(data_dir.resolve()), "did not create", "new directory")
