"""`switchd report` and `switchd rerate` against a real PostgreSQL, with CDRs written by the
CDR writer and every expected figure worked out by hand in the comments (docs/reports.md)."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from switchd.accounting import reports
from switchd.adapters.db import store
from switchd.adapters.db.cdr_writer import CallRecord, LegRecord, write_batch
from switchd.admin.provision import provision
from switchd.admin.rates_import import import_rates
from switchd.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "provision.toml"
T0 = datetime(2025, 3, 10, 12, 0, tzinfo=timezone.utc)
DAY = ("2025-03-10", "2025-03-11")
S = timedelta(seconds=1)
M = timedelta(minutes=1)
ROUTE_C1 = uuid.UUID("00000000-0000-4000-8000-0000000000c1")


def _leg(uuid_, call, carrier, start, *, answered=None, ended, cause="NORMAL_CLEARING",
         sip=None, billsec=None, billmsec=0, billed=0, rate="0.01", inc="60/6",
         cost="0", pdd=None, disposition, provisional=False):
    return ("leg", LegRecord(
        leg_uuid=uuid_, call_uuid=call, direction="outbound", carrier=carrier,
        gateway=f"{carrier}-gw", started_at=start, answered_at=answered, ended_at=ended,
        hangup_cause=cause, sip_status=sip, billmsec=billmsec, billed_seconds=billed,
        rate_per_min=Decimal(rate), connect_fee=Decimal(0), increments=inc,
        cost=None if cost is None else Decimal(cost), billsec=billsec,
        provisional=provisional, unrated=cost is None, pdd_ms=pdd, disposition=disposition))


def _call(call, tenant, carrier, start, *, answered=None, ended, cause, destination,
          pdd=None, disposition, route_id=None, attempts=1):
    return ("call", CallRecord(
        call_uuid=call, direction="outbound", tenant=tenant, route_id=route_id,
        destination=destination, started_at=start, answered_at=answered, ended_at=ended,
        hangup_cause=cause, carrier=carrier, attempts=attempts, pdd_ms=pdd,
        disposition=disposition))


def _write_traffic(conn) -> None:
    """Six calls, seven carrier legs (alpha 60/6 at 0.01, bravo 1/1 at 0.012):

    c1  alpha a1  answered 90 s (billed 90 = 60 + 5×6), cost 0.015, PDD 2000; number only
                  in its routing decision (+442079460000), the CDR says '1000'
    c2  alpha a2  USER_BUSY (486), PDD 1500
    cF  alpha a3  NORMAL_TEMPORARY_FAILURE (503), then
        bravo b1  answered at T0+40m for 61 s (billed 61), cost 0.0122, PDD 3000;
                  dialled '020 7946 0000' by a GB tenant
    c4  alpha a4  answered 30 s (billed 60), cost 0.010, PDD 2500, provisional, +33123456789
    c6  bravo b2  answered 10 s, unrated (cost NULL)
    c7  bravo b3  NO_ANSWER (rang out), PDD 4000; tenant zeta
    """
    store.insert_routing_decisions(conn, [{
        "id": ROUTE_C1, "call_uuid": "c1", "tenant": "acme", "direction": "outbound",
        "destination": "+442079460000", "result": "routed", "reason": "lcr"}])
    t_f, t_4, t_6, t_7 = T0 + 39 * M, T0 + 2 * M, T0 + 3 * M, T0 + 4 * M
    write_batch(conn, [
        _leg("a1", "c1", "alpha", T0, answered=T0 + 3 * S, ended=T0 + 93 * S, billsec=90,
             billmsec=90400, billed=90, cost="0.015000", pdd=2000, disposition="answered"),
        _call("c1", "acme", "alpha", T0, answered=T0 + 3 * S, ended=T0 + 93 * S,
              cause="NORMAL_CLEARING", destination="1000", pdd=2000, disposition="answered",
              route_id=str(ROUTE_C1)),
        _leg("a2", "c2", "alpha", T0 + M, ended=T0 + M + 10 * S, cause="USER_BUSY", sip=486,
             pdd=1500, disposition="callee"),
        _call("c2", "acme", "alpha", T0 + M, ended=T0 + M + 10 * S, cause="USER_BUSY",
              destination="+442079460000", pdd=1500, disposition="callee"),
        _leg("a3", "cF", "alpha", t_f, ended=t_f + 5 * S, cause="NORMAL_TEMPORARY_FAILURE",
             sip=503, disposition="carrier_failure"),
        _leg("b1", "cF", "bravo", t_f + 6 * S, answered=T0 + 40 * M, ended=T0 + 41 * M + S,
             billsec=61, billmsec=61200, billed=61, rate="0.012", inc="1/1", cost="0.012200",
             pdd=3000, disposition="answered"),
        _call("cF", "acme", "bravo", t_f, answered=T0 + 40 * M, ended=T0 + 41 * M + S,
              cause="NORMAL_CLEARING", destination="020 7946 0000", pdd=3000,
              disposition="answered", attempts=2),
        _leg("a4", "c4", "alpha", t_4, answered=t_4 + 5 * S, ended=t_4 + 35 * S, billsec=30,
             billmsec=30000, billed=60, cost="0.010000", pdd=2500, disposition="answered",
             provisional=True),
        _call("c4", "acme", "alpha", t_4, answered=t_4 + 5 * S, ended=t_4 + 35 * S,
              cause="NORMAL_CLEARING", destination="+33123456789", pdd=2500,
              disposition="answered"),
        _leg("b2", "c6", "bravo", t_6, answered=t_6 + 2 * S, ended=t_6 + 12 * S, billsec=10,
             billmsec=10000, rate="0.012", inc="1/1", cost=None, disposition="answered"),
        _call("c6", "acme", "bravo", t_6, answered=t_6 + 2 * S, ended=t_6 + 12 * S,
              cause="NORMAL_CLEARING", destination="+442079460000", disposition="answered"),
        _leg("b3", "c7", "bravo", t_7, ended=t_7 + 30 * S, cause="NO_ANSWER", pdd=4000,
             rate="0.012", inc="1/1", disposition="no_answer"),
        _call("c7", "zeta", "bravo", t_7, ended=t_7 + 30 * S, cause="NO_ANSWER",
              destination="+442079460000", pdd=4000, disposition="no_answer"),
    ])


def _charlie_decks(url: str, tmp_path: Path) -> None:
    """charlie (60/60, billsec): base deck 4420 at 0.015 + 0.001 connect fee (London);
    from T0+30m a new deck with 4420 at 0.03, no fee."""
    base = tmp_path / "charlie-base.csv"
    base.write_text("prefix,rate_per_min,connect_fee,description\n"
                    "44,0.02,0,UK\n4420,0.015,0.001,London\n")
    later = tmp_path / "charlie-later.csv"
    later.write_text("prefix,rate_per_min\n4420,0.03\n")
    import_rates(url, base, "charlie")
    import_rates(url, later, "charlie", effective_from=T0 + 30 * M)


@pytest.fixture
def db(migrated_pg_url, tmp_path, monkeypatch):
    provision(migrated_pg_url, EXAMPLE)
    _charlie_decks(migrated_pg_url, tmp_path)
    with psycopg.connect(migrated_pg_url, autocommit=True) as conn:
        _write_traffic(conn)
    monkeypatch.setenv("SWITCHD_DATABASE_URL", migrated_pg_url)
    monkeypatch.setenv("SWITCHD_DATA_DIR", str(tmp_path / "data"))
    return migrated_pg_url


def _json(capsys, *argv):
    assert main(list(argv)) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_carrier_report_counts_legs_with_quality_and_causes(db, capsys):
    rows = {r["key"]: r for r in _json(capsys, "report", "--by", "carrier", "--since", DAY[0],
                                      "--until", DAY[1], "--json")}
    alpha, bravo = rows["alpha"], rows["bravo"]
    # alpha: a1..a4; answered a1, a4 -> ASR 2/4; only a3 failed in the network -> NER 3/4
    assert (alpha["calls"], alpha["answered"], alpha["failures"]) == (4, 2, 2)
    assert (alpha["asr"], alpha["ner"]) == ("50.00", "75.00")
    assert alpha["acd_seconds"] == "60.0"             # (90 + 30) / 2
    assert alpha["pdd_ms"] == 2000                    # (2000 + 1500 + 2500) / 3
    assert alpha["billed_minutes"] == "2.50"          # (90 + 60) / 60
    assert alpha["cost"] == "0.025000"                # 0.015 + 0.010
    assert (alpha["unrated"], alpha["provisional"]) == (0, 1)
    assert alpha["top_causes"] == [{"cause": "NORMAL_TEMPORARY_FAILURE", "count": 1},
                                   {"cause": "USER_BUSY", "count": 1}]
    assert alpha["dispositions"] == {"answered": 2, "callee": 1, "carrier_failure": 1}
    # bravo: b1, b2 answered, b3 rang out (the callee's side: NER 100)
    assert (bravo["calls"], bravo["answered"], bravo["asr"], bravo["ner"]) == \
        (3, 2, "66.67", "100.00")
    assert bravo["acd_seconds"] == "35.5"             # (61 + 10) / 2
    assert bravo["pdd_ms"] == 3500                    # (3000 + 4000) / 2; b2 had none
    assert bravo["billed_minutes"] == "1.02"          # 61 / 60 (the unrated b2 bills 0)
    assert bravo["cost"] == "0.012200" and bravo["unrated"] == 1
    assert bravo["top_causes"] == [{"cause": "NO_ANSWER", "count": 1}]


def test_tenant_and_day_reports_count_calls(db, capsys):
    rows = {r["key"]: r for r in _json(capsys, "report", "--by", "tenant", "--since", DAY[0],
                                      "--until", DAY[1], "--json")}
    acme = rows["acme"]
    # c1, c2, cF, c4, c6: answered all but c2; cost 0.015 + 0.0122 + 0.010 (c6 unrated)
    assert (acme["calls"], acme["answered"], acme["asr"], acme["ner"]) == \
        (5, 4, "80.00", "100.00")
    assert acme["cost"] == "0.037200"
    assert acme["billed_minutes"] == "3.52"           # (90 + 61 + 60) / 60 = 3.516…
    assert acme["acd_seconds"] == "47.8"              # (90 + 61 + 30 + 10) / 4 = 47.75
    assert acme["pdd_ms"] == 2250                     # (2000 + 1500 + 3000 + 2500) / 4
    assert (acme["unrated"], acme["provisional"]) == (1, 1)
    assert acme["top_causes"] == [{"cause": "USER_BUSY", "count": 1}]
    assert (rows["zeta"]["calls"], rows["zeta"]["answered"], rows["zeta"]["asr"]) == (1, 0, "0.00")

    (day,) = _json(capsys, "report", "--by", "day", "--since", DAY[0], "--until", DAY[1], "--json")
    assert (day["key"], day["calls"], day["answered"], day["cost"]) == \
        ("2025-03-10", 6, 4, "0.037200")
    assert _json(capsys, "report", "--by", "day", "--since", DAY[1], "--until", "2025-03-12",
                 "--json") == []


def test_tenant_filter_applies_to_every_grouping(db, capsys):
    rows = {r["key"]: r for r in _json(capsys, "report", "--by", "carrier", "--tenant", "zeta",
                                      "--since", DAY[0], "--until", DAY[1], "--json")}
    assert list(rows) == ["bravo"] and rows["bravo"]["calls"] == 1
    (zeta,) = _json(capsys, "report", "--by", "tenant", "--tenant", "zeta", "--since", DAY[0],
                    "--until", DAY[1], "--json")
    assert zeta["key"] == "zeta"


def test_savings_against_a_reference_carrier_at_answer_time(db, capsys):
    rows = {r["key"]: r for r in _json(capsys, "report", "--by", "carrier", "--reference",
                                      "charlie", "--since", DAY[0], "--until", DAY[1], "--json")}
    # a1: 90 s on charlie's base deck (answered before T0+30m): 60/60 bills 120 s,
    #     0.015 × 2 + 0.001 = 0.031, against the 0.015 it cost.
    # a4: +33… has no charlie rate: not covered.
    alpha = rows["alpha"]
    assert (alpha["reference_legs"], alpha["reference_cost"], alpha["savings"],
            alpha["reference_uncovered"]) == (1, "0.031000", "0.016000", 1)
    # b1: answered at T0+40m, on the later deck: 61 s bills 120 s at 0.03 = 0.06, vs 0.0122.
    # b2: unrated, so not compared.
    bravo = rows["bravo"]
    assert (bravo["reference_legs"], bravo["reference_cost"], bravo["savings"],
            bravo["reference_uncovered"]) == (1, "0.060000", "0.047800", 0)
    (acme,) = _json(capsys, "report", "--by", "tenant", "--tenant", "acme", "--reference",
                    "charlie", "--since", DAY[0], "--until", DAY[1], "--json")
    assert (acme["reference_cost"], acme["savings"]) == ("0.091000", "0.063800")


def test_report_table_for_people(db, capsys):
    assert main(["report", "--by", "carrier", "--reference", "charlie", "--since", DAY[0],
                 "--until", DAY[1]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["CARRIER", "LEGS", "ANSWERED", "ASR%", "NER%"]
    assert "ON_CHARLIE" in lines[0] and "SAVINGS" in lines[0]
    alpha = lines[1].split()
    assert alpha[:9] == ["alpha", "4", "2", "50.00", "75.00", "60.0", "2000", "2.50", "0.025000"]
    assert "NORMAL_TEMPORARY_FAILURE" in lines[1] and lines[1].split()[-3:] == \
        ["0.031000", "0.016000", "1"]


def test_unknown_reference_is_refused_in_one_line(db, capsys):
    assert main(["report", "--reference", "nobody"]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown carrier 'nobody'" in err[0] and "charlie" in err[0]


def _counts(url):
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT (SELECT count(*) FROM rate_decks), (SELECT count(*) FROM rates),"
                            " (SELECT sum(cost) FROM call_legs)").fetchone()


CANDIDATE = ("prefix,rate_per_min,connect_fee,initial_increment,subsequent_increment,description\n"
             "4420,0.005,0,30,6,London\n"
             "+33,0.02,0.002,1,1,France\n")


def test_rerate_prices_past_legs_on_a_candidate_deck_and_stores_nothing(db, tmp_path, capsys):
    deck = tmp_path / "delta.csv"
    deck.write_text(CANDIDATE)
    before = _counts(db)
    out = _json(capsys, "rerate", "--deck", str(deck), "--carrier", "delta", "--since", DAY[0],
                "--until", DAY[1], "--json")
    assert _counts(db) == before
    # a1: 90 s at 30/6 -> 30 + 10×6 = 90 s × 0.005/60 = 0.0075 (cost 0.015)
    # b1: 61 s -> 30 + 6×6 = 66 s × 0.005/60 = 0.0055 (cost 0.0122)
    # a4: 30 s at 1/1 -> 30 s × 0.02/60 + 0.002 = 0.012 (cost 0.010); b2 unrated
    assert out["carrier_provisioned"] is False
    assert (out["legs"], out["unrated"], out["provisional"]) == (3, 1, 1)
    assert (out["actual_cost"], out["candidate_cost"], out["difference"]) == \
        ("0.037200", "0.025000", "-0.012200")
    assert out["not_covered"] == {"legs": 0, "actual_cost": "0"}
    assert out["by_prefix"] == [
        {"prefix": "33", "description": "France", "legs": 1, "billed_seconds": 30,
         "actual_cost": "0.010000", "candidate_cost": "0.012000", "difference": "0.002000"},
        {"prefix": "4420", "description": "London", "legs": 2, "billed_seconds": 156,
         "actual_cost": "0.027200", "candidate_cost": "0.013000", "difference": "-0.014200"}]


def test_rerate_filters_and_uses_the_carriers_terms(db, tmp_path, capsys):
    deck = tmp_path / "alpha-new.csv"
    deck.write_text("prefix,rate_per_min\n4420,0.006\n")     # alpha's default 60/6 applies
    out = _json(capsys, "rerate", "--deck", str(deck), "--carrier", "alpha", "--from-carrier",
                "alpha", "--since", DAY[0], "--until", DAY[1], "--json")
    # a1 only (a4 is +33: not covered): 90 s at 60/6 = 90 s × 0.006/60 = 0.009
    assert out["carrier_provisioned"] is True
    assert (out["legs"], out["candidate_cost"], out["actual_cost"]) == (1, "0.009000", "0.015000")
    assert out["not_covered"] == {"legs": 1, "actual_cost": "0.010000"}
    assert main(["rerate", "--deck", str(deck), "--carrier", "alpha", "--since", DAY[0],
                 "--until", DAY[1]]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].split() == ["PREFIX", "DESCRIPTION", "LEGS", "BILLED_S", "ACTUAL",
                                            "CANDIDATE", "DIFFERENCE"]
    assert "not covered by the deck: 1 leg(s) that cost 0.010000" in text


def test_rerate_refuses_a_bad_deck_by_line(db, tmp_path, capsys):
    deck = tmp_path / "bad.csv"
    deck.write_text("prefix,rate_per_min\n4420,0.005\n44x,0.01\n")
    assert main(["rerate", "--deck", str(deck), "--carrier", "delta", "--since", DAY[0]]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{deck}:3: prefix '44x'" in err[0]
    dup = tmp_path / "dup.csv"
    dup.write_text("prefix,rate_per_min\n4420,0.005\n4420,0.006\n")
    assert main(["rerate", "--deck", str(dup), "--carrier", "delta", "--since", DAY[0]]) == 4
    assert "dup.csv:3: duplicate prefix 4420 (first on line 2)" in capsys.readouterr().err
    assert main(["rerate", "--deck", str(tmp_path / "none.csv"), "--carrier", "delta",
                 "--since", DAY[0]]) == 4
    assert "none.csv: cannot read: No such file or directory" in capsys.readouterr().err


def test_report_module_refuses_an_unknown_grouping(db):
    with psycopg.connect(db) as conn, pytest.raises(reports.ReportError, match="--by"):
        reports.report(conn, "caller", T0, T0 + M)



def test_the_window_is_on_the_end_time_since_included_until_excluded(db):
    with psycopg.connect(db) as conn:
        (day,) = reports.report(conn, "day", T0, T0 + timedelta(days=1))
        assert day["calls"] == 6
        # The first two calls to end: c2 at T0+70s (busy), c1 at T0+93s (0.015).
        assert reports.report(conn, "tenant", T0, T0 + 70 * S) == []
        (acme,) = reports.report(conn, "tenant", T0, T0 + 71 * S)
        assert (acme["calls"], acme["answered"]) == (1, 0)
        (acme,) = reports.report(conn, "tenant", T0, T0 + 94 * S)
        assert (acme["calls"], acme["answered"], acme["cost"]) == (2, 1, Decimal("0.015000"))
        assert reports.report(conn, "tenant", T0 + 41 * M + 2 * S, T0 + timedelta(days=1)) == []


def test_pdd_is_the_legs_stored_pdd_not_the_answer(db):
    # A leg whose progress came 1.5 s in and answer 9 s in has a PDD of 1500 (stored by
    # billing from CHANNEL_PROGRESS), whatever events are stored.
    start = T0 + timedelta(days=2)
    with psycopg.connect(db, autocommit=True) as conn:
        write_batch(conn, [
            ("leg", LegRecord(leg_uuid="p1", call_uuid="pc1", direction="outbound",
                              carrier="charlie", started_at=start,
                              progress_at=start + timedelta(milliseconds=1500),
                              answered_at=start + 9 * S, ended_at=start + 20 * S,
                              pdd_ms=1500, disposition="answered")),
            _call("pc1", "acme", "charlie", start, answered=start + 9 * S, ended=start + 20 * S,
                  cause="NORMAL_CLEARING", destination="+442079460000", pdd=1500,
                  disposition="answered"),
        ])
        (charlie,) = reports.report(conn, "carrier", start, start + M)
        (acme,) = reports.report(conn, "tenant", start, start + M)
    assert charlie["pdd_ms"] == acme["pdd_ms"] == 1500


# --- a refused answer: the carrier's 200 OK, FreeSWITCH's BYE, never marked answered -------
D3 = T0 + timedelta(days=3)
D3_WINDOW = ("2025-03-13", "2025-03-14")


def _refused_answer_traffic(url: str, tmp_path: Path) -> None:
    """Two calls to France (+33123456789) on 2025-03-13:

    cR  alpha r1  refused answer (send_bye, INCOMPATIBLE_DESTINATION): no answer time,
                  billsec 0, cost its connect fee 0.001 (docs/rates.md), ends at D3+1s
        bravo r2  answered 30 s (billsec 30, billed 30 at 1/1), cost 0.006
    cU  alpha r3  refused answer with no tariff: unrated, cost NULL

    charlie gets a deck from D3 with France at 0.02/min + 0.003 (60/60, billsec)."""
    deck = tmp_path / "charlie-d3.csv"
    deck.write_text("prefix,rate_per_min,connect_fee\n33,0.02,0.003\n")
    import_rates(url, deck, "charlie", effective_from=D3)
    refused = dict(answered=None, cause="INCOMPATIBLE_DESTINATION", billsec=0, billmsec=0,
                   billed=0, disposition="carrier_failure")
    with psycopg.connect(url, autocommit=True) as conn:
        write_batch(conn, [
            _leg("r1", "cR", "alpha", D3, ended=D3 + S, cost="0.001000", **refused),
            _leg("r2", "cR", "bravo", D3 + 2 * S, answered=D3 + 4 * S, ended=D3 + 34 * S,
                 billsec=30, billmsec=30200, billed=30, rate="0.012", inc="1/1",
                 cost="0.006000", disposition="answered"),
            _call("cR", "acme", "bravo", D3, answered=D3 + 4 * S, ended=D3 + 34 * S,
                  cause="NORMAL_CLEARING", destination="+33123456789", disposition="answered",
                  attempts=2),
            _leg("r3", "cU", "alpha", D3 + M, ended=D3 + M + S, cost=None, **refused),
            _call("cU", "acme", "alpha", D3 + M, ended=D3 + M + S,
                  cause="INCOMPATIBLE_DESTINATION", destination="+33123456789",
                  disposition="carrier_failure"),
        ])


def test_rerate_prices_a_refused_answer_at_the_candidates_connect_fee(db, tmp_path, capsys):
    _refused_answer_traffic(db, tmp_path)
    deck = tmp_path / "delta.csv"
    deck.write_text(CANDIDATE)
    out = _json(capsys, "rerate", "--deck", str(deck), "--carrier", "delta", "--since",
                D3_WINDOW[0], "--until", D3_WINDOW[1], "--json")
    # delta (not provisioned: billsec): France 0.02/min + 0.002, 1/1.
    # r1: a refused answer, talk 0 -> the connect fee alone, 0.002 (cost 0.001)
    # r2: 30 s -> 30 × 0.02/60 + 0.002 = 0.012 (cost 0.006); r3: unrated, not compared
    assert (out["legs"], out["refused_answers"], out["unrated"]) == (2, 1, 1)
    assert (out["actual_cost"], out["candidate_cost"], out["billed_seconds"]) == \
        ("0.007000", "0.014000", 30)
    assert out["by_prefix"] == [
        {"prefix": "33", "description": "France", "legs": 2, "billed_seconds": 30,
         "actual_cost": "0.007000", "candidate_cost": "0.014000", "difference": "0.007000"}]
    # A candidate billing every started second (alpha, set to ceil_ms): the refused answer
    # bills its started second, the initial increment: 0.002 + 1 × 0.02/60 = 0.002333
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("UPDATE carriers SET billing_rounding = 'ceil_ms' WHERE name = 'alpha'")
    out = _json(capsys, "rerate", "--deck", str(deck), "--carrier", "alpha", "--from-carrier",
                "alpha", "--since", D3_WINDOW[0], "--until", D3_WINDOW[1], "--json")
    assert (out["legs"], out["refused_answers"], out["billed_seconds"]) == (1, 1, 1)
    assert (out["actual_cost"], out["candidate_cost"]) == ("0.001000", "0.002333")
    assert main(["rerate", "--deck", str(deck), "--carrier", "delta", "--since",
                 D3_WINDOW[0], "--until", D3_WINDOW[1]]) == 0
    assert "unrated (not compared): 1; provisional: 0; refused answers: 1" in \
        capsys.readouterr().out


def test_report_counts_a_refused_answers_cost_but_not_as_an_answer(db, tmp_path, capsys):
    _refused_answer_traffic(db, tmp_path)
    window = ["--since", D3_WINDOW[0], "--until", D3_WINDOW[1], "--json"]
    rows = {r["key"]: r for r in _json(capsys, "report", "--by", "carrier",
                                      "--reference", "charlie", *window)}
    alpha = rows["alpha"]
    # r1 and r3 were never answered (ASR 0), but r1's connect fee is alpha's money
    assert (alpha["calls"], alpha["answered"], alpha["asr"]) == (2, 0, "0.00")
    assert (alpha["cost"], alpha["unrated"], alpha["billed_minutes"]) == ("0.001000", 1, "0.00")
    assert alpha["top_causes"] == [{"cause": "INCOMPATIBLE_DESTINATION", "count": 2}]
    # on charlie's D3 deck the refused answer costs charlie's connect fee, 0.003
    assert (alpha["reference_legs"], alpha["reference_cost"], alpha["savings"]) == \
        (1, "0.003000", "0.002000")
    # r2: 30 s on charlie 60/60 -> 60 s × 0.02/60 + 0.003 = 0.023
    assert (rows["bravo"]["reference_legs"], rows["bravo"]["reference_cost"]) == (1, "0.023000")
    (acme,) = _json(capsys, "report", "--by", "tenant", *window)
    # cR answered (by bravo) and costs both carriers' money; cU failed, unrated
    assert (acme["calls"], acme["answered"], acme["cost"], acme["unrated"]) == \
        (2, 1, "0.007000", 1)
    (day,) = _json(capsys, "report", "--by", "day", *window)
    assert day["cost"] == "0.007000"
