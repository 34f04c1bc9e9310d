"""A carrier that answers and then sends no RTP, on a real FreeSWITCH 1.10.12.

Every carrier leg carries `media_timeout` (the gateway's `media_timeout`, whole seconds,
default 60; FreeSWITCH reads milliseconds, switch_core_media.c). Seen here: a leg whose
carrier sends no RTP ends MEDIA_TIMEOUT that long after its answer (billmsec just over
it), FreeSWITCH sends the caller its BYE, and the call is billed for the time it ran
instead of running to the tenant's max duration. A carrier that streams RTP (sipp mode
`answer-rtp`, PCMU silence every 20 ms) is never cut. An originated leg, parked after
its answer, is cut the same way. The harness's other carriers send
no RTP at all, which is why the default stays well above any test call's length."""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import pytest

from daemon_harness import metric

from . import world
from .common import poll

pytestmark = pytest.mark.realswitch

MEDIA_S = 2


def _alpha_media_timeout(seconds: int) -> str:
    """The suite's world with gw_a's media_timeout set."""
    gateway = f'name = "gw_a"\n  profile = "callers"\n  leg_timeout = {world.LEG_TIMEOUT_S}\n'
    assert gateway in world.WORLD_TOML
    return world.WORLD_TOML.replace(gateway, gateway + f"  media_timeout = {seconds}\n", 1)


def _cost(billsec: int) -> Decimal:
    """alpha's US tariff (0.0050 a minute, 1/1, no fee), rounded once to 6 places."""
    return (Decimal("0.0050") * billsec / 60).quantize(Decimal("0.000001"), ROUND_HALF_UP)


def test_a_carrier_that_goes_silent_is_cut_at_its_media_timeout(realswitch, make_rs_daemon):
    rs = make_rs_daemon(world_toml=_alpha_media_timeout(MEDIA_S))
    result = realswitch.call(world.US_NUMBER, hold_ms=20_000)     # gw_a answers, sends no RTP
    a, *carriers = realswitch.wait_call(result, timeout=30)
    # FreeSWITCH's own view: the carrier leg ran MEDIA_S and a little, then was cut ...
    assert [(c.gateway, c.cause, c.headers.get("variable_media_timeout")) for c in carriers] \
        == [("gw_a", "MEDIA_TIMEOUT", str(MEDIA_S * 1000))]
    (leg,) = carriers
    assert MEDIA_S * 1000 <= leg.billmsec < (MEDIA_S + 1) * 1000, leg.billmsec
    # ... and the caller, answered, heard the switch hang up then, not after its 20 s.
    assert result.code == 200 and result.ended_by == "switch", result
    assert "MEDIA_TIMEOUT" in result.bye_reason and result.duration < MEDIA_S + 1, result
    assert a.cause == "MEDIA_TIMEOUT"

    cdr = rs.wait_cdr(a.uuid)
    assert (cdr["carrier"], cdr["hangup_cause"], cdr["billed_seconds"]) == \
        ("alpha", "MEDIA_TIMEOUT", leg.billsec)
    assert cdr["cost"] == _cost(leg.billsec) > 0
    (row,) = rs.rows("SELECT disposition, hangup_cause, billed_seconds, cost FROM call_legs "
                     "WHERE call_uuid = %s AND carrier = 'alpha'", a.uuid)
    assert row == ("media_timeout", "MEDIA_TIMEOUT", leg.billsec, _cost(leg.billsec))
    # ESL's record of the call, the one with its disposition, is in once the CDR settled
    assert rs.rows("SELECT disposition FROM calls WHERE call_uuid = %s", a.uuid) == \
        [("media_timeout",)]
    # The carrier's failure (answered, +2 capped at 100, then -5), not a failover.
    rs.wait_until(lambda: metric(rs.process, "switchd_carrier_health", carrier="alpha") == 95,
                  what="alpha's health 95 after its silent call")
    assert metric(rs.process, "switchd_failovers_total", carrier="alpha") == 0


def test_a_carrier_that_streams_rtp_is_never_cut(realswitch, make_rs_daemon):
    rs = make_rs_daemon(world_toml=_alpha_media_timeout(MEDIA_S))
    realswitch.carrier("gw_a").set_mode("answer-rtp")
    result = realswitch.call(world.US_NUMBER, hold_ms=2 * MEDIA_S * 1000)
    a, *carriers = realswitch.wait_call(result, timeout=30)
    assert result.code == 200 and result.ended_by == "caller", result
    assert [(c.gateway, c.cause) for c in carriers] == [("gw_a", "NORMAL_CLEARING")]
    (leg,) = carriers
    assert leg.billmsec >= 2 * MEDIA_S * 1000 - 100, leg.billmsec
    assert int(leg.headers["variable_rtp_audio_in_packet_count"]) > 0
    rs.wait_cdr(a.uuid)
    assert metric(rs.process, "switchd_carrier_health", carrier="alpha") == 100


@pytest.mark.parametrize("configured, on_the_leg", [(None, "60000"), (0, None)],
                         ids=["default", "off"])
def test_a_gateway_without_the_setting_has_60s_and_0_turns_it_off(
        realswitch, make_rs_daemon, configured, on_the_leg):
    toml = world.WORLD_TOML if configured is None else _alpha_media_timeout(configured)
    make_rs_daemon(world_toml=toml)
    result = realswitch.call(world.US_NUMBER, hold_ms=300)
    a, *carriers = realswitch.wait_call(result, timeout=30)
    assert [(c.gateway, c.cause, c.headers.get("variable_media_timeout")) for c in carriers] \
        == [("gw_a", "NORMAL_CLEARING", on_the_leg)]


def test_an_originated_call_whose_carrier_goes_silent_is_cut_too(realswitch, make_rs_daemon):
    """An originate's leg (parked, as `POST /v1/calls` leaves it by default) reads media
    like a bridged one: FreeSWITCH cuts it MEDIA_TIMEOUT after its answer; the call is
    billed for that time and the cut is the carrier's failure."""
    rs = make_rs_daemon(world_toml=_alpha_media_timeout(MEDIA_S))
    status, body = rs.originate({"tenant": "acme", "destination": world.US_NUMBER})
    assert status == 200 and body["answered"] is True, body
    assert [a["gateway"] for a in body["attempts"]] == ["gw_a"]
    leg = poll(lambda: next((h for h in realswitch.hangups() if h.uuid == body["call_uuid"]),
                            None), 30, "the originated leg's hangup")
    assert (leg.gateway, leg.cause, leg.headers.get("variable_media_timeout")) == \
        ("gw_a", "MEDIA_TIMEOUT", str(MEDIA_S * 1000))
    assert MEDIA_S * 1000 <= leg.billmsec < (MEDIA_S + 1) * 1000, leg.billmsec
    cdr = rs.wait_cdr(body["call_uuid"])
    assert (cdr["carrier"], cdr["hangup_cause"], cdr["billed_seconds"], cdr["cost"]) == \
        ("alpha", "MEDIA_TIMEOUT", leg.billsec, _cost(leg.billsec))
    rs.wait_until(lambda: rs.rows("SELECT disposition FROM call_legs WHERE leg_uuid = %s",
                                  body["call_uuid"]) == [("media_timeout",)],
                  what="the leg's disposition media_timeout")
    rs.wait_until(lambda: metric(rs.process, "switchd_carrier_health", carrier="alpha") == 95,
                  what="alpha's health 95 after its silent call")
