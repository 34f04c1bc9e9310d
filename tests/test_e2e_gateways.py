"""Gateway state follows the switch (DESIGN §5): FreeSWITCH deletes its gateways at shutdown
and adds them again at start before any ESL client connects, so switchd asks
`sofia xmlstatus gateway` on every connect. Simulator → `switchd run` (a real subprocess);
synchronised on /readyz, routing decisions and the call's own result."""
from __future__ import annotations

import pytest

from switchd.sim import GatewayBehaviour, Simulator
from daemon_harness import DaemonProcess, rows

pytestmark = pytest.mark.slow

PASSWORD = "gw-secret"
GATEWAYS = ("budgetel_gw1", "globex_gw1", "globex_gw2", "primo_gw1")


@pytest.fixture
def switch(world_url, tmp_path):
    sim = Simulator(password=PASSWORD, seed=5, time_scale=50.0, heartbeat_interval=None,
                    default_gateway=GatewayBehaviour(answer_delay_s=1.0))
    for name in GATEWAYS:
        sim.set_gateway_status(name, "UP")
    _, port = sim.start()
    daemon = DaemonProcess(world_url, port, PASSWORD, tmp_path)
    daemon.start()
    sim.dialplan_url = daemon.base_url + "/fs/dialplan"
    yield sim, daemon
    rc = daemon.terminate()
    sim.stop()
    assert rc == 0, daemon.log()[-3000:]


def _decision(url, call_uuid):
    found = rows(url, "SELECT result, reason, sip_code FROM routing_decisions "
                      "WHERE call_uuid = %s", call_uuid)
    return found[0] if found else None


def _call(sim, daemon, url):
    call = sim.place_call("+4930123456", accountcode="acme", hold_seconds=2)
    assert call.wait(30)
    return call, daemon.wait_until(lambda: _decision(url, call.uuid), what="routing decision")


def test_restart_deletes_gateways_then_the_connect_query_brings_them_back(switch, world_url):
    sim, daemon = switch
    call, decision = _call(sim, daemon, world_url)
    assert decision[0] == "routed" and call.result == "answered"

    sim.delete_gateways()            # the shutdown half of a restart, as captured
    daemon.wait_until(lambda: daemon.get("/readyz")[0] == 503, what="readyz 503, gateways down")
    status, body = daemon.get("/readyz")
    assert "all 4 provisioned gateway(s) down" in body["problems"]["gateways"]
    call, decision = _call(sim, daemon, world_url)
    assert decision[0] == "refused" and call.result != "answered"

    # FreeSWITCH starts again: gateways exist and are UP, but their gateway_add came
    # before we could connect. Only the query on connect can tell.
    for name in GATEWAYS:
        sim.set_gateway_status(name, "UP")
    sim.restart(down_seconds=0.2)
    daemon.wait_until(lambda: daemon.get("/readyz")[0] == 200, what="ready again")
    call, decision = _call(sim, daemon, world_url)
    assert decision[0] == "routed" and call.result == "answered"


def test_a_gateway_down_on_connect_is_skipped(switch, world_url):
    sim, daemon = switch
    call, _ = _call(sim, daemon, world_url)
    first = call.gateway
    sim.set_gateway_status(first, "DOWN")
    sim.restart(down_seconds=0.2)
    daemon.wait_until(lambda: daemon.get("/readyz")[0] == 200, what="ready again")
    daemon.wait_until(lambda: f"down: {first}" in daemon.log(), what="down set from the query")
    call, decision = _call(sim, daemon, world_url)
    assert decision[0] == "routed" and call.result == "answered"
    assert first not in [leg.gateway for leg in call.legs]
