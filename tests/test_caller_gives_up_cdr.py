"""The CDR of a call whose caller gave up (tests/realswitch/test_caller_gives_up.py has the
real switch): cost 0, rated, and filed `cancelled` whether FreeSWITCH had dialled a carrier
yet or not; a call switchd refused keeps no disposition (its routing log says why)."""
from __future__ import annotations

from decimal import Decimal

from switchd.accounting import billing
from switchd.adapters.esl.events import ChannelEvent
from switchd.calls.model import CallEnded
from switchd.calls.registry import CallRegistry

S = 1_000_000
T = 1_800_000_000 * S
TARIFF = {"switchd_carrier": "alpha", "switchd_rate": "0.60", "switchd_connect_fee": "0.05",
          "switchd_increments": "1/1", "switchd_tenant": "acme"}


def ev(name, uuid, at, call=None, other=None, direction="inbound", **kw):
    return ChannelEvent(name=name, uuid=uuid, call_uuid=call or uuid, other_leg_uuid=other,
                        direction=direction, timestamp_us=at, sequence=at // 1000,
                        core_uuid="core", created_us=kw.pop("created", T), **kw)


def _record(events):
    reg = CallRegistry()
    ended = []
    for e in events:
        ended += [x.call for x in reg.apply(e) if isinstance(x, CallEnded)]
    [call] = ended
    return billing.call_record(call, [billing.rate_leg(leg) for leg in call.legs])


def test_a_caller_who_cancels_before_any_carrier_is_dialled():
    """FreeSWITCH 1.10.12, a CANCEL right after the INVITE: the caller's leg alone,
    ORIGINATOR_CANCEL, 487; no carrier leg was ever created."""
    record = _record([
        ev("CHANNEL_CREATE", "a", T, vars={"switchd_tenant": "acme"}),
        ev("CHANNEL_HANGUP_COMPLETE", "a", T + S // 50, hangup_us=T + S // 50,
           hangup_cause="ORIGINATOR_CANCEL", sip_status=487, billmsec=0, billsec=0,
           vars={"switchd_tenant": "acme"})])
    assert (record.disposition, record.hangup_cause) == ("cancelled", "ORIGINATOR_CANCEL")
    assert (record.attempts, record.carrier, record.answered_at) == (0, None, None)
    assert (record.cost, record.billed_seconds) == (Decimal(0), 0)


def test_a_caller_who_cancels_while_the_carrier_rings():
    """Both legs ORIGINATOR_CANCEL; the carrier's leg has no SIP status (the 487 it sent
    answered FreeSWITCH's own CANCEL)."""
    record = _record([
        ev("CHANNEL_CREATE", "a", T, vars={"switchd_tenant": "acme"}),
        ev("CHANNEL_CREATE", "b", T + S // 50, call="a", other="a", direction="outbound",
           vars=dict(TARIFF), gateway="gw_a"),
        ev("CHANNEL_PROGRESS", "b", T + S // 25, call="a", other="a", direction="outbound",
           vars=dict(TARIFF), gateway="gw_a"),
        ev("CHANNEL_HANGUP_COMPLETE", "b", T + S, call="a", other="a", direction="outbound",
           vars=dict(TARIFF), gateway="gw_a", hangup_us=T + S,
           hangup_cause="ORIGINATOR_CANCEL", billmsec=0, billsec=0),
        ev("CHANNEL_HANGUP_COMPLETE", "a", T + S, hangup_us=T + S,
           hangup_cause="ORIGINATOR_CANCEL", sip_status=487, billmsec=0, billsec=0,
           vars={"switchd_tenant": "acme"})])
    assert (record.disposition, record.attempts, record.carrier) == ("cancelled", 1, "alpha")
    assert (record.cost, record.answered_at) == (Decimal("0.000000"), None)


def test_a_call_switchd_refused_has_no_disposition():
    record = _record([
        ev("CHANNEL_CREATE", "a", T, vars={"switchd_tenant": "acme"}),
        ev("CHANNEL_HANGUP_COMPLETE", "a", T + S // 50, hangup_us=T + S // 50,
           hangup_cause="NORMAL_CIRCUIT_CONGESTION", sip_status=503, billmsec=0, billsec=0,
           vars={"switchd_tenant": "acme"})])
    assert (record.disposition, record.attempts) == (None, 0)
