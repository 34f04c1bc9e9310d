"""Campaigns end to end: `switchd run` dialling through the real originator into the
FreeSWITCH simulator, state in a real PostgreSQL. What is asserted comes from the
simulator's own record of the originates it received (number, start time), never from
the daemon's view of itself. Synchronised on database rows, never on sleeps."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from conftest import E2E_PASSWORD
from daemon_harness import DaemonProcess, metric, rows, wait_for
from switchd.api import keys, webhooks
from switchd.sim import GatewayBehaviour, Simulator
from api_helpers import Receiver, helper_port
from test_e2e_api import request

ROOT = Path(__file__).resolve().parent.parent
FAST = {"SWITCHD_DIALER_LEASE_SECONDS": "2"}


def _sim(seed: int, **kwargs) -> Simulator:
    # Real time (time_scale 1): the pace is measured on the simulator's clock.
    kwargs.setdefault("hold_range", (0.3, 0.6))
    return Simulator(password=E2E_PASSWORD, seed=seed, time_scale=1.0, heartbeat_interval=None,
                     default_gateway=GatewayBehaviour(answer_delay_s=0.2), **kwargs)


@pytest.fixture
def nodes(world_url, tmp_path):
    """nodes(count) → [(sim, daemon)], each daemon on its own simulated switch, one database."""
    started = []

    def start(count=1, env=None, **sim_kwargs):
        for i in range(count):
            sim = _sim(40 + len(started), **sim_kwargs)
            _, port = sim.start()
            data_dir = tmp_path / f"node{len(started)}"
            data_dir.mkdir()
            daemon = DaemonProcess(world_url, port, E2E_PASSWORD, data_dir,
                                   extra_env={**FAST, **(env or {})})
            started.append((sim, daemon))
            daemon.start()
            sim.dialplan_url = daemon.base_url + "/fs/dialplan"
        return started
    yield start
    for sim, daemon in started:
        rc = daemon.terminate()
        sim.stop()
        assert rc in (0, -9), daemon.log()[-3000:]


def originates(*sims) -> list[tuple[str, int]]:
    """(number, start time in µs of the switch's clock) of every originate each switch got."""
    return [("+" + c.destination.lstrip("+"), c.legs[0].created_us)
            for sim in sims for c in list(sim.calls) if c.kind == "originate" and c.legs]


def measured_rate(starts: list[int]) -> float:
    starts = sorted(starts)
    return (len(starts) - 1) / ((starts[-1] - starts[0]) / 1e6)


def campaign_state(url, name):
    found = rows(url, "SELECT state FROM campaigns WHERE name = %s", name)
    return found[0][0] if found else None


def _create(daemon, key, name, n, first=1000, **settings):
    body = {"name": name, **settings,
            "contacts": [{"number": f"+44207946{first + i}"} for i in range(n)]}
    status, _, out = request(daemon, "POST", "/v1/campaigns", key, body)
    assert status == 201, out
    return [c["number"] for c in body["contacts"]]


@pytest.fixture
def key(world_url):
    with psycopg.connect(world_url, autocommit=True) as conn:
        return keys.create(conn, tenant="acme")[0]


@pytest.mark.slow
def test_pace_measured_on_the_switch_and_pause_resume_stop(world_url, nodes, key):
    (sim, daemon), = nodes(1)
    numbers = _create(daemon, key, "paced", 60, pace_cps=8, max_concurrent=50)
    assert request(daemon, "POST", "/v1/campaigns/paced/start", key)[0] == 200
    wait_for(lambda: len(originates(sim)) >= 24, 30, "24 calls placed", daemon)
    status, _, body = request(daemon, "POST", "/v1/campaigns/paced/pause", key,
                              {"reason": "lunch"})
    assert status == 200 and body["state"] == "paused" and body["state_reason"] == "lunch"
    # Calls in progress finish; nothing new is claimed while paused.
    wait_for(lambda: rows(world_url, "SELECT count(*) FROM campaign_contacts "
                                     "WHERE state IN ('dialing', 'live')")[0][0] == 0,
             30, "calls in progress finished", daemon)
    during = len(originates(sim))
    pending = rows(world_url, "SELECT count(*) FROM campaign_contacts WHERE state = 'pending'")[0][0]
    assert during + pending == 60
    assert request(daemon, "POST", "/v1/campaigns/paced/resume", key)[0] == 200
    wait_for(lambda: len(originates(sim)) >= during + 16, 30, "dialling resumed", daemon)
    assert request(daemon, "POST", "/v1/campaigns/paced/stop", key)[2]["state"] == "stopped"
    wait_for(lambda: rows(world_url, "SELECT count(*) FROM campaign_contacts "
                                     "WHERE state IN ('dialing', 'live')")[0][0] == 0,
             30, "calls in progress finished after stop", daemon)
    placed = originates(sim)
    counts = Counter(n for n, _ in placed)
    assert max(counts.values()) == 1 and set(counts) <= set(numbers)
    left = rows(world_url, "SELECT count(*) FROM campaign_contacts WHERE state = 'pending'")[0][0]
    assert left == 60 - len(placed) and left > 0          # stopped: the rest never dialled
    first_run = sorted(t for _, t in placed)[:during]
    rate = measured_rate(first_run)
    assert 8 * 0.85 <= rate <= 8 * 1.1, rate
    status, _, body = request(daemon, "GET", "/v1/campaigns/paced", key)
    assert body["progress"]["done"] == len(placed)
    assert body["progress"]["outcomes"]["answered"] == len(placed)


@pytest.mark.slow
def test_sigkill_mid_campaign_then_restart_dials_nobody_twice(world_url, nodes, key):
    (sim, daemon), = nodes(1, hold_range=(1.0, 2.0))
    numbers = _create(daemon, key, "crash", 50, pace_cps=10, max_concurrent=30, start=True)
    wait_for(lambda: rows(world_url, "SELECT count(*) FROM campaign_contacts WHERE state "
                                     "IN ('dialing', 'live')")[0][0] >= 5
             and len(originates(sim)) >= 12, 30, "calls in flight", daemon)
    daemon.kill()                                     # SIGKILL: no drain, claims left behind
    at_kill = len(originates(sim))
    left = rows(world_url, "SELECT count(*) FROM campaign_contacts WHERE state "
                           "IN ('dialing', 'live')")[0][0]
    assert left > 0
    restarted = DaemonProcess(world_url, sim.address[1], E2E_PASSWORD, daemon.data_dir,
                              extra_env=FAST)
    restarted.start()
    sim.dialplan_url = restarted.base_url + "/fs/dialplan"
    try:
        wait_for(lambda: campaign_state(world_url, "crash") == "completed", 60,
                 "campaign completed after the restart", restarted)
        placed = Counter(n for n, _ in originates(sim))
        assert max(placed.values()) == 1, [n for n, c in placed.items() if c > 1]
        assert len(originates(sim)) > at_kill          # the restarted daemon went on
        outcomes = dict(rows(world_url, "SELECT number, outcome FROM campaign_contacts"))
        assert set(outcomes) == set(numbers)
        # every contact the switch never saw is one nobody dialled, and vice versa
        dialled = {n for n, o in outcomes.items() if o not in ("unknown", "refused", "dnc")}
        assert dialled <= set(placed)
        assert set(placed) - dialled <= {n for n, o in outcomes.items() if o == "unknown"}
        settled = rows(world_url, "SELECT count(*) FROM campaign_contacts "
                                  "WHERE detail LIKE 'daemon %% stopped %%'")[0][0]
        assert settled >= 1          # the killed daemon's claims were settled, not re-dialled
    finally:
        assert restarted.terminate() == 0, restarted.log()[-3000:]


@pytest.mark.slow
def test_two_daemons_on_two_switches_share_one_campaign_without_duplicates(world_url, nodes,
                                                                          key):
    (sim_a, daemon_a), (sim_b, daemon_b) = nodes(2)
    with psycopg.connect(world_url, autocommit=True) as conn:
        webhooks.set_webhook(conn, "acme", "http://127.0.0.1:9/down")
    numbers = _create(daemon_a, key, "shared", 120, pace_cps=20, max_concurrent=40, start=True)
    wait_for(lambda: campaign_state(world_url, "shared") == "completed", 60,
             "campaign completed", daemon_a)
    placed = originates(sim_a, sim_b)
    counts = Counter(n for n, _ in placed)
    assert sorted(counts) == sorted(numbers) and max(counts.values()) == 1
    a, b = len(originates(sim_a)), len(originates(sim_b))
    assert a > 10 and b > 10, (a, b)                 # both dialled
    rate = measured_rate([t for _, t in placed])    # the pace is the campaign's, not per node
    assert 20 * 0.85 <= rate <= 20 * 1.1, rate
    # both daemons look for finished campaigns; the completion is announced once
    assert rows(world_url, "SELECT event, call_uuid FROM webhook_outbox "
                           "WHERE event LIKE 'campaign.%%'") == [("campaign.completed",
                                                                 "campaign:shared")]


# --- docs/api.md, followed as written ---------------------------------------------------------------
def _doc_steps() -> list[str]:
    text = (ROOT / "docs" / "api.md").read_text()
    block = text.split("<!-- campaign-steps", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    steps, current = [], ""
    for line in block.splitlines():
        line = line.split(" #", 1)[0].rstrip() if not line.strip().startswith("#") else ""
        if not line:
            continue
        current += line.rstrip("\\") + " "
        if not line.endswith("\\"):
            steps.append(current.strip())
            current = ""
    return steps


def _doc_webhook_step() -> str:
    """The doc's command that sets the tenant's webhook (the first of its Webhooks block)."""
    text = (ROOT / "docs" / "api.md").read_text()
    block = text.split("## Webhooks", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    command = ""
    for line in filter(str.strip, block.splitlines()):
        command += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            return command.strip()
    raise AssertionError("no command in docs/api.md's Webhooks block")


def _event_stream_is_signed_and_complete(deliveries, secret, calls: int, name: str,
                                         url: str) -> None:
    """What an application receives: every delivery signed (checked with the doc's own
    verify), and per call events numbered 1..n, `created` first, exactly one final event."""
    from test_webhooks import doc_verify
    verify = doc_verify()
    assert all(verify(secret, d["headers"]["Switchd-Signature"], d["body"]) for d in deliveries)
    events = {}
    for d in deliveries:                      # at least once: deduplicate on event_id
        event = json.loads(d["body"])
        events[event["event_id"]] = event
    per_call: dict[str, list[dict]] = {}
    for event in events.values():
        if event["event"] in ("created", "ringing", "answered", "completed", "busy",
                              "no-answer", "failed"):
            per_call.setdefault(event["call_uuid"], []).append(event)
    assert len(per_call) == calls
    finals = ("completed", "busy", "no-answer", "failed")
    for call_uuid, got in per_call.items():
        got.sort(key=lambda e: e["sequence"])
        assert [e["sequence"] for e in got] == list(range(1, len(got) + 1)), got
        assert got[0]["event"] == "created" and got[-1]["event"] == "completed", got
        assert sum(e["event"] in finals for e in got) == 1, got
    # the final event carries the call's CDR: its billed seconds and cost
    cdrs = {c: (billed, str(cost)) for c, billed, cost in rows(
        url, "SELECT call_uuid, billed_seconds, cost FROM calls WHERE call_uuid = ANY(%s)",
        list(per_call))}
    assert {c: (got[-1]["data"]["duration_seconds"], got[-1]["data"]["cost"])
            for c, got in per_call.items()} == cdrs
    assert any(e["event"] == "campaign.completed" and name in json.dumps(e)
               for e in events.values())


@pytest.mark.slow
def test_a_1000_contact_campaign_following_docs_api_md(world_url, nodes, tmp_path):
    (sim, daemon), = nodes(1, sessions_per_second=None)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHD_")}
    env.update(PYTHONPATH=str(ROOT), SWITCHD_DATABASE_URL=world_url,
               SWITCHD_DATA_DIR=str(tmp_path))
    import gevent

    def sh(command: str) -> str:
        out = gevent.get_hub().threadpool.apply(
            subprocess.run, (["bash", "-c", command],),
            {"env": env, "cwd": tmp_path, "capture_output": True, "text": True, "timeout": 60})
        assert out.returncode == 0, (command, out.stderr)
        return out.stdout
    # "Create keys with the CLI" — the doc's own command, then its campaign steps.
    env["KEY"] = sh(f"{sys.executable} -m switchd.cli keys create --tenant acme").strip()
    env["API"] = daemon.base_url
    # "Webhooks": the doc's command, pointed at this test's receiver; its answer holds the secret.
    receiver = Receiver(helper_port(4)).up()
    secret = json.loads(sh(_doc_webhook_step().replace("https://app.example/hooks/switchd",
                                                       receiver.url)))["secret"]
    (tmp_path / "contacts.csv").write_text(
        "number,first_name\n" + "".join(f"+4420794{60000 + i},n{i}\n" for i in range(1000)))
    steps = _doc_steps()
    assert any("text/csv" in s for s in steps) and any("/start" in s for s in steps)
    answers = [sh(step) for step in steps]
    parsed = [json.loads(a) for a in answers]
    assert all("error" not in a for a in parsed), [a for a in parsed if "error" in a]
    name = re.search(r'"name": "([^"]+)"', steps[0]).group(1)
    pace = float(re.search(r'"pace_cps": ([0-9.]+)', steps[0]).group(1))
    wait_for(lambda: campaign_state(world_url, name) == "completed", 120,
             "1000-contact campaign completed", daemon)
    placed = originates(sim)
    counts = Counter(n for n, _ in placed)
    assert len(counts) == 1000 and max(counts.values()) == 1
    rate = measured_rate([t for _, t in placed])
    # The pace is a ceiling the operator sets (a carrier's CPS): never above it. Below
    # it only shows a dialer that stalls; a loaded test machine can fall behind a bit.
    assert pace * 0.6 <= rate <= pace * 1.1, rate
    status, _, body = request(daemon, "GET", f"/v1/campaigns/{name}", env["KEY"])
    assert body["state"] == "completed" and body["progress"]["done"] == 1000
    assert body["progress"]["outcomes"]["answered"] == 1000
    assert metric(daemon, "switchd_campaign_contacts_total", outcome="answered") == 1000
    try:
        finals = lambda: sum(b'"event": "completed"' in d["body"] or
                             b'"event":"completed"' in d["body"] for d in receiver.received)
        wait_for(lambda: finals() >= 1000 and any(b"campaign.completed" in d["body"]
                                                  for d in receiver.received),
                 180, "every call's final event at the tenant's webhook", daemon)
        _event_stream_is_signed_and_complete(list(receiver.received), secret, 1000, name,
                                             world_url)
    finally:
        receiver.down()


@pytest.mark.slow
def test_low_answer_rate_on_the_switch_pauses_the_campaign(world_url, nodes, key):
    (sim, daemon), = nodes(1)
    sim.default_gateway = GatewayBehaviour(fail_cause="USER_BUSY", fail_delay_s=0.1)
    _create(daemon, key, "busy", 30, pace_cps=10, max_concurrent=5, min_answer_rate=0.5,
            answer_rate_window=6, start=True)
    wait_for(lambda: campaign_state(world_url, "busy") == "paused", 30, "auto-pause", daemon)
    status, _, body = request(daemon, "GET", "/v1/campaigns/busy", key)
    assert body["state_reason"] == "answer rate 0.00 over the last 6 attempts is below 0.50"
    assert body["progress"]["outcomes"]["busy"] >= 6
    wait_for(lambda: rows(world_url, "SELECT count(*) FROM campaign_contacts "
                                     "WHERE state IN ('dialing', 'live')")[0][0] == 0,
             30, "calls in progress finished", daemon)
    placed = len(originates(sim))
    progress = request(daemon, "GET", "/v1/campaigns/busy", key)[2]["progress"]
    assert placed < 30 and placed == progress["done"] == progress["outcomes"]["busy"]
    assert progress["pending"] == 30 - placed


@pytest.mark.slow
def test_budget_refusal_pauses_the_campaign_with_the_reason(world_url, nodes, key):
    (sim, daemon), = nodes(1)
    # The operator (no http.api_token: requests without a key) lowers acme's budget.
    status, _, body = request(daemon, "PATCH", "/v1/tenants/acme", None,
                              {"monthly_budget": "0.000001"})
    assert status == 200, body
    _create(daemon, key, "broke", 5, pace_cps=5, start=True)
    wait_for(lambda: campaign_state(world_url, "broke") == "paused", 30, "budget pause", daemon)
    (reason,), = rows(world_url, "SELECT state_reason FROM campaigns WHERE name = 'broke'")
    assert reason.startswith("budget: ")
    assert originates(sim) == []
    # contacts claimed with it go back too: all five wait, to be dialled after a resume
    wait_for(lambda: rows(world_url, "SELECT state, count(*) FROM campaign_contacts "
                                     "GROUP BY 1") == [("pending", 5)], 30,
             "every contact pending again", daemon)
