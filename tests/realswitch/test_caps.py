"""Concurrency caps on the real switch (docs/caps.md): a tenant's `max_concurrent` refuses
the call over it with 503, a full first-choice carrier is skipped for the next one, a
failover leg to a full carrier is not let through, and slots free at FreeSWITCH's hangup.
"Never exceeded" is read from FreeSWITCH's own CHANNEL_HANGUP_COMPLETE times: the most
carrier legs of one carrier answered at the same instant."""
from __future__ import annotations

import pytest

from . import world
from .common import peak_overlap, poll

pytestmark = pytest.mark.realswitch


def _capped(tenant_max: int, **carrier_max: int) -> str:
    toml = world.WORLD_TOML.replace('max_call_seconds = 3600\n',
                                    f'max_call_seconds = 3600\nmax_concurrent = {tenant_max}\n', 1)
    for carrier, limit in carrier_max.items():
        head = f'name = "{carrier}"\n'
        assert head in toml
        toml = toml.replace(head, f'{head}max_channels = {limit}\n', 1)
    return toml


def _answered_intervals(switch, gateway: str | None = None) -> list[tuple[int, int]]:
    """(answer, end) in µs of every answered leg FreeSWITCH hung up: carrier legs through
    `gateway`, or the callers' legs when None."""
    found = []
    for h in switch.hangups():
        if gateway is None and h.direction != "inbound":
            continue
        if gateway is not None and h.gateway != gateway:
            continue
        answer = int(h.headers.get("variable_answer_uepoch") or 0)
        if answer:
            found.append((answer, int(h.headers["variable_end_uepoch"])))
    return found


def test_tenant_and_first_choice_carrier_caps_hold_on_the_switch(realswitch, make_rs_daemon):
    """acme may have 3 calls up, alpha 2 channels. Four calls to the US number (alpha, then
    bravo, charlie) at once: two go to alpha, the third to bravo (alpha full), the fourth is
    refused 503 (acme full). Once they have ended, the slots are free: the next call goes to
    alpha again."""
    rs = make_rs_daemon(world_toml=_capped(3, alpha=2))
    load = realswitch.load_async(world.US_NUMBER, rate=10, count=4, hold_ms=6000).wait()
    assert (load.answered, load.rejected) == (3, {503: 1}), load
    assert realswitch.invites() == {"gw_a": 2, "gw_b": 1, "gw_c": 0}
    caller_legs = poll(lambda: (lambda got: got if len(got) == 3 else None)(
        _answered_intervals(realswitch)), 20, "the three answered calls' hangups")
    assert peak_overlap(caller_legs) == 3
    assert peak_overlap(_answered_intervals(realswitch, "gw_a")) == 2
    refused = rs.rows("SELECT reason, sip_code FROM routing_decisions WHERE result = 'refused'")
    assert len(refused) == 1 and refused[0][1] == 503 and refused[0][0].startswith("cap reached")
    # every slot came back with FreeSWITCH's hangups: a fresh call takes alpha again
    realswitch.carrier("gw_a").reset_counts()
    again = realswitch.call(world.US_NUMBER, hold_ms=500)
    assert again.answered and realswitch.invites()["gw_a"] == 1


def test_a_failover_leg_to_a_full_carrier_never_answers(realswitch, make_rs_daemon):
    """alpha refuses every call (503), bravo may carry one. The first call fails over to
    bravo and stays up; the second fails over too, but bravo is full: the failover lookup
    passes it over for charlie, so at no instant did FreeSWITCH have two answered legs on
    bravo. (Killing bravo's leg once it had started was too late: sipp's bravo answered
    first and was up for 20 ms beyond the cap.)"""
    rs = make_rs_daemon(world_toml=_capped(10, bravo=1))
    realswitch.carrier("gw_a").set_mode("503")
    first = realswitch.call_async(world.US_NUMBER, hold_ms=8000)
    poll(lambda: any(e.get("variable_sip_gateway_name") == "gw_b"
                     for e in realswitch.events("CHANNEL_ANSWER")), 15, "bravo answering")
    second = realswitch.call(world.US_NUMBER, hold_ms=1000)
    assert first.wait().answered
    assert second.answered, second
    poll(lambda: len(_answered_intervals(realswitch)) == 2 or None, 20, "both calls' hangups")
    assert peak_overlap(_answered_intervals(realswitch, "gw_b")) == 1
    assert len(_answered_intervals(realswitch, "gw_c")) == 1
    assert realswitch.invites() == {"gw_a": 2, "gw_b": 1, "gw_c": 1}   # bravo never dialled twice
    assert any(reason.endswith("; passed over: bravo (cap reached)") for (reason,) in rs.rows(
        "SELECT reason FROM routing_decisions WHERE result = 'routed'"))
    # the CDRs are written after the hangups the switch reported: wait for both
    carriers = rs.wait_until(lambda: (lambda found: found if len(found) == 2 else None)(rs.rows(
        "SELECT carrier FROM calls WHERE answered_at IS NOT NULL ORDER BY started_at")),
        what="both answered calls' CDRs")
    assert carriers == [("bravo",), ("charlie",)]


def test_an_originate_attempt_on_a_full_carrier_is_skipped(realswitch, make_rs_daemon):
    """The same for originate, one `bgapi originate` per carrier: alpha refuses (503), bravo
    is full with a routed call, so the originate's second attempt goes to charlie and
    bravo is never dialled for it."""
    rs = make_rs_daemon(world_toml=_capped(10, bravo=1))
    realswitch.carrier("gw_a").set_mode("503")
    held = realswitch.call_async(world.US_NUMBER, hold_ms=8000)
    poll(lambda: any(e.get("variable_sip_gateway_name") == "gw_b"
                     for e in realswitch.events("CHANNEL_ANSWER")), 15, "bravo answering")
    status, body = rs.originate({"tenant": "acme", "destination": world.US_NUMBER})
    assert status == 200 and body["answered"], body
    assert [a["gateway"] for a in body["attempts"]] == ["gw_a", "gw_c"]
    assert realswitch.invites() == {"gw_a": 2, "gw_b": 1, "gw_c": 1}
    realswitch.api(f"uuid_kill {body['attempts'][-1]['leg_uuid']}")
    assert held.wait().answered
    poll(lambda: (len(_answered_intervals(realswitch, "gw_b")),
                  len(_answered_intervals(realswitch, "gw_c"))) == (1, 1) or None, 20,
         "both calls' carrier legs hung up")
