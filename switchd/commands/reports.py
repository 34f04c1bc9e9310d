"""`switchd report` and `switchd rerate` (docs/reports.md): read the CDRs, print a table
for people or JSON for scripts. Neither writes to the database."""
from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone

from switchd.commands.admin import _db_url, _parse_instant, _print_table
from switchd.config import Config
from switchd.errors import InputError, UsageError


def _window(args, default_days: int = 30) -> tuple[datetime, datetime]:
    now = datetime.now(timezone.utc)
    until = _parse_instant(args.until, "--until") or now
    # 30 days back from now, or from --until when that is earlier: a later --until widens
    # the window, it never moves its start past calls of the last 30 days.
    since = _parse_instant(args.since, "--since") or min(now, until) - timedelta(days=default_days)
    if since >= until:
        raise UsageError(f"--since {since.isoformat()} is not before --until {until.isoformat()}")
    return since, until


def _connect(config: Config):
    import psycopg
    conn = psycopg.connect(_db_url(config))
    conn.read_only = True           # a report never changes the database
    return conn


def report(config: Config, args) -> int:
    from switchd.accounting import reports
    since, until = _window(args)
    if args.top < 0:
        raise UsageError(f"--top {args.top}: must be 0 or more")
    with _connect(config) as conn:
        try:
            rows = reports.report(conn, args.by, since, until, tenant=args.tenant,
                                  reference=args.reference, top=args.top,
                                  precision=config["rating.precision"])
        except reports.ReportError as exc:
            raise InputError(f"--reference: {exc}") from None
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
        return 0
    if not rows:
        print("no calls in that period")
        return 0
    _print_table(_report_table(rows, args.by, args.reference))
    return 0


def _dash(value) -> str:
    return "-" if value is None else str(value)


def _report_table(rows: list[dict], by: str, reference: str | None) -> list[tuple]:
    header = [by.upper(), "LEGS" if by == "carrier" else "CALLS", "ANSWERED", "ASR%", "NER%",
              "ACD_S", "PDD_MS", "MINUTES", "COST", "UNRATED", "PROVISIONAL", "TOP_CAUSES"]
    if reference:
        header += [f"ON_{reference.upper()}", "SAVINGS", "NOT_COVERED"]
    table = [tuple(header)]
    for r in rows:
        causes = ", ".join(f"{c['cause']} {c['count']}" for c in r["top_causes"]) or "-"
        line = [r["key"] or "-", r["calls"], r["answered"], _dash(r["asr"]), _dash(r["ner"]),
                _dash(r["acd_seconds"]), _dash(r["pdd_ms"]), r["billed_minutes"], r["cost"],
                r["unrated"], r["provisional"], causes]
        if reference:
            line += [r["reference_cost"], r["savings"], r["reference_uncovered"]]
        table.append(tuple(str(v) for v in line))
    return table


def rerate(config: Config, args) -> int:
    from dialplan.rating import BILLSEC
    from switchd.accounting import reports
    from switchd.admin.rates_import import read_rates
    from switchd.commands.inputs import check_csv_header, not_utf8
    since, until = _window(args)
    try:
        with open(args.deck, "rb"):          # before the database is started or reached
            pass
    except OSError as exc:
        raise InputError(f"{args.deck}: cannot read: {exc.strerror or exc}") from None
    check_csv_header(args.deck)
    with _connect(config) as conn:
        found = conn.execute(
            "SELECT default_initial_increment, default_subsequent_increment, billing_rounding "
            "FROM carriers WHERE name = %s", (args.carrier,)).fetchone()
        if args.from_carrier and conn.execute("SELECT 1 FROM carriers WHERE name = %s",
                                              (args.from_carrier,)).fetchone() is None:
            raise InputError(f"--from-carrier: unknown carrier {args.from_carrier!r}")
        initial, subsequent, rounding = found if found else (60, 60, BILLSEC)
        try:
            rows = read_rates(args.deck, initial, subsequent)
        except UnicodeDecodeError:
            raise not_utf8(args.deck) from None
        candidate = reports.CandidateDeck(rows, args.carrier, rounding)
        result = reports.rerate(conn, candidate, since, until, tenant=args.tenant,
                                from_carrier=args.from_carrier,
                                precision=config["rating.precision"])
    result["deck"] = str(args.deck)
    result["carrier_provisioned"] = found is not None
    if args.json:
        print(json.dumps(result, default=str, indent=2))
        return 0
    if found is None:
        print(f"note: carrier {args.carrier!r} is not provisioned: increments default to "
              f"60/60 and billed seconds follow billsec", file=sys.stderr)
    table = [("PREFIX", "DESCRIPTION", "LEGS", "BILLED_S", "ACTUAL", "CANDIDATE", "DIFFERENCE")]
    for p in result["by_prefix"]:
        table.append((p["prefix"], p["description"] or "-", str(p["legs"]),
                      str(p["billed_seconds"]), str(p["actual_cost"]), str(p["candidate_cost"]),
                      str(p["difference"])))
    table.append(("TOTAL", "", str(result["legs"]), str(result["billed_seconds"]),
                  str(result["actual_cost"]), str(result["candidate_cost"]),
                  str(result["difference"])))
    _print_table(table)
    missed = result["not_covered"]
    print(f"not covered by the deck: {missed['legs']} leg(s) that cost {missed['actual_cost']}; "
          f"unrated (not compared): {result['unrated']}; provisional: {result['provisional']}; "
          f"refused answers: {result['refused_answers']}")
    return 0
