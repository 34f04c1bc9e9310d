"""`switchd report` and `switchd rerate`: figures from the CDRs in PostgreSQL
(docs/reports.md defines every column).

The tenant and day reports count calls (what a customer is billed for); the carrier report
counts legs, because a carrier is judged by every attempt it was given. PostgreSQL sums per
(key, cause, SIP status, disposition, answered); the ratios are dialplan.quality's.

Pricing past legs on another deck (the reference carrier's, or a candidate CSV) rates each
answered leg again with dialplan.rating.rate(), on the leg's own billsec/billmsec, at its
answer time: the same function that billed it. So is a refused answer (a carrier's 200 OK
FreeSWITCH hung up with a BYE before marking the leg answered, rating.answered_by_carrier_only):
it is stored without an answer time but with a cost, its connect fee, and is priced by the
same rule at its end time. Nothing here writes to the database.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Iterable, Iterator

import psycopg
from psycopg import sql

from dialplan import numbers, quality, rating
from dialplan.ratedeck import RateDeck, RateDeckBuilder
from switchd.routing.deck_loader import load_deck_id

GROUPINGS = ("tenant", "carrier", "day")

_LEGS = """
SELECT l.carrier AS key, l.hangup_cause, l.sip_status, l.disposition,
       l.answered_at IS NOT NULL AS answered, count(*) AS n,
       count(*) FILTER (WHERE l.unrated) AS unrated,
       count(*) FILTER (WHERE l.provisional) AS provisional,
       COALESCE(sum(l.billed_seconds), 0) AS billed_seconds,
       COALESCE(sum(l.cost), 0) AS cost,
       COALESCE(sum(COALESCE(l.billsec::numeric, EXTRACT(EPOCH FROM l.ended_at - l.answered_at)))
                FILTER (WHERE l.answered_at IS NOT NULL), 0) AS talk_seconds,
       COALESCE(sum(l.pdd_ms), 0) AS pdd_total, count(l.pdd_ms) AS pdd_legs
FROM call_legs l {join}
WHERE l.carrier IS NOT NULL AND l.ended_at >= %(since)s AND l.ended_at < %(until)s {tenant}
GROUP BY 1, 2, 3, 4, 5"""

_CALLS = """
SELECT {key} AS key, c.hangup_cause, NULL::integer AS sip_status, c.disposition,
       c.answered_at IS NOT NULL AS answered, count(*) AS n,
       count(*) FILTER (WHERE c.unrated) AS unrated,
       count(*) FILTER (WHERE c.provisional) AS provisional,
       COALESCE(sum(c.billed_seconds), 0) AS billed_seconds,
       COALESCE(sum(c.cost), 0) AS cost,
       COALESCE(sum(EXTRACT(EPOCH FROM c.ended_at - c.answered_at))
                FILTER (WHERE c.answered_at IS NOT NULL), 0) AS talk_seconds,
       COALESCE(sum(c.pdd_ms), 0) AS pdd_total, count(c.pdd_ms) AS pdd_legs
FROM calls c
WHERE c.ended_at >= %(since)s AND c.ended_at < %(until)s {tenant}
GROUP BY 1, 2, 3, 4, 5"""

_CALL_KEYS = {
    "tenant": "COALESCE(c.tenant, '')",
    "day": "to_char(c.ended_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
}

# Carrier legs that cost something, with what pricing them needs: the answered ones, and
# the refused answers, which alone of the unanswered carry a cost (their connect fee) or,
# without a tariff, the unrated flag. A refused answer that cost nothing (no connect fee,
# billsec rounding) cannot be told from an unanswered leg here and is left out.
# The number is the routed E.164 (the routing decision's), else the call's destination.
_PRICED_LEGS = """
SELECT {key} AS key, l.carrier, l.answered_at, l.ended_at, l.billsec, l.billmsec, l.cost,
       l.provisional, c.tenant, COALESCE(rd.destination, c.destination) AS number
FROM call_legs l
JOIN calls c ON c.call_uuid = l.call_uuid
LEFT JOIN routing_decisions rd ON rd.id = c.route_id
WHERE l.carrier IS NOT NULL AND (l.answered_at IS NOT NULL OR l.cost > 0 OR l.unrated)
  AND {anchor}.ended_at >= %(since)s AND {anchor}.ended_at < %(until)s {tenant} {carrier}
ORDER BY COALESCE(l.answered_at, l.ended_at)"""

_LEG_KEYS = {
    "carrier": "l.carrier",
    "tenant": "COALESCE(c.tenant, '')",
    "day": "to_char(c.ended_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
}


class ReportError(ValueError):
    """A report cannot be made as asked (e.g. an unknown reference carrier)."""


@dataclass
class _Tally:
    attempts: int = 0
    answered: int = 0
    unrated: int = 0
    provisional: int = 0
    billed_seconds: int = 0
    cost: Decimal = Decimal(0)
    talk_seconds: Decimal = Decimal(0)
    pdd_total: int = 0
    pdd_legs: int = 0
    dispositions: dict = field(default_factory=dict)
    causes: dict = field(default_factory=dict)

    def add(self, r: dict) -> None:
        n = r["n"]
        self.attempts += n
        self.unrated += r["unrated"]
        self.provisional += r["provisional"]
        self.billed_seconds += int(r["billed_seconds"])
        self.cost += r["cost"]
        self.talk_seconds += Decimal(r["talk_seconds"])
        self.pdd_total += int(r["pdd_total"])
        self.pdd_legs += r["pdd_legs"]
        disp = quality.leg_disposition(r["disposition"], r["hangup_cause"], r["sip_status"],
                                       r["answered"])
        self.dispositions[disp] = self.dispositions.get(disp, 0) + n
        if r["answered"]:
            self.answered += n
        else:
            cause = r["hangup_cause"]
            self.causes[cause] = self.causes.get(cause, 0) + n

    def row(self, key: str, top: int) -> dict:
        return {
            "key": key, "calls": self.attempts, "answered": self.answered,
            "asr": quality.asr(self.answered, self.attempts),
            "ner": quality.ner(self.dispositions),
            "acd_seconds": quality.acd(self.talk_seconds, self.answered),
            "pdd_ms": quality.mean_pdd_ms(self.pdd_total, self.pdd_legs),
            "billed_minutes": (Decimal(self.billed_seconds) / 60).quantize(Decimal("0.01")),
            "talk_minutes": (self.talk_seconds / 60).quantize(Decimal("0.01")),
            "cost": self.cost,
            "unrated": self.unrated, "provisional": self.provisional,
            "failures": self.attempts - self.answered,
            "top_causes": [{"cause": c, "count": n}
                           for c, n in quality.top_causes(self.causes, top)],
            "dispositions": dict(sorted(self.dispositions.items())),
        }


def report(conn: psycopg.Connection, by: str, since: datetime, until: datetime, *,
           tenant: str | None = None, reference: str | None = None, top: int = 3,
           precision: int = 6) -> list[dict]:
    """One row per tenant / carrier / UTC day of what ended in [since, until), ordered by
    key. With `reference`, each row also says what its answered legs would have cost on
    that carrier's deck (savings = that − what they cost)."""
    if by not in GROUPINGS:
        raise ReportError(f"report: --by must be one of {', '.join(GROUPINGS)}, not {by!r}")
    params = {"since": since, "until": until, "tenant": tenant}
    if by == "carrier":
        query = sql.SQL(_LEGS).format(
            join=sql.SQL("JOIN calls c ON c.call_uuid = l.call_uuid" if tenant else ""),
            tenant=sql.SQL("AND c.tenant = %(tenant)s" if tenant else ""))
    else:
        query = sql.SQL(_CALLS).format(
            key=sql.SQL(_CALL_KEYS[by]),
            tenant=sql.SQL("AND c.tenant = %(tenant)s" if tenant else ""))
    tallies: dict[str, _Tally] = {}
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        for r in cur.execute(query, params):
            tallies.setdefault(r["key"], _Tally()).add(r)
    rows = [tallies[k].row(k, top) for k in sorted(tallies)]
    if reference is not None:
        ref = CarrierDecks(conn, reference)
        compared = price_legs(conn, ref, by=by, since=since, until=until, tenant=tenant,
                              precision=precision)
        for row in rows:
            p = compared.get(row["key"], Priced())
            row.update({"reference": reference, "reference_legs": p.legs,
                        "reference_cost": p.candidate_cost,
                        "savings": p.candidate_cost - p.actual_cost,
                        "reference_uncovered": p.not_covered})
    return rows


# --- pricing past legs on another deck --------------------------------------------------------
@dataclass
class Priced:
    """Answered legs (and refused answers) priced on a deck: `legs` compared (covered,
    actual cost known), their `actual_cost` and `candidate_cost`, `refused_answers` of
    them; `not_covered` legs the deck has no rate for (or whose number is unknown), with
    their `not_covered_cost`; `unrated` legs whose actual cost is unknown (left out of the
    comparison)."""
    legs: int = 0
    billed_seconds: int = 0
    actual_cost: Decimal = Decimal(0)
    candidate_cost: Decimal = Decimal(0)
    not_covered: int = 0
    not_covered_cost: Decimal = Decimal(0)
    unrated: int = 0
    provisional: int = 0
    refused_answers: int = 0


class CarrierDecks:
    """A stored carrier's decks over time: the deck in force at an instant is the one with
    the greatest effective_from <= it (docs/rates.md). Decks load on first use."""

    def __init__(self, conn: psycopg.Connection, carrier: str):
        row = conn.execute("SELECT id, billing_rounding FROM carriers WHERE name = %s",
                           (carrier,)).fetchone()
        if row is None:
            known = [r[0] for r in conn.execute("SELECT name FROM carriers ORDER BY name")]
            raise ReportError(f"unknown carrier {carrier!r} (known: {', '.join(known) or 'none'})")
        self.conn, self.carrier, self.rounding = conn, carrier, row[1]
        # '-infinity' (a base deck) does not fit a datetime: None sorts first.
        self.starts = conn.execute(
            "SELECT id, NULLIF(effective_from, '-infinity') FROM rate_decks "
            "WHERE carrier_id = %s AND effective_from < 'infinity' "
            "ORDER BY effective_from", (row[0],)).fetchall()
        self._loaded: dict[int, RateDeck] = {}

    def deck_at(self, at: datetime) -> RateDeck | None:
        chosen = None
        for deck_id, start in self.starts:
            if start is None or start <= at:
                chosen = deck_id
        if chosen is None:
            return None
        if chosen not in self._loaded:
            self._loaded[chosen] = load_deck_id(self.conn, chosen, self.carrier,
                                                on_progress=None, with_descriptions=True)
        return self._loaded[chosen]


class CandidateDeck:
    """A deck read from a CSV (never stored), in force at every instant its rows are."""

    def __init__(self, rows: Iterable, carrier: str, rounding: str = rating.BILLSEC):
        builder = RateDeckBuilder(carrier=carrier)
        for r in rows:
            builder.add(r.prefix, r.rate_per_min, r.connect_fee, r.initial_increment,
                        r.subsequent_increment, r.effective_from, r.effective_to,
                        r.description)
        self.deck, self.carrier, self.rounding = builder.build(), carrier, rounding

    def deck_at(self, at: datetime) -> RateDeck:
        return self.deck


def leg_digits(number: str | None, region: str | None) -> str | None:
    """The E.164 digits a deck is matched against: a '+' number as it is, anything else
    normalised in the tenant's region (lenient: possible numbers); None when impossible."""
    if not number:
        return None
    if number[0] == "+" and number[1:].isascii() and number[1:].isdigit():
        return number[1:]
    try:
        return numbers.normalise(number, region or "US", strict=False).digits
    except (numbers.NumberError, ValueError):
        return None


def _priced_rows(conn, by: str, since, until, tenant, from_carrier) -> Iterator[dict]:
    anchor = "l" if by == "carrier" else "c"
    query = sql.SQL(_PRICED_LEGS).format(
        key=sql.SQL(_LEG_KEYS[by]), anchor=sql.Identifier(anchor),
        tenant=sql.SQL("AND c.tenant = %(tenant)s" if tenant else ""),
        carrier=sql.SQL("AND l.carrier = %(carrier)s" if from_carrier else ""))
    params = {"since": since, "until": until, "tenant": tenant, "carrier": from_carrier}
    with conn.transaction():
        with conn.cursor(name="priced_legs", row_factory=psycopg.rows.dict_row) as cur:
            cur.itersize = 5000
            cur.execute(query, params)
            yield from cur


def _regions(conn) -> dict[str, str]:
    return dict(conn.execute("SELECT name, default_region FROM tenants").fetchall())


def price_legs(conn, decks, *, by: str, since, until, tenant=None, from_carrier=None,
               precision: int = 6) -> dict[str, Priced]:
    """Answered legs (and refused answers) that ended in [since, until), priced on `decks`
    (CarrierDecks or CandidateDeck) at their answer time (a refused answer's end), summed
    per report key."""
    regions = _regions(conn)
    out: dict[str, Priced] = {}
    for leg in _priced_rows(conn, by, since, until, tenant, from_carrier):
        p = out.setdefault(leg["key"], Priced())
        _price_one(p, leg, decks, regions, precision)
    return out


def _price_one(p: Priced, leg: dict, decks, regions, precision: int, on_rate=None) -> None:
    if leg["cost"] is None:
        p.unrated += 1
        return
    # Not answered yet costing something: a refused answer, an answer of a moment priced
    # at the leg's end (rating.rate(refused_answer=True), as billing priced it).
    answered = leg["answered_at"] is not None
    at = leg["answered_at"] if answered else leg["ended_at"]
    digits = leg_digits(leg["number"], regions.get(leg["tenant"]))
    deck = decks.deck_at(at) if at is not None else None
    row = deck.lookup(digits, at) if deck is not None and digits else None
    if row is None:
        p.not_covered += 1
        p.not_covered_cost += leg["cost"]
        return
    tariff = rating.Tariff(row.rate_per_min, row.connect_fee, row.initial_increment,
                           row.subsequent_increment)
    rated = rating.rate(answered=answered, billsec=leg["billsec"], billmsec=leg["billmsec"],
                        tariffs=(tariff,), answered_at=at, rounding=decks.rounding,
                        places=precision, refused_answer=not answered)
    if rated.cost is None:          # no talk figure at all: cannot be compared
        p.unrated += 1
        return
    p.legs += 1
    p.refused_answers += not answered
    p.provisional += bool(leg["provisional"])
    p.billed_seconds += rated.billed_seconds
    p.actual_cost += leg["cost"]
    p.candidate_cost += rated.cost
    if on_rate is not None:
        on_rate(row, leg, rated)


def rerate(conn: psycopg.Connection, candidate: CandidateDeck, since: datetime,
           until: datetime, *, tenant: str | None = None, from_carrier: str | None = None,
           precision: int = 6) -> dict:
    """What the answered legs (and refused answers) that ended in [since, until) would
    have cost on `candidate`, per matched prefix and in total, against what they cost.
    Reads only."""
    regions = _regions(conn)
    total = Priced()
    by_prefix: dict[str, dict] = {}

    def on_rate(row, leg, rated) -> None:
        line = by_prefix.setdefault(row.prefix, {
            "prefix": row.prefix, "description": row.description, "legs": 0,
            "billed_seconds": 0, "actual_cost": Decimal(0), "candidate_cost": Decimal(0)})
        line["legs"] += 1
        line["billed_seconds"] += rated.billed_seconds
        line["actual_cost"] += leg["cost"]
        line["candidate_cost"] += rated.cost

    for leg in _priced_rows(conn, "carrier", since, until, tenant, from_carrier):
        _price_one(total, leg, candidate, regions, precision, on_rate)
    prefixes = []
    for key in sorted(by_prefix):
        line = by_prefix[key]
        line["difference"] = line["candidate_cost"] - line["actual_cost"]
        prefixes.append(line)
    return {
        "carrier": candidate.carrier, "since": since.isoformat(), "until": until.isoformat(),
        "legs": total.legs, "billed_seconds": total.billed_seconds,
        "actual_cost": total.actual_cost, "candidate_cost": total.candidate_cost,
        "difference": total.candidate_cost - total.actual_cost,
        "not_covered": {"legs": total.not_covered, "actual_cost": total.not_covered_cost},
        "unrated": total.unrated, "provisional": total.provisional,
        "refused_answers": total.refused_answers, "by_prefix": prefixes,
    }
