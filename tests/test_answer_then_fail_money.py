"""A carrier that answers and is then failed by the switch (docs/rates.md, "a leg answered
for a moment and then failed by the switch"), from FreeSWITCH 1.10.12's own records of
it (tests/fixtures/answer-then-fail/, captured by tests/realswitch/test_answer_then_fail.py).

The carrier answered 200 OK with an SDP offering only a codec FreeSWITCH has not loaded:
sofia ACKed the 200 and sent BYE at once, and never marked the leg answered (no answer
time, billsec 0, INCOMPATIBLE_DESTINATION, no SIP status, sip_hangup_disposition
send_bye). The carrier counts the call answered and bills its connect fee, so the leg
is billed as an answer of a moment through both paths (ESL and the switch's CDR), and
is still the carrier's failure for health and failover."""
from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from dialplan import failover
from switchd.accounting import billing
from switchd.accounting.cdrs.ingest import to_records
from switchd.accounting.cdrs.json_cdr import parse
from switchd.adapters.esl.events import ChannelEvent, channel_event_from_plain, to_typed
from switchd.adapters.esl.framing import parse_event_plain
from switchd.calls.model import CarrierOutcome, LegEnded
from switchd.calls.registry import CallRegistry

FIX = Path(__file__).parent / "fixtures" / "answer-then-fail"
FEE = Decimal("0.005000")          # bravo, France: 0.010000/min + 0.005000, 6/6
CEIL_FEE = Decimal("0.006000")     # + the started second's initial increment: 0.01 * 6 / 60


def _hangup_event() -> ChannelEvent:
    body = (FIX / "bad-sdp-b-leg.hangup-complete.txt").read_bytes()
    event = channel_event_from_plain(body)
    assert event == to_typed(parse_event_plain(body))          # fast path = full parse
    return event


def test_the_switchs_event_says_it_sent_a_bye_on_a_leg_it_never_answered():
    event = _hangup_event()
    assert (event.name, event.direction, event.gateway) == \
        ("CHANNEL_HANGUP_COMPLETE", "outbound", "gw_b")
    assert (event.answered_us, event.billsec, event.billmsec, event.sip_status) == (0, 0, 0, None)
    assert (event.hangup_cause, event.hangup_disposition) == ("INCOMPATIBLE_DESTINATION",
                                                              "send_bye")


def test_esl_bills_the_refused_answer_its_connect_fee_and_charges_the_carrier():
    event = _hangup_event()
    created = ChannelEvent(name="CHANNEL_CREATE", uuid=event.uuid, call_uuid=event.call_uuid,
                           other_leg_uuid=event.other_leg_uuid, direction="outbound",
                           timestamp_us=event.created_us, core_uuid=event.core_uuid,
                           created_us=event.created_us, gateway="gw_b", vars=dict(event.vars))
    reg = CallRegistry()
    reg.apply(created)
    effects = reg.apply(event)
    [ended] = [e.leg for e in effects if isinstance(e, LegEnded)]
    [outcome] = [e for e in effects if isinstance(e, CarrierOutcome)]
    # health and failover: the carrier's failure (an unusable answer is a broken carrier)
    assert (outcome.carrier, outcome.answered) == ("bravo", False)
    assert failover.blame(outcome.hangup_cause, outcome.sip_status, outcome.answered) == "carrier"
    # money: the connect fee, never 0; FreeSWITCH's own figures kept as it gave them
    rec = billing.rate_leg(ended)
    assert (rec.answered_at, rec.billsec, rec.billmsec, rec.disposition) == \
        (None, 0, 0, "carrier_failure")
    assert (rec.billed_seconds, rec.cost, rec.unrated, rec.connect_fee) == (0, FEE, False, FEE)
    # a carrier billing every started second: the initial increment as well
    rec = billing.rate_leg(ended, rounding_of=lambda carrier: "ceil_ms")
    assert (rec.billed_seconds, rec.cost) == (6, CEIL_FEE)


def test_the_switchs_cdr_bills_the_refused_answer_its_connect_fee():
    leg = parse((FIX / "bad-sdp-b-leg.cdr.json").read_bytes())
    assert (leg.answer_us, leg.billsec, leg.hangup_disposition) == (0, 0, "send_bye")
    rec, _ = to_records(leg)
    assert (rec.carrier, rec.answered_at, rec.disposition) == ("bravo", None, "carrier_failure")
    assert (rec.billed_seconds, rec.cost, rec.unrated) == (0, FEE, False)
    rec, _ = to_records(leg, rounding_of=lambda carrier: "ceil_ms")
    assert (rec.billed_seconds, rec.cost) == (6, CEIL_FEE)


def test_a_refused_answer_without_a_tariff_is_unrated_never_zero():
    leg = parse((FIX / "bad-sdp-b-leg.cdr.json").read_bytes())
    bare = leg.__class__(**{**leg.__dict__, "vars": {"switchd_carrier": "bravo"}})
    rec, _ = to_records(bare)
    assert rec.unrated and rec.cost is None


def test_answered_then_bye_after_40ms_pays_the_connect_fee():
    leg = parse((FIX / "bye-after-40ms-b-leg.cdr.json").read_bytes())
    assert (leg.billsec, leg.billmsec, leg.sip_status, leg.hangup_disposition) == \
        (0, 40, 200, "recv_bye")
    rec, _ = to_records(leg)
    assert rec.answered_at is not None and rec.disposition == "answered"
    assert (rec.billed_seconds, rec.cost) == (0, FEE)
    rec, _ = to_records(leg, rounding_of=lambda carrier: "ceil_ms")
    assert (rec.billed_seconds, rec.cost) == (6, CEIL_FEE)


@pytest.mark.parametrize("disposition", [None, "send_cancel", "recv_refuse", "recv_cancel"])
def test_an_unanswered_leg_the_switch_did_not_bye_costs_nothing(disposition):
    leg = parse((FIX / "bad-sdp-b-leg.cdr.json").read_bytes())
    other = leg.__class__(**{**leg.__dict__, "hangup_disposition": disposition})
    rec, _ = to_records(other)
    assert (rec.billed_seconds, rec.cost, rec.unrated) == (0, Decimal("0.000000"), False)
