"""Gateway state on the real switch: a FreeSWITCH restart deletes every gateway
(sofia::gateway_delete) and adds them back before switchd can reconnect; the query on
connect brings them back up in switchd and calls route again. A stopped carrier's gateway
goes DOWN (a sofia::gateway_state event) and is skipped."""
from __future__ import annotations

import pytest

from . import world
from .common import poll

pytestmark = pytest.mark.realswitch


def test_restart_brings_the_gateways_back_and_calls_route_again(realswitch, rs_daemon):
    daemon = rs_daemon.process
    assert realswitch.call(world.US_NUMBER, hold_ms=500).code == 200
    realswitch.restart()
    # The daemon saw the deletes, lost ESL, reconnected and asked the switch.
    marker = "gateway gw_a is now down"
    rs_daemon.wait_until(lambda: marker in daemon.log(), what="gateway_delete seen at shutdown")
    rs_daemon.wait_until(lambda: "gateways on the switch: 3, down: none" in
                         daemon.log().split(marker, 1)[1],
                         timeout=60, what="gateway state rebuilt after the restart")
    status, body = daemon.get("/readyz")
    assert status == 200, body
    result = realswitch.call(world.US_NUMBER, hold_ms=500)
    assert result.code == 200, result
    assert [h.gateway for h in realswitch.wait_call(result)[1:]] == ["gw_a"]


def test_a_stopped_carrier_is_skipped(realswitch, rs_daemon):
    realswitch.carrier("gw_a").set_mode("down")
    poll(lambda: realswitch.gateway_state("gw_a") == "DOWN", 30, "gw_a DOWN on the switch")
    rs_daemon.wait_until(lambda: "gateway gw_a is now down" in rs_daemon.process.log(),
                         what="switchd sees gw_a down")
    result = realswitch.call(world.US_NUMBER, hold_ms=500)
    assert result.code == 200, result
    assert [h.gateway for h in realswitch.wait_call(result)[1:]] == ["gw_b"]
    assert realswitch.invites()["gw_a"] == 0


def test_readyz_says_so_when_every_gateway_is_down(realswitch, rs_daemon):
    for gw in ("gw_a", "gw_b", "gw_c"):
        realswitch.carrier(gw).set_mode("down")
    rs_daemon.wait_until(lambda: rs_daemon.process.get("/readyz")[0] == 503, timeout=45,
                         what="readyz 503 with every gateway down")
    body = rs_daemon.process.get("/readyz")[1]
    assert body["problems"]["gateways"].startswith("all 3 provisioned gateway(s) down")
