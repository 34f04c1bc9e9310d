"""Integers FreeSWITCH reports over ESL, checked at the edge (events.INT_HEADERS).

A value no column or datetime can hold, a negative figure or one that is not a number is
refused where it enters: logged with the header and the call UUID, taken as absent, and
the carrier leg whose money depended on it is flagged unrated (never billed 0). Proved
through the real chain: event bytes → typed event → registry → rating → the CDR writer
into a real PostgreSQL, in one batch with other calls' good records.
"""
from __future__ import annotations

import logging
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from dialplan import validate
from switchd.accounting import billing
from switchd.adapters.db.cdr_writer import CdrWriter, LegRecord
from switchd.adapters.db.spool import Spool
from switchd.adapters.esl.events import (INT_HEADERS, HeartbeatEvent, channel_event_from_plain,
                                         to_typed)
from switchd.adapters.esl.framing import parse_event_plain
from switchd.calls.model import CallEnded, LegEnded
from switchd.calls.registry import CallRegistry

FIX = Path(__file__).parent / "fixtures" / "answer-then-fail" / "bad-sdp-b-leg.hangup-complete.txt"
CREATED = 1796157870272170
ANSWERED = CREATED + 2_000_000
ENDED = ANSWERED + 61_000_000           # 61 s of talk: bravo 0.01/min + 0.005, 6/6
COST = Decimal("0.016000")              # 0.005 + 0.01 * 66 / 60 (billsec 61 → 66 billed)
BAD = ["-1", "99999999999999999999", "12abc", "1e30", "+5", " 5", "1_000", "\u0663",
       "9223372036854775808"]


def _body(uuid: str, seq: int, name: str = "CHANNEL_HANGUP_COMPLETE", **values) -> bytes:
    """A carrier leg's plain event (FreeSWITCH 1.10.12's, captured): the leg is its own
    call (an originate attempt), answered for 61 s; `values` replace headers (a header
    the capture lacks is added)."""
    headers = {"Event-Name": name, "Unique-ID": uuid, "Caller-Unique-ID": uuid,
               "Channel-Call-UUID": uuid, "Other-Leg-Unique-ID": None,
               "Event-Sequence": str(seq), "Hangup-Cause": "NORMAL_CLEARING",
               "Caller-Channel-Answered-Time": str(ANSWERED),
               "Caller-Channel-Hangup-Time": str(ENDED),
               "variable_billsec": "61", "variable_billmsec": "61000",
               "variable_sip_term_status": "200", "variable_sip_hangup_disposition": "recv_bye"}
    headers.update(values)
    lines = FIX.read_text().split("\n")
    out, seen = [], set()
    for line in lines:
        key = line.split(": ", 1)[0]
        if key in headers and ": " in line:
            seen.add(key)
            if headers[key] is not None:
                out.append(f"{key}: {headers[key]}")
        else:
            out.append(line)
    extra = [f"{k}: {v}" for k, v in headers.items() if k not in seen and v is not None]
    return "\n".join(out[:1] + extra + out[1:]).encode()


def _event(body: bytes):
    event = channel_event_from_plain(body)
    assert event == to_typed(parse_event_plain(body))          # fast path = full parse
    return event


def _ended_leg(uuid: str, seq: int, **values):
    """The leg through the registry: its create, then its hangup with `values`."""
    reg = CallRegistry()
    reg.apply(_event(_body(uuid, seq, "CHANNEL_CREATE", **{
        "Caller-Channel-Answered-Time": "0", "Caller-Channel-Hangup-Time": "0",
        "variable_billsec": None, "variable_billmsec": None,
        "variable_sip_term_status": None, "variable_sip_hangup_disposition": None})))
    effects = reg.apply(_event(_body(uuid, seq + 1, **values)))
    [leg] = [e.leg for e in effects if isinstance(e, LegEnded)]
    [call] = [e.call for e in effects if isinstance(e, CallEnded)]
    return leg, call


# --- the edge ----------------------------------------------------------------------------
@pytest.mark.parametrize("header", sorted(INT_HEADERS))
@pytest.mark.parametrize("value", BAD)
def test_a_bad_integer_header_is_refused_logged_and_taken_as_absent(header, value, caplog):
    body = _body("u-1", 7, **{header: value, "Channel-Call-UUID": "call-1"})
    with caplog.at_level(logging.WARNING, logger="switchd.adapters.esl.events"):
        event = _event(body)
    assert event.refused == (header,)
    absent = {"Event-Date-Timestamp": ("timestamp_us", 0), "Event-Sequence": ("sequence", 0),
              "Caller-Channel-Created-Time": ("created_us", 0),
              "Caller-Channel-Answered-Time": ("answered_us", 0),
              "Caller-Channel-Hangup-Time": ("hangup_us", 0),
              "variable_sip_term_status": ("sip_status", None),
              "variable_billmsec": ("billmsec", None), "variable_billsec": ("billsec", None)}
    if header in absent:
        field, nothing = absent[header]
        assert getattr(event, field) == nothing
    logged = [r for r in caplog.records if header in r.getMessage()]
    assert logged       # once per parse: _event parses both ways
    for record in logged:
        assert "u-1" in record.getMessage() and record.call_uuid == "call-1"
        assert "taken as absent" in record.getMessage()


@pytest.mark.parametrize("value", BAD)
def test_a_heartbeat_with_a_bad_timestamp_is_refused_logged_and_still_a_heartbeat(
        value, caplog):
    """A HEARTBEAT's time is read by the same range as a channel event's: refused, logged
    and taken as absent, the heartbeat itself kept (it is what keeps the link alive)."""
    with caplog.at_level(logging.WARNING, logger="switchd.adapters.esl.events"):
        event = to_typed({"Event-Name": "HEARTBEAT", "Event-Date-Timestamp": value})
    assert event == HeartbeatEvent(timestamp_us=0)
    [record] = [r for r in caplog.records if "Event-Date-Timestamp" in r.getMessage()]
    assert "HEARTBEAT" in record.getMessage() and "taken as absent" in record.getMessage()


def test_a_heartbeat_reads_its_timestamp():
    assert to_typed({"Event-Name": "HEARTBEAT", "Event-Date-Timestamp": str(CREATED)}) == \
        HeartbeatEvent(timestamp_us=CREATED)


@pytest.mark.parametrize("header,value", [
    ("Caller-Channel-Answered-Time", str(validate.MAX_UEPOCH)),
    ("Caller-Channel-Answered-Time", "0"), ("variable_sip_term_status", "100"),
    ("variable_sip_term_status", "699"), ("variable_billsec", str(validate.INT32_MAX)),
    ("variable_billmsec", str(2**63 - 1)), ("Event-Sequence", str(2**63 - 1)),
])
def test_the_edges_of_each_range_are_accepted(header, value):
    event = _event(_body("u-1", 7, **{header: value}))
    assert event.refused == ()


def test_the_switch_cdr_and_esl_read_integers_by_the_same_ranges():
    from switchd.accounting.cdrs import json_cdr
    assert set(json_cdr._KINDS.values()) <= set(validate.SWITCH_INTS)
    assert set(INT_HEADERS.values()) <= set(validate.SWITCH_INTS)


# --- the money -----------------------------------------------------------------------------
def test_a_good_leg_is_rated_as_before():
    leg, _ = _ended_leg("u-good", 10)
    rec = billing.rate_leg(leg)
    assert (rec.billsec, rec.billed_seconds, rec.cost, rec.unrated) == (61, 66, COST, False)


@pytest.mark.parametrize("values,rounding", [
    ({"variable_billsec": "-61"}, "billsec"),
    ({"variable_billsec": "2147483648"}, "billsec"),
    ({"variable_billmsec": "61000x"}, "ceil_ms"),
    ({"Caller-Channel-Answered-Time": "99999999999999999999"}, "billsec"),
    ({"Caller-Channel-Answered-Time": "-1"}, "ceil_ms"),
])
def test_a_carrier_leg_whose_money_depends_on_a_refused_figure_is_unrated_never_zero(
        values, rounding):
    leg, _ = _ended_leg("u-bad", 10, **values)
    rec = billing.rate_leg(leg, rounding_of=lambda carrier: rounding)
    assert rec.unrated and rec.cost is None and rec.billed_seconds == 0
    assert not rec.provisional          # nothing was estimated in its place


@pytest.mark.parametrize("values", [
    {"variable_billmsec": "-5"},                    # billsec rounding reads billsec only
    {"variable_sip_term_status": "99999999999"},    # no money in a SIP status
    {"Caller-Channel-Created-Time": "x"}, {"Event-Date-Timestamp": "-1"},
])
def test_a_refused_figure_the_money_does_not_depend_on_changes_no_cost(values):
    leg, _ = _ended_leg("u-odd", 10, **values)
    rec = billing.rate_leg(leg)
    assert (rec.billed_seconds, rec.cost, rec.unrated) == (66, COST, False)


def test_an_unanswered_leg_with_a_refused_billsec_still_costs_nothing():
    leg, _ = _ended_leg("u-none", 10, **{"Caller-Channel-Answered-Time": "0",
                                         "variable_billsec": "-3",
                                         "variable_sip_hangup_disposition": "send_cancel"})
    rec = billing.rate_leg(leg)
    assert (rec.cost, rec.unrated) == (Decimal("0.000000"), False)


def test_an_answer_time_refused_once_and_then_given_is_rated():
    reg = CallRegistry()
    reg.apply(_event(_body("u-late", 1, "CHANNEL_ANSWER",
                           **{"Caller-Channel-Answered-Time": "-1", "variable_billsec": None,
                              "variable_billmsec": None,
                              "Caller-Channel-Hangup-Time": "0"})))
    effects = reg.apply(_event(_body("u-late", 2)))
    [leg] = [e.leg for e in effects if isinstance(e, LegEnded)]
    rec = billing.rate_leg(leg)
    assert (rec.cost, rec.unrated) == (COST, False)


# --- one bad value never breaks the others' CDRs (real PostgreSQL) ---------------------------
def _stored(url: str) -> dict[str, tuple]:
    with psycopg.connect(url) as conn:
        return {uuid: tuple(rest) for uuid, *rest in conn.execute(
            "SELECT call_uuid, cost, unrated, billed_seconds FROM calls")}


def _write_one_batch(url: str, tmp_path: Path, records: list) -> CdrWriter:
    """Every record queued before the writer starts: its first batch holds them all."""
    writer = CdrWriter(url, spool=Spool.in_data_dir(tmp_path), flush_interval=0.05)
    for rec in records:
        (writer.submit_leg if isinstance(rec, LegRecord) else writer.submit_call)(rec)
    writer.start()
    writer.stop(flush=True)
    return writer


def test_a_batch_with_one_poisoned_call_stores_every_call(migrated_pg_url, tmp_path):
    """Twenty good calls and one whose hangup carries a SIP status and a billsec beyond
    their columns (integer), all in the writer's one batch: every call is stored,
    the bad one flagged unrated with no cost; nothing is refused, parked or spooled."""
    records, uuids = [], []
    for i in range(21):
        uuid = f"00000000-0000-4000-8000-{i:012d}"
        bad = {"variable_sip_term_status": "99999999999",
               "variable_billsec": "2147483648"} if i == 10 else {}
        leg, call = _ended_leg(uuid, 100 * i, **bad)
        rec = billing.rate_leg(leg)
        records += [rec, billing.call_record(call, [rec])]
        uuids.append(uuid)
    writer = _write_one_batch(migrated_pg_url, tmp_path, records)
    assert (writer.rejected, writer.spooled, writer.spool.records) == (0, 0, 0)
    stored = _stored(migrated_pg_url)
    assert set(stored) == set(uuids)
    assert stored.pop(uuids[10]) == (Decimal("0"), True, 0)      # flagged, no cost counted
    assert set(stored.values()) == {(COST, False, 66)}
    with psycopg.connect(migrated_pg_url) as conn:
        assert conn.execute("SELECT sip_status, billsec, cost FROM call_legs "
                            "WHERE leg_uuid = %s", (uuids[10],)).fetchone() == (None, None, None)


def test_without_the_edge_such_a_value_would_have_cost_the_leg(migrated_pg_url, tmp_path):
    """Why the check is at the door: the same SIP status unchecked is refused by
    PostgreSQL, the writer's batch is retried by halves, and the leg is parked out of the
    ledger (rejected.jsonl) instead of stored flagged."""
    good, _ = _ended_leg("00000000-0000-4000-8000-000000000001", 1)
    bad = billing.rate_leg(good)
    raw = LegRecord(**{**bad.__dict__, "leg_uuid": "00000000-0000-4000-8000-000000000002",
                       "sip_status": 99999999999})
    writer = _write_one_batch(migrated_pg_url, tmp_path, [billing.rate_leg(good), raw])
    assert writer.rejected == 1
