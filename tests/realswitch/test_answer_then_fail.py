"""A carrier that answers and then fails, on a real FreeSWITCH 1.10.12 (docs/rates.md, "a
leg answered for a moment and then failed by the switch"; docs/routing.md §4a).

France is bravo's (gw_b: 0.0100/min + 0.0050 connect fee, 6/6), then charlie's (gw_c:
0.0200/min, 60/60), then alpha's (world.py). gw_b plays the carrier under test; each test
first asserts what the switch and the carriers did (FreeSWITCH's CHANNEL_HANGUP_COMPLETE
of every leg, the sipp carriers' INVITE counts and message traces), then that switchd's
CDR, costs, health, metrics and live calls agree with it.

What FreeSWITCH does (seen here, and in its source, v1.10.12):
- 200 OK whose SDP offers only a codec it has not loaded (G.729): sofia ACKs the 200, fails
  the SDP negotiation (sofia.c, nua_callstate_ready: "NO CODECS") and sends BYE (Reason
  Q.850 cause 88). The leg is never marked answered: no answer time, billsec 0, billmsec 0,
  INCOMPATIBLE_DESTINATION, no sip_term_status, sip_hangup_disposition send_bye (sofia
  BYEs only a dialog the far end answered). The bridge fails over to the next carrier and
  the caller is answered by it.
- 200 OK, then the carrier's own BYE ~30 ms after the ACK: an answered leg of billmsec
  30-60, billsec 0 (1 when a second boundary falls in between), NORMAL_CLEARING, status
  200, recv_bye. The caller was answered and gets the switch's BYE at once: no failover.
- 200 OK without SDP to an INVITE that offered one: sofia-sip itself ACKs and BYEs
  (Reason SIP 488 "Incomplete offer/answer") and reports a 500: unanswered,
  NORMAL_TEMPORARY_FAILURE, sip_term_status 500, no sip_hangup_disposition. The next
  carrier answers the caller.
"""
from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal

import pytest

from daemon_harness import metric

from . import world
from .sipp import Carrier, received_messages

pytestmark = [pytest.mark.realswitch, pytest.mark.slow]

FRANCE = "+33142685300"
# bravo billing every started second instead of FreeSWITCH's billsec
BRAVO_CEIL_MS = world.WORLD_TOML.replace('name = "bravo"\n',
                                         'name = "bravo"\nbilling_rounding = "ceil_ms"\n', 1)


def _cost(carrier: str, billsec: int, billmsec: int = 0, rounding: str = "billsec",
          refused_answer: bool = False) -> tuple[int, Decimal]:
    """DESIGN §4 and docs/rates.md by hand, from world.py's deck: (billed seconds, cost) of
    an answered leg, or of one the carrier answered and FreeSWITCH refused (talk 0 s, or
    the started second for a ceil_ms carrier)."""
    rate, fee, initial, sub = world.rate_of(carrier, "33")
    if refused_answer:
        talk = 1 if rounding == "ceil_ms" else 0
    else:
        talk = -(-billmsec // 1000) if rounding == "ceil_ms" else billsec
    billed = 0 if talk <= 0 else initial if talk <= initial else \
        initial + -(-(talk - initial) // sub) * sub
    cost = Decimal(fee) + Decimal(rate) * billed / 60
    return billed, cost.quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)


def _dialog(carrier: Carrier, call_id: str) -> list[str]:
    """What a sipp carrier received in one dialog, in order, from its -trace_msg logs:
    request lines ('INVITE', 'ACK', 'BYE Q.850;cause=88;...' with the Reason header) and
    responses ('200 BYE' for the answer to its own BYE)."""
    seen = []
    for n in range(1, carrier.starts + 1):
        for message in received_messages(carrier.dir / f"messages-{n}.log"):
            if not re.search(rf"^(?:Call-ID|i):\s*{re.escape(call_id)}\s*$", message, re.M | re.I):
                continue
            first = message.split("\n", 1)[0]
            if first.startswith("SIP/2.0 "):
                cseq = re.search(r"^CSeq:\s*\d+\s+(\w+)", message, re.M | re.I)
                seen.append(f"{first.split()[1]} {cseq.group(1) if cseq else '?'}")
                continue
            reason = re.search(r"^Reason:\s*(.*?)\s*$", message, re.M | re.I)
            seen.append(first.split(" ", 1)[0] + (f" {reason.group(1)}" if reason else ""))
    return seen


def _health(rs, carrier: str) -> int:
    return rs.rows("SELECT health FROM carriers WHERE name = %s", carrier)[0][0]


def _settled_legs(rs, legs) -> dict[str, tuple]:
    """Every leg's row once FreeSWITCH's own CDR has settled it (the record of truth):
    leg uuid -> (carrier, answered_at, billsec, billed_seconds, cost, unrated, disposition)."""
    uuids = {leg.uuid for leg in legs}

    def settled():
        rows = rs.rows("SELECT leg_uuid, carrier, answered_at, billsec, billed_seconds, cost, "
                       "unrated, disposition, cdr_source FROM call_legs WHERE call_uuid = %s",
                       legs[0].uuid)
        done = {r[0]: r[1:8] for r in rows if r[8] == "switch"}
        return done if set(done) == uuids and len(rows) == len(uuids) else None
    return rs.wait_until(settled, what="the switch's CDR of every leg")


def _the_call(rs, call_uuid: str, cost: Decimal) -> tuple:
    """The call's one CDR row once its cost is the sum of its settled legs."""
    rows = rs.wait_until(lambda: (lambda r: r if r and r[0][1] == cost else None)(rs.rows(
        "SELECT count(*) OVER (), cost, billed_seconds, carrier, first_choice_carrier, attempts, "
        "unrated FROM calls WHERE call_uuid = %s", call_uuid)), what=f"the call's cost {cost}")
    assert rows[0][0] == 1, rows                  # exactly one CDR
    return rows[0][1:]


def _nothing_live(rs) -> None:
    """No call left up in switchd (its slots go with it), and the live-calls gauge, moved
    by the daemon's periodic sweep, back to 0."""
    assert rs.process.get("/v1/calls")[1]["calls"] == []
    rs.wait_until(lambda: metric(rs.process, "switchd_live_calls") == 0,
                  what="switchd_live_calls back to 0")


@pytest.mark.parametrize("rounding", ["billsec", "ceil_ms"])
def test_an_answer_with_an_unusable_sdp_fails_over_and_pays_its_connect_fee(
        realswitch, make_rs_daemon, rounding):
    rs = make_rs_daemon(world_toml=BRAVO_CEIL_MS if rounding == "ceil_ms" else None)
    realswitch.carrier("gw_b").set_mode("answer-bad-sdp")
    result = realswitch.call(FRANCE, hold_ms=1500)
    assert result.code == 200, result                       # answered by the next carrier
    legs = realswitch.wait_call(result)
    a, b, c = legs
    assert [leg.gateway for leg in legs[1:]] == ["gw_b", "gw_c"]
    assert realswitch.invites() == {"gw_a": 0, "gw_b": 1, "gw_c": 1}
    # FreeSWITCH: it ACKed bravo's 200 and hung up with a BYE, never marking it answered
    assert _dialog(realswitch.carrier("gw_b"), b.sip_call_id) == [
        "INVITE", "ACK", 'BYE Q.850;cause=88;text="INCOMPATIBLE_DESTINATION"']
    assert (b.cause, b.sip_term_status, b.billsec, b.billmsec) == \
        ("INCOMPATIBLE_DESTINATION", None, 0, 0)
    assert b.headers["Caller-Channel-Answered-Time"] == "0"
    assert (b.headers["variable_endpoint_disposition"],
            b.headers["variable_sip_hangup_disposition"]) == ("NO CODECS", "send_bye")
    assert c.cause == "NORMAL_CLEARING" and c.headers["Caller-Channel-Answered-Time"] != "0"
    # switchd, money: bravo's connect fee (never 0), charlie's call, one CDR of their sum
    bravo_billed, bravo_cost = _cost("bravo", 0, rounding=rounding, refused_answer=True)
    charlie_billed, charlie_cost = _cost("charlie", c.billsec)
    assert bravo_cost > 0 and charlie_cost > 0
    rows = _settled_legs(rs, legs)
    assert rows[b.uuid] == ("bravo", None, 0, bravo_billed, bravo_cost, False, "carrier_failure")
    assert rows[c.uuid][0] == "charlie" and rows[c.uuid][2:] == (
        c.billsec, charlie_billed, charlie_cost, False, "answered")
    assert _the_call(rs, a.uuid, bravo_cost + charlie_cost) == (
        bravo_cost + charlie_cost, bravo_billed + charlie_billed, "charlie", "bravo", 2, False)
    # ESL's rating agreed: each carrier's money under its own name
    assert metric(rs.process, "switchd_cost_total", carrier="bravo") == float(bravo_cost)
    assert metric(rs.process, "switchd_cost_total", carrier="charlie") == float(charlie_cost)
    # health and routing: an unusable answer is the carrier's failure, and it fails over
    steps = rs.wait_until(lambda: rs.rows(
        "SELECT result, reason FROM routing_decisions WHERE call_uuid = %s "
        "AND reason LIKE 'failover%%'", a.uuid), what="the failover step")
    assert steps == [("routed", "failover: attempt 1 via bravo/gw_b: INCOMPATIBLE_DESTINATION "
                                "-> unreachable: next")]
    assert metric(rs.process, "switchd_failovers_total", carrier="bravo") == 1
    rs.wait_until(lambda: _health(rs, "bravo") == 95, what="bravo charged once")
    assert _health(rs, "charlie") == 100
    _nothing_live(rs)


@pytest.mark.parametrize("rounding", ["billsec", "ceil_ms"])
def test_an_answer_then_a_bye_30ms_later_pays_its_connect_fee(realswitch, make_rs_daemon,
                                                               rounding):
    rs = make_rs_daemon(world_toml=BRAVO_CEIL_MS if rounding == "ceil_ms" else None)
    realswitch.carrier("gw_b").set_mode("answer-then-bye")
    result = realswitch.call(FRANCE, hold_ms=3000)
    # the caller was answered, and the switch hung up at once: no failover after an answer
    assert (result.code, result.ended_by) == (200, "switch"), result
    assert result.duration < 1.0 and result.bye_reason == 'Q.850;cause=16;text="NORMAL_CLEARING"'
    legs = realswitch.wait_call(result)
    a, b = legs
    assert b.gateway == "gw_b"
    assert realswitch.invites() == {"gw_a": 0, "gw_b": 1, "gw_c": 0}
    assert _dialog(realswitch.carrier("gw_b"), b.sip_call_id) == ["INVITE", "ACK", "200 BYE"]
    answer_us = int(b.headers["Caller-Channel-Answered-Time"])
    end_us = int(b.headers["Caller-Channel-Hangup-Time"])
    assert answer_us and (b.cause, b.sip_term_status) == ("NORMAL_CLEARING", 200)
    assert b.headers["variable_sip_hangup_disposition"] == "recv_bye"
    assert 20 <= b.billmsec < 1000
    assert b.billsec == end_us // 1_000_000 - answer_us // 1_000_000     # 0, or 1 across a second
    billed, cost = _cost("bravo", b.billsec, b.billmsec, rounding)
    assert cost > 0 and billed == (6 if rounding == "ceil_ms" or b.billsec else 0)
    rows = _settled_legs(rs, legs)
    assert rows[b.uuid][0] == "bravo" and rows[b.uuid][1] is not None
    assert rows[b.uuid][2:] == (b.billsec, billed, cost, False, "answered")
    assert _the_call(rs, a.uuid, cost) == (cost, billed, "bravo", "bravo", 1, False)
    assert metric(rs.process, "switchd_cost_total", carrier="bravo") == float(cost)
    # an answered leg is the carrier's success, however short (docs/routing.md §3)
    assert metric(rs.process, "switchd_failovers_total") == 0
    assert _health(rs, "bravo") == 100
    _nothing_live(rs)


def test_an_answer_without_sdp_is_a_500_to_switchd(realswitch, rs_daemon):
    """A 200 OK without the SDP answer the INVITE's offer needs. sofia-sip refuses it below
    FreeSWITCH: its ACK and BYE reach the carrier, while FreeSWITCH reports a 500 it never
    received, with no trace of the 200 that switchd could bill (docs/rates.md, known
    limit): the 5xx row, fail over, bravo charged, the leg unanswered and costing 0."""
    realswitch.carrier("gw_b").set_mode("answer-no-sdp")
    result = realswitch.call(FRANCE, hold_ms=500)
    assert result.code == 200, result
    legs = realswitch.wait_call(result)
    a, b, c = legs
    assert [leg.gateway for leg in legs[1:]] == ["gw_b", "gw_c"]
    assert realswitch.invites() == {"gw_a": 0, "gw_b": 1, "gw_c": 1}
    assert _dialog(realswitch.carrier("gw_b"), b.sip_call_id) == [
        "INVITE", "ACK", 'BYE SIP;cause=488;text="Incomplete offer/answer"']
    assert (b.cause, b.sip_term_status, b.billsec, b.billmsec) == \
        ("NORMAL_TEMPORARY_FAILURE", 500, 0, 0)
    assert b.headers["Caller-Channel-Answered-Time"] == "0"
    for name in ("variable_sip_hangup_disposition", "variable_sip_invite_failure_status"):
        assert name not in b.headers            # a carrier's real 500 has recv_refuse, 500
    charlie_billed, charlie_cost = _cost("charlie", c.billsec)
    rows = _settled_legs(rs_daemon, legs)
    assert rows[b.uuid] == ("bravo", None, 0, 0, Decimal("0.000000"), False, "carrier_failure")
    assert _the_call(rs_daemon, a.uuid, charlie_cost)[2:] == ("charlie", "bravo", 2, False)
    steps = rs_daemon.wait_until(lambda: rs_daemon.rows(
        "SELECT reason FROM routing_decisions WHERE call_uuid = %s AND reason LIKE 'failover%%'",
        a.uuid), what="the failover step")
    assert steps == [("failover: attempt 1 via bravo/gw_b: NORMAL_TEMPORARY_FAILURE sip 500 "
                      "-> 5xx: next",)]
    rs_daemon.wait_until(lambda: _health(rs_daemon, "bravo") == 95, what="bravo charged once")
    _nothing_live(rs_daemon)
