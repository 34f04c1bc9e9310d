"""PDD from CHANNEL_PROGRESS, and a ring-out filed as no answer (simulator → `switchd run`
→ PostgreSQL). Simulated time: PDD comes out exact."""
from __future__ import annotations

import pytest

from switchd.sim import GatewayBehaviour
from daemon_harness import rows

pytestmark = pytest.mark.slow

GATEWAYS = ("budgetel_gw1", "globex_gw1", "globex_gw2", "primo_gw1")


def _legs(url, call_uuid):
    return rows(url, "SELECT gateway, pdd_ms, disposition, hangup_cause FROM call_legs "
                     "WHERE call_uuid = %s AND carrier IS NOT NULL ORDER BY started_at", call_uuid)


def _call_row(url, call_uuid):
    found = rows(url, "SELECT pdd_ms, disposition FROM calls WHERE call_uuid = %s "
                      "AND ended_at IS NOT NULL", call_uuid)
    return found[0] if found else None


def test_pdd_is_time_to_ringing_not_to_answer(switch, world_url):
    sim, daemon = switch
    for gw in GATEWAYS:
        sim.set_gateway(gw, GatewayBehaviour(progress_delay_s=0.8, answer_delay_s=3.0))
    call = sim.place_call("+4930123456", accountcode="acme", hold_seconds=5)
    assert call.wait(30)
    row = daemon.wait_until(lambda: _call_row(world_url, call.uuid), what="CDR")
    assert row == (800, "answered")
    (leg,) = _legs(world_url, call.uuid)
    assert leg[1] == 800 and leg[2] == "answered"
    names = rows(world_url, "SELECT name FROM call_events WHERE leg_uuid = %s ORDER BY event_seq",
                 call.legs[0].uuid)
    assert ("CHANNEL_PROGRESS",) in names        # subscribed and stored


def test_a_ring_out_is_no_answer_not_a_max_duration_cut(switch, world_url):
    sim, daemon = switch
    for gw in GATEWAYS:        # rings far beyond any leg_timeout
        sim.set_gateway(gw, GatewayBehaviour(progress_delay_s=0.5, answer_delay_s=10_000))
    call = sim.place_call("+4930123456", accountcode="acme", hold_seconds=5)
    assert call.wait(60)
    row = daemon.wait_until(lambda: _call_row(world_url, call.uuid), what="CDR")
    assert row == (500, "no_answer")
    legs = _legs(world_url, call.uuid)
    assert legs and all(l[2] == "no_answer" for l in legs)
