"""The simulator's carrier that answers and then sends no RTP
(GatewayBehaviour.silent_after_answer), against what FreeSWITCH 1.10.12 reported for it
(tests/fixtures/media-timeout/, from tests/realswitch/test_media_timeout.py): with
`media_timeout` on the carrier leg, both legs end MEDIA_TIMEOUT that long after the
answer; without it, or with a carrier that sends RTP, the call runs to its end."""
from __future__ import annotations

from pathlib import Path

import pytest

from test_sim_dialplan import world  # noqa: F401 -- the fixture: simulator, dialplan server, ESL client
from test_sim_helpers import bridge_xml
from switchd.adapters.esl.events import to_typed
from switchd.adapters.esl.framing import parse_event_plain
from switchd.sim import GatewayBehaviour

FIX = Path(__file__).parent / "fixtures" / "media-timeout"
SILENT = GatewayBehaviour(answer_delay_s=0.1, silent_after_answer=True)
# What the real switch said of each leg, header by header (None: no such header).
SAME = ("Hangup-Cause", "Answer-State", "variable_hangup_cause", "variable_hangup_cause_q850",
        "variable_sip_term_status", "variable_billsec", "variable_bridge_hangup_cause",
        "variable_last_bridge_hangup_cause", "variable_sip_hangup_disposition")


def _real(leg: str) -> dict[str, str]:
    return parse_event_plain((FIX / f"{leg}.hangup-complete.txt").read_bytes())


def _completes(client, n: int = 2) -> dict[str, dict[str, str]]:
    assert client.wait_for(lambda evs: sum(e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"
                                           for e in evs) >= n)
    done = [e for e in client.events if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"]
    return {("a-leg" if e["Call-Direction"] == "inbound" else "b-leg"): e for e in done}


def _answered_call(world, dial: str, behaviour: GatewayBehaviour, hold_s: float, cause: str):
    """One call bridged by `dial` to carrier_a playing `behaviour`, the caller holding it
    hold_s: both legs ended with `cause`. Returns the carrier leg's talk time (µs) and the
    ESL client that saw it."""
    sim, dp, client = world(bridge_xml(dial, sched=60), gateways={"carrier_a": behaviour})
    call = sim.place_call("+12125550123", caller="sipp", hold_seconds=hold_s)
    assert call.wait(5) and call.result == "answered"
    assert call.causes == [cause] and call.hangup_cause == cause
    (leg,) = call.legs
    return leg.hangup_us - leg.answered_us, client


def test_a_silent_carrier_leg_times_out_like_freeswitchs(world):
    dial = "[media_timeout=2000]sofia/gateway/carrier_a/+12125550123"
    talked, client = _answered_call(world, dial, SILENT, 20.0, "MEDIA_TIMEOUT")
    assert talked == 2_000_000
    for name, complete in _completes(client).items():
        real = _real(name)
        assert {h: complete.get(h) for h in SAME} == {h: real.get(h) for h in SAME}, name
        # switchd's edge reads the same facts from both
        sim_typed, real_typed = to_typed(complete), to_typed(real)
        for field in ("billsec", "sip_status", "hangup_cause"):
            assert getattr(sim_typed, field) == getattr(real_typed, field), (name, field)


@pytest.mark.parametrize("dial, behaviour", [
    ("sofia/gateway/carrier_a/+12125550123", SILENT),              # no media_timeout
    ("[media_timeout=0]sofia/gateway/carrier_a/+12125550123", SILENT),
    ("[media_timeout=2000]sofia/gateway/carrier_a/+12125550123",   # a carrier sending RTP
     GatewayBehaviour(answer_delay_s=0.1)),
], ids=["no-timeout", "timeout-0", "rtp"])
def test_without_a_timeout_or_with_rtp_the_call_runs_to_its_end(world, dial, behaviour):
    talked, _ = _answered_call(world, dial, behaviour, 5.0, "NORMAL_CLEARING")
    assert talked == 5_000_000


def test_silent_after_answer_needs_an_answer():
    with pytest.raises(ValueError, match="silent_after_answer"):
        GatewayBehaviour(silent_after_answer=True, sip_status=503)


def test_a_silent_carrier_cuts_an_originated_leg_too(world):
    """A parked originate leg reads media: FreeSWITCH cut it MEDIA_TIMEOUT 2.02 s after its
    answer (originate-leg.hangup-complete.txt, tests/realswitch/test_media_timeout.py)."""
    sim, dp, client = world(None, gateways={"carrier_a": SILENT})
    uuid = "0b6f7f1e-6d0c-4f43-9a43-0d1c35e2a002"
    body = client.bgapi(f"originate {{origination_uuid={uuid}}}[media_timeout=2000]"
                        "sofia/gateway/carrier_a/+12125550123 &park()")
    assert body.endswith(f"\n\n+OK {uuid}\n".encode())
    assert client.wait_for(lambda evs: any(e.get("Unique-ID") == uuid and
                                           e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"
                                           for e in evs))
    complete = next(e for e in client.events if e.get("Unique-ID") == uuid
                    and e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE")
    real = _real("originate-leg")
    same = tuple(h for h in SAME if "bridge" not in h)
    assert {h: complete.get(h) for h in same} == {h: real.get(h) for h in same}
    typed = to_typed(complete)
    assert (typed.hangup_cause, typed.hangup_us - typed.answered_us) == ("MEDIA_TIMEOUT", 2_000_000)
    for field in ("billsec", "sip_status", "hangup_cause", "hangup_disposition"):
        assert getattr(typed, field) == getattr(to_typed(real), field), field
