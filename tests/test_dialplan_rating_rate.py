"""dialplan.rating.rate: the one rating function (docs/rates.md "Rating a leg")."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dialplan.rating import (BILLSEC, CEIL_MS, MAX_BILLED_SECONDS, Tariff,
                             answered_by_carrier_only, rate, tariff_at, talk_seconds)

T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)
INCREMENTS = [(60, 60), (60, 6), (30, 6), (6, 6), (1, 1)]
money = st.decimals(min_value=0, max_value=10, places=6, allow_nan=False, allow_infinity=False)
incs = st.sampled_from(INCREMENTS)


def _t(r, fee="0", inc=(60, 60), start=None):
    return Tariff(Decimal(r), Decimal(fee), inc[0], inc[1], start)


@pytest.mark.parametrize("billsec,inc,billed,cost", [
    (3, (60, 60), 60, "0.015000"), (61, (60, 60), 120, "0.025000"),
    (61, (60, 6), 66, "0.016000"), (31, (30, 6), 36, "0.011000"),
    (7, (6, 6), 12, "0.007000"), (61, (1, 1), 61, "0.015167"),
])
def test_increments_table(billsec, inc, billed, cost):
    # rate 0.01/min, connect fee 0.005: cost = 0.005 + 0.01 * billed / 60, rounded once
    r = rate(answered=True, billsec=billsec, billmsec=billsec * 1000 - 300,
             tariffs=[_t("0.01", "0.005", inc)])
    assert (r.billed_seconds, r.cost, r.unrated_reason) == (billed, Decimal(cost), None)


def test_billsec_is_the_default_and_ceil_ms_an_option():
    # FreeSWITCH's billsec is end_epoch - answer_epoch: 3 for 2340 ms (a real capture)
    terms = [_t("0.60", "0", (1, 1))]
    assert rate(answered=True, billsec=3, billmsec=2340, tariffs=terms).billed_seconds == 3
    assert rate(answered=True, billsec=2, billmsec=2340, tariffs=terms).billed_seconds == 2
    assert rate(answered=True, billsec=2, billmsec=2340, tariffs=terms,
                rounding=CEIL_MS).billed_seconds == 3
    with pytest.raises(ValueError, match="rounding"):
        rate(answered=True, billsec=2, billmsec=2340, tariffs=terms, rounding="floor")


def test_answered_20ms_then_failed_pays_the_connect_fee_only():
    terms = [_t("0.60", "0.05", (60, 6))]
    r = rate(answered=True, billsec=0, billmsec=20, tariffs=terms)
    assert (r.billed_seconds, r.cost) == (0, Decimal("0.050000"))
    # a carrier billing started seconds: one second, so the initial increment
    r = rate(answered=True, billsec=0, billmsec=20, tariffs=terms, rounding=CEIL_MS)
    assert (r.billed_seconds, r.cost) == (60, Decimal("0.650000"))


@pytest.mark.parametrize("answered,disposition,carrier_only", [
    (False, "send_bye", True),      # the carrier's 2xx came, FreeSWITCH sent BYE at once
    (True, "send_bye", False),      # an ordinary answered call we hung up
    (False, "send_cancel", False),  # our CANCEL: never answered (ring-out, caller gone)
    (False, "recv_refuse", False),  # the carrier's 4xx-6xx
    (False, None, False),           # no SIP at all (gateway down, throttled)
    (False, "recv_bye", False),
])
def test_answered_by_carrier_only_is_a_bye_on_a_leg_never_answered(answered, disposition,
                                                                   carrier_only):
    assert answered_by_carrier_only(answered, disposition) is carrier_only


def test_a_refused_answer_is_an_answer_of_a_moment():
    """The carrier's 200 OK, ACKed and torn down by FreeSWITCH before it marked the leg
    answered (an SDP it could not use): FreeSWITCH's billsec 0, so the connect fee only;
    the started second (initial increment) for a ceil_ms carrier."""
    terms = [_t("0.60", "0.05", (60, 6))]
    r = rate(answered=False, billsec=0, billmsec=0, tariffs=terms, refused_answer=True)
    assert (r.billed_seconds, r.cost, r.unrated_reason) == (0, Decimal("0.050000"), None)
    r = rate(answered=False, billsec=0, billmsec=0, tariffs=terms, refused_answer=True,
             rounding=CEIL_MS)
    assert (r.billed_seconds, r.cost) == (60, Decimal("0.650000"))
    # without a tariff it is unrated, never 0
    r = rate(answered=False, billsec=0, billmsec=0, tariffs=[], refused_answer=True)
    assert r.cost is None and "tariff" in r.unrated_reason
    # priced at the time given (the hangup), like an answer
    old, new = _t("0.10", "0.01", start=None), _t("0.20", "0.02", start=T0)
    assert rate(answered=False, billsec=0, billmsec=0, tariffs=[old, new], refused_answer=True,
                answered_at=T0).cost == Decimal("0.020000")
    with pytest.raises(ValueError, match="rounding"):
        rate(answered=False, billsec=0, billmsec=0, tariffs=terms, refused_answer=True,
             rounding="floor")


@given(money, money, incs)
def test_a_refused_answer_costs_the_connect_fee_and_at_most_one_initial_increment(r, fee, inc):
    terms = [_t(r, fee, inc)]
    by_billsec = rate(answered=False, billsec=0, billmsec=0, tariffs=terms, refused_answer=True)
    by_ms = rate(answered=False, billsec=0, billmsec=0, tariffs=terms, refused_answer=True,
                 rounding=CEIL_MS)
    assert by_billsec.cost == fee.quantize(Decimal("0.000001"))
    # the same as a leg FreeSWITCH did answer for 20 ms
    assert by_billsec == rate(answered=True, billsec=0, billmsec=20, tariffs=terms)
    assert by_ms == rate(answered=True, billsec=0, billmsec=20, tariffs=terms, rounding=CEIL_MS)


def test_unanswered_costs_nothing_and_is_rated():
    r = rate(answered=False, billsec=0, billmsec=0, tariffs=[_t("1", "1")])
    assert (r.billed_seconds, r.cost, r.unrated_reason) == (0, Decimal("0.000000"), None)
    r = rate(answered=False, billsec=None, billmsec=None, tariffs=[])
    assert r.cost == 0 and r.unrated_reason is None


def test_answered_without_tariff_or_times_is_unrated_never_zero():
    r = rate(answered=True, billsec=10, billmsec=10_000, tariffs=[])
    assert r.cost is None and "tariff" in r.unrated_reason
    r = rate(answered=True, billsec=None, billmsec=None, tariffs=[_t("1")])
    assert r.cost is None and "billsec" in r.unrated_reason


@pytest.mark.parametrize("answered,billsec,billmsec,unreadable,rounding,why", [
    (False, None, None, {"answer"}, BILLSEC, "answer time"),   # answered or not: unknown
    (False, None, None, {"answer"}, CEIL_MS, "answer time"),
    (True, None, 61_000, {"billsec"}, BILLSEC, "billsec"),     # never billmsec // 1000
    (True, 61, None, {"billmsec"}, CEIL_MS, "billmsec"),       # never billsec
])
def test_a_figure_the_switch_sent_unreadable_leaves_the_leg_unrated_never_zero(
        answered, billsec, billmsec, unreadable, rounding, why):
    r = rate(answered=answered, billsec=billsec, billmsec=billmsec, rounding=rounding,
             tariffs=[_t("0.01", "0.005")], answered_at=T0, unreadable=unreadable)
    assert r.cost is None and r.billed_seconds == 0 and why in r.unrated_reason


@pytest.mark.parametrize("answered,billsec,billmsec,unreadable,rounding,cost", [
    (True, 61, None, {"billmsec"}, BILLSEC, "0.025000"),        # billsec rounding: unread
    (True, None, 61_000, {"billsec"}, CEIL_MS, "0.025000"),     # ceil_ms: billmsec only
    (False, None, None, {"billsec", "billmsec"}, BILLSEC, "0"),  # unanswered: no talk
])
def test_an_unreadable_figure_the_rating_does_not_read_changes_nothing(
        answered, billsec, billmsec, unreadable, rounding, cost):
    r = rate(answered=answered, billsec=billsec, billmsec=billmsec, rounding=rounding,
             tariffs=[_t("0.01", "0.005")], answered_at=T0, unreadable=unreadable)
    assert r.cost == Decimal(cost) and r.unrated_reason is None


def test_rate_in_force_at_answer_not_at_start():
    old, new = _t("0.10", start=None), _t("0.20", start=T0)
    started = T0 - timedelta(seconds=20)             # routed before the change
    assert rate(answered=True, billsec=60, billmsec=60_000, tariffs=[old, new],
                answered_at=T0 + timedelta(seconds=1)).cost == Decimal("0.200000")
    assert rate(answered=True, billsec=60, billmsec=60_000, tariffs=[old, new],
                answered_at=started).cost == Decimal("0.100000")
    assert tariff_at([old, new], T0) is new          # start inclusive
    assert tariff_at([new], T0 - timedelta(microseconds=1)) is None
    assert tariff_at([new], None) is None


def test_precision_is_configurable_and_rounds_half_up_once():
    terms = [_t("0.125", "0", (60, 60))]
    assert rate(answered=True, billsec=60, billmsec=None, tariffs=terms,
                places=2).cost == Decimal("0.13")
    # rounding per increment would give 0.000001 * 60 = 0.000060; once gives 0.000050
    terms = [_t("0.003", "0", (1, 1))]
    assert rate(answered=True, billsec=1, billmsec=None, tariffs=terms).cost == Decimal("0.000050")


@given(st.integers(0, 20_000), money, money, incs)
def test_cost_is_fee_plus_exact_rate_rounded_once(billsec, r, fee, inc):
    out = rate(answered=True, billsec=billsec, billmsec=None, tariffs=[_t(r, fee, inc)])
    initial, sub = inc
    billed = 0 if billsec == 0 else (initial if billsec <= initial else
                                     initial + -(-(billsec - initial) // sub) * sub)
    assert out.billed_seconds == billed
    exact = fee + r * billed / Decimal(60)
    assert out.cost == exact.quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)
    assert out.cost >= fee


@given(st.integers(0, 20_000), st.integers(0, 20_000), money, incs)
def test_cost_grows_with_talk_time(a, b, r, inc):
    lo, hi = sorted((a, b))
    terms = [_t(r, "0.01", inc)]
    c_lo = rate(answered=True, billsec=lo, billmsec=None, tariffs=terms).cost
    c_hi = rate(answered=True, billsec=hi, billmsec=None, tariffs=terms).cost
    assert c_lo <= c_hi


@given(st.integers(0, 10_000_000))
def test_ceil_ms_never_bills_less_than_billsec_floor(ms):
    # FreeSWITCH's billsec is within one second of billmsec/1000
    assert talk_seconds(ms // 1000, ms, CEIL_MS) >= talk_seconds(ms // 1000, ms, BILLSEC)
    assert talk_seconds(ms // 1000, ms, CEIL_MS) - ms / 1000 < 1


@given(st.lists(st.tuples(st.integers(-5, 5), money), min_size=1, max_size=6),
       st.integers(-6, 6))
def test_tariff_at_picks_the_latest_start_not_after_answer(starts, at_offset):
    tariffs = [_t(r, start=T0 + timedelta(days=d)) for d, r in starts]
    at = T0 + timedelta(days=at_offset, hours=1)
    chosen = tariff_at(tariffs, at)
    eligible = [t for t in tariffs if t.effective_from <= at]
    if not eligible:
        assert chosen is None
    else:
        assert chosen.effective_from == max(t.effective_from for t in eligible)


def test_floats_are_refused():
    with pytest.raises(TypeError):
        rate(answered=True, billsec=1, billmsec=None, tariffs=[Tariff(0.1)])


def test_a_leg_beyond_what_the_ledger_holds_is_unrated_never_truncated():
    # billed_seconds is an integer column, cost numeric(18,6): past either, the leg is
    # flagged unrated (and counted by the caller) instead of failing its write.
    huge_talk = rate(answered=True, billsec=MAX_BILLED_SECONDS, billmsec=None,
                     tariffs=[_t("0.01", "0", (60, 60))])
    assert (huge_talk.cost, huge_talk.billed_seconds) == (None, 0)
    assert "beyond what the ledger holds" in huge_talk.unrated_reason
    dear = rate(answered=True, billsec=3600, billmsec=None, tariffs=[_t("999999.999999", "0")])
    assert dear.cost == Decimal("59999999.999940")          # within: rated as usual
    too_dear = rate(answered=True, billsec=3600 * 24 * 365 * 50, billmsec=None,
                    tariffs=[_t("999999.999999", "0")])
    assert too_dear.cost is None and too_dear.unrated_reason
    at_the_edge = rate(answered=True, billsec=MAX_BILLED_SECONDS - 59, billmsec=None,
                       tariffs=[_t("0", "0", (60, 60))])
    assert at_the_edge.billed_seconds == MAX_BILLED_SECONDS - 7 and at_the_edge.cost == 0
