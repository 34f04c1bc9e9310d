"""An attended transfer on a real FreeSWITCH 1.10.12: the transferor's two calls become
one, the two far parties bridged and talking, their own legs gone.

For a REFER with Replaces between two bridged calls, sofia joins the legs bridged to them
(`switch_ivr_uuid_bridge`, src/mod/endpoints/mod_sofia/sofia.c) and the transferor's
channels go. sipp plays one dialog a scenario, not the two a transferor holds, so these
tests join the carrier legs of two calls with the same `uuid_bridge`; the callers' legs
then end as they would (hangup_after_bridge). Each call's carrier leg talks on without
its A-leg, and the `sched_hangup` that was to cut it went with the A-leg."""
from __future__ import annotations

import json

import pytest

from daemon_harness import metric

from . import world
from .common import poll

pytestmark = pytest.mark.realswitch


def _transfer(realswitch, tenant: str) -> tuple[list[str], list[str]]:
    """Two calls answered on alpha, then their carrier legs joined: (callers' legs, their
    carrier legs), pairwise."""
    for _ in range(2):
        realswitch.call_async(world.US_NUMBER, tenant=tenant, hold_ms=120_000)

    def four_up():
        text = realswitch.api("show channels as json")
        rows = json.loads(text).get("rows") or []
        return rows if sum(r.get("callstate") == "ACTIVE" for r in rows) == 4 else None
    rows = poll(four_up, 20, "two calls answered")
    callers = [r["uuid"] for r in rows if r["direction"] == "inbound"]
    carrier_of = {r["call_uuid"]: r["uuid"] for r in rows if r["direction"] == "outbound"}
    carriers = [carrier_of[c] for c in callers]
    assert realswitch.api(f"uuid_bridge {carriers[0]} {carriers[1]}").startswith("+OK")
    # FreeSWITCH: the callers' legs end, the carrier legs talk on, bridged to each other
    gone = realswitch.wait_hangups(callers)
    assert all(h.cause == "NORMAL_CLEARING" for h in gone)
    assert not [h for h in realswitch.hangups() if h.uuid in carriers]
    return callers, carriers


def test_legs_talking_on_after_an_attended_transfer_are_cut_at_the_max_duration(
        realswitch, rs_daemon):
    """Tenant `brief` (max_call_seconds 3): with the A-legs gone, switchd's watchdog cuts
    the carrier legs at answer + 3 s + its 5 s grace, on FreeSWITCH itself (before, nothing
    did: the calls counted as ending and ran on until a party hung up)."""
    callers, carriers = _transfer(realswitch, "brief")
    ended = realswitch.wait_hangups(carriers, timeout=30)
    killed = [h for h in ended if h.cause == "ALLOTTED_TIMEOUT"]
    assert killed, [h.cause for h in ended]
    # killed by the watchdog (every second) once past 3 + 5 s of talk, not before; its
    # peer, answered a moment before or after it, ends with it
    assert all(8_000 <= h.billmsec <= 10_500 for h in killed), [h.billmsec for h in killed]
    assert all(h.billmsec <= 10_500 for h in ended), [h.billmsec for h in ended]
    assert metric(rs_daemon.process, "switchd_watchdog_kills_total") >= 1
    # each call billed by its own carrier leg, as FreeSWITCH measured it
    for caller, leg in zip(callers, ended):
        cdr = rs_daemon.wait_cdr(caller)
        assert (cdr["carrier"], cdr["billed_seconds"]) == ("alpha", leg.billsec)
        assert cdr["cost"] > 0


@pytest.mark.slow
def test_calls_joined_by_an_attended_transfer_stay_live_and_hold_their_slots(
        realswitch, make_rs_daemon):
    """alpha may carry two channels. After the transfer, the resyncs (every second here)
    find the carrier legs up without their A-legs. Past the sweep's grace (2 resync
    intervals and 30 s: 32 s here; it force-ended them at 30 s before), both calls are
    still live in switchd, alpha is still full (a new call goes to bravo), and each call
    is billed to its leg's real end."""
    from .test_caps import _capped
    rs = make_rs_daemon(world_toml=_capped(5, alpha=2),
                        extra_env={"SWITCHD_ESL_RESYNC_INTERVAL": "1"})
    callers, carriers = _transfer(realswitch, "acme")
    resyncs = metric(rs.process, "switchd_resyncs_total")
    rs.wait_until(lambda: metric(rs.process, "switchd_resyncs_total") >= resyncs + 40 or None,
                  timeout=90, what="40 resyncs, one a second, since the A-legs' end")
    live = {c["call_uuid"]: c for c in rs.process.get("/v1/calls")[1]["calls"]}
    assert set(live) == set(callers), live
    assert all(c["carrier"] == "alpha" for c in live.values())
    third = realswitch.call(world.US_NUMBER, tenant="acme", hold_ms=500)
    assert third.answered, third
    assert realswitch.invites() == {"gw_a": 2, "gw_b": 1, "gw_c": 0}     # alpha still full
    assert realswitch.api(f"uuid_kill {carriers[0]}").startswith("+OK")
    ended = realswitch.wait_hangups(carriers)
    for caller, leg in zip(callers, ended):
        cdr = rs.wait_cdr(caller)
        assert cdr["billed_seconds"] == leg.billsec, cdr
        assert rs.rows("SELECT reconstructed FROM calls WHERE call_uuid = %s",
                       caller) == [(False,)]
    rs.wait_until(lambda: rs.process.get("/v1/calls")[1].get("calls") == [] or None,
                  what="no live call in switchd")
