"""Two daemons on two simulated switches share one PostgreSQL: the tenant's webhook
receiver is down while calls are made through both, then comes up. Every event of every
call arrives, signed, and each row of the outbox was claimed and POSTed once (two
deliverers racing on FOR UPDATE SKIP LOCKED). Synchronised on database rows and on the
receiver, never on sleeps."""
from __future__ import annotations

import json

import psycopg
import pytest

from api_helpers import Receiver, helper_port
from conftest import E2E_PASSWORD
from daemon_harness import DaemonProcess, rows, wait_for
from switchd.api import keys, webhooks
from switchd.sim import GatewayBehaviour, Simulator
from test_e2e_api import request
from test_webhooks import doc_verify

FAST_RETRIES = {"SWITCHD_WEBHOOKS_BACKOFF_BASE": "0.2", "SWITCHD_WEBHOOKS_BACKOFF_MAX": "0.5"}


@pytest.fixture
def cluster(world_url, tmp_path):
    started = []
    for i in range(2):
        sim = Simulator(password=E2E_PASSWORD, seed=20 + i, time_scale=50.0,
                        heartbeat_interval=None,
                        default_gateway=GatewayBehaviour(answer_delay_s=1.0))
        _, port = sim.start()
        data_dir = tmp_path / f"node{i}"
        data_dir.mkdir()
        daemon = DaemonProcess(world_url, port, E2E_PASSWORD, data_dir, extra_env=FAST_RETRIES)
        started.append((sim, daemon))
        daemon.start()
        sim.dialplan_url = daemon.base_url + "/fs/dialplan"
    yield started
    for sim, daemon in started:
        rc = daemon.terminate()
        sim.stop()
        assert rc == 0, daemon.log()[-3000:]


@pytest.mark.slow
def test_receiver_down_then_up_gets_every_event_once_from_two_daemons(world_url, cluster):
    receiver = Receiver(helper_port(3))           # not listening yet
    with psycopg.connect(world_url, autocommit=True) as conn:
        key, _ = keys.create(conn, tenant="acme")
        secret = webhooks.set_webhook(conn, "acme", receiver.url)["secret"]
    try:
        placed = []
        for sim, daemon in cluster:
            for n in range(3):
                status, _, body = request(daemon, "POST", "/v1/calls", key,
                                          {"destination": f"+44207946{1000 + n}"})
                assert status == 200 and body["answered"], body
                placed.append(body["call_uuid"])
                sim.kill_call(body["call_uuid"])
        count = lambda q: rows(world_url, q)[0][0]  # noqa: E731
        daemon = cluster[0][1]
        # Every call's three events are in the outbox and have failed at least once.
        wait_for(lambda: count("SELECT count(*) FROM webhook_outbox WHERE attempts >= 1 "
                               "AND last_error IS NOT NULL") == 3 * len(placed),
                 30, "all events tried against the receiver while it is down", daemon)
        receiver.up()
        got = wait_for(lambda: len(receiver.received) >= 3 * len(placed) and receiver.received,
                       30, "every event delivered after the receiver came up", daemon)
        wait_for(lambda: count("SELECT count(*) FROM webhook_outbox WHERE delivered_at IS NULL") == 0,
                 30, "outbox fully delivered", daemon)
        events = [json.loads(d["body"]) for d in receiver.received]
        ids = [e["event_id"] for e in events]
        assert len(ids) == len(set(ids)) == 3 * len(placed)           # each once
        verify = doc_verify()
        assert all(verify(secret, d["headers"]["Switchd-Signature"], d["body"]) for d in got)
        by_call = {}
        for e in events:
            by_call.setdefault(e["call_uuid"], []).append((e["sequence"], e["event"]))
        assert set(by_call) == set(placed)
        for seq in by_call.values():
            assert sorted(seq) == [(1, "created"), (2, "answered"), (3, "completed")]
        # One row per event, and no row was POSTed successfully twice: its last try succeeded.
        assert count("SELECT count(*) FROM webhook_outbox") == 3 * len(placed)
    finally:
        receiver.down()
