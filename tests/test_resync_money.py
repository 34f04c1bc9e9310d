"""Issue 9, ESL never destroys money: a resync never closes a leg that may be alive, a leg
closed without its hangup is billed provisionally from what is known, its real hangup
settles it, and a leg that cannot be rated is flagged unrated, never 0."""
from __future__ import annotations

from decimal import Decimal

from switchd.accounting import billing
from switchd.adapters.esl.events import ChannelEvent
from switchd.calls.channels import ChannelRow
from switchd.calls.model import CAUSE_RESYNC, CallEnded, LegEnded
from switchd.calls.reconcile import RESYNC_LAG_US
from switchd.calls.registry import CallRegistry

S = 1_000_000
T = 1_800_000_000 * S                         # the snapshot was requested at T
TARIFF = {"switchd_carrier": "alpha", "switchd_rate": "0.60", "switchd_connect_fee": "0.05",
          "switchd_increments": "1/1", "switchd_tenant": "acme"}


def ev(name, uuid, at, call=None, other=None, direction="inbound", answered=0, **kw):
    return ChannelEvent(name=name, uuid=uuid, call_uuid=call or uuid, other_leg_uuid=other,
                        direction=direction, timestamp_us=at, sequence=at // 1000,
                        core_uuid="core", created_us=kw.pop("created", at),
                        answered_us=answered, **kw)


def bridged_call(reg, a, b, created, answered):
    for e in [ev("CHANNEL_CREATE", a, created),
              ev("CHANNEL_CREATE", b, created, call=a, other=a, direction="outbound",
                 vars=dict(TARIFF), gateway="gw_a"),
              ev("CHANNEL_ANSWER", b, answered, call=a, other=a, direction="outbound",
                 answered=answered, created=created, vars=dict(TARIFF), gateway="gw_a"),
              ev("CHANNEL_ANSWER", a, answered, answered=answered, created=created)]:
        reg.apply(e)


def test_resync_spares_legs_younger_than_the_snapshot_lag():
    reg = CallRegistry()
    bridged_call(reg, "old-a", "old-b", T - 60 * S, T - 50 * S)
    bridged_call(reg, "young-a", "young-b", T - S, T - S // 2)     # show channels lags it
    effects = reg.resync([], T + S, requested_us=T)
    ended = [e.call.call_uuid for e in effects if isinstance(e, CallEnded)]
    assert ended == ["old-a"]
    assert reg.get("young-a") is not None and reg.counters["resync_spared"] == 2
    # still missing once old enough: closed by the follow-up resync
    effects = reg.resync([], T + RESYNC_LAG_US + 2 * S, requested_us=T + RESYNC_LAG_US + S)
    assert [e.call.call_uuid for e in effects if isinstance(e, CallEnded)] == ["young-a"]


def test_a_leg_heard_from_after_the_request_is_alive():
    reg = CallRegistry()
    bridged_call(reg, "a", "b", T - 60 * S, T - 50 * S)
    reg.apply(ev("CHANNEL_BRIDGE", "b", T + S // 10, call="a", other="a",
                 direction="outbound", created=T - 60 * S))
    assert not [e for e in reg.resync([], T + S, requested_us=T) if isinstance(e, CallEnded)]


def test_closed_in_a_gap_is_billed_provisionally_to_the_gap_start_then_settled():
    reg = CallRegistry()
    answered = T - 100 * S + 300_000
    bridged_call(reg, "a", "b", T - 101 * S, answered)
    gap_start = T - 40 * S                          # ESL lost here; FreeSWITCH killed
    effects = reg.resync([], T + S, requested_us=T, ended_us=gap_start)
    [leg_b] = [e.leg for e in effects if isinstance(e, LegEnded) and e.leg.uuid == "b"]
    assert leg_b.hangup_cause == CAUSE_RESYNC and leg_b.hangup_us == gap_start
    rec = billing.rate_leg(leg_b)
    # answered at ...0.3 s, end at ...0 s: FreeSWITCH's billsec is 60 (epoch seconds)
    assert rec.provisional and not rec.unrated and rec.billsec == 60
    assert (rec.billed_seconds, rec.cost) == (60, Decimal("0.650000"))
    # the real HANGUP_COMPLETE arrives after all: it settles the leg
    done = ev("CHANNEL_HANGUP_COMPLETE", "b", T + 2 * S, call="a", other="a",
              direction="outbound", answered=answered, created=T - 101 * S, vars=dict(TARIFF),
              gateway="gw_a", hangup_us=T - 70 * S, hangup_cause="NORMAL_CLEARING",
              billmsec=29_700, billsec=30)
    [settled] = reg.apply(done)
    assert isinstance(settled, LegEnded) and not settled.leg.reconstructed
    rec = billing.rate_leg(settled.leg)
    assert not rec.provisional and rec.hangup_cause == "NORMAL_CLEARING"
    assert (rec.billed_seconds, rec.cost) == (30, Decimal("0.350000"))


def test_answered_leg_without_tariff_is_unrated_not_zero():
    reg = CallRegistry()
    for e in [ev("CHANNEL_CREATE", "b", T, direction="outbound", gateway="gw_x"),
              ev("CHANNEL_HANGUP_COMPLETE", "b", T + 9 * S, direction="outbound",
                 gateway="gw_x", answered=T + S, created=T, hangup_us=T + 9 * S,
                 hangup_cause="NORMAL_CLEARING", billmsec=8000, billsec=8)]:
        effects = reg.apply(e)
    [leg] = [x.leg for x in effects if isinstance(x, LegEnded)]
    rec = billing.rate_leg(leg)
    assert rec.unrated and rec.cost is None and rec.billsec == 8


def test_billsec_default_and_ceil_ms_option():
    reg = CallRegistry()
    for e in [ev("CHANNEL_CREATE", "b", T, direction="outbound", vars=dict(TARIFF)),
              ev("CHANNEL_HANGUP_COMPLETE", "b", T + 3 * S, direction="outbound",
                 vars=dict(TARIFF), answered=T + 1, created=T, hangup_us=T + 3 * S,
                 hangup_cause="NORMAL_CLEARING", billmsec=2340, billsec=3)]:
        effects = reg.apply(e)
    [leg] = [x.leg for x in effects if isinstance(x, LegEnded)]
    assert billing.rate_leg(leg).billed_seconds == 3                     # FreeSWITCH's
    leg.billsec = 2
    assert billing.rate_leg(leg).billed_seconds == 2
    assert billing.rate_leg(leg, rounding_of=lambda c: "ceil_ms").billed_seconds == 3


def test_rate_in_force_at_answer_time_from_the_deck():
    """Routed at 0.60 just before a dated price change to 1.20; answered after it."""
    from datetime import datetime, timezone

    from dialplan.ratedeck import RateDeckBuilder
    change = datetime.fromtimestamp((T + 10 * S) / S, tz=timezone.utc)
    deck = (RateDeckBuilder(carrier="alpha")
            .add("44", Decimal("0.60"), Decimal("0.05"), 1, 1, None, change)
            .add("44", Decimal("1.20"), Decimal("0.05"), 1, 1, change, None).build())
    reprice = billing.deck_repricer(lambda: {"alpha": deck})
    tariff = {**TARIFF, "switchd_prefix": "44"}
    reg = CallRegistry()

    def leg_answered_at(answered):
        for e in [ev("CHANNEL_CREATE", f"b{answered}", T, direction="outbound",
                     vars=dict(tariff)),
                  ev("CHANNEL_HANGUP_COMPLETE", f"b{answered}", answered + 60 * S,
                     direction="outbound", vars=dict(tariff), answered=answered, created=T,
                     hangup_us=answered + 60 * S, hangup_cause="NORMAL_CLEARING",
                     billmsec=60_000, billsec=60)]:
            effects = reg.apply(e)
        return next(x.leg for x in effects if isinstance(x, LegEnded))

    after = billing.rate_leg(leg_answered_at(T + 11 * S), reprice=reprice)
    before = billing.rate_leg(leg_answered_at(T + 5 * S), reprice=reprice)
    assert (after.rate_per_min, after.cost) == (Decimal("1.20"), Decimal("1.250000"))
    assert (before.rate_per_min, before.cost) == (Decimal("0.60"), Decimal("0.650000"))
