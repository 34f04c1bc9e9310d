"""Reads of business data and reports, writes of routing decisions and carrier health.

Plain functions over a psycopg connection: the caller owns the connection and the
transaction. Values always travel as parameters; identifiers, when they vary, are composed
with ``psycopg.sql`` (never string formatting).
"""
from __future__ import annotations

import json
import logging
from datetime import datetime
from decimal import Decimal
from typing import Any, Iterable, Mapping

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from dialplan import retry, validate
from dialplan.model import Campaign, Carrier, Did, Gateway, Tenant, World

log = logging.getLogger(__name__)


def _valid(section: str, row: dict) -> bool:
    """False (and a WARNING) for a stored object the renderer could not use: data written
    before the doors checked it, or by hand. Skipping it keeps one bad carrier or tenant
    from breaking the routing of everyone else (dialplan/validate.py has the rules)."""
    problems = validate.record_problems(section, row)
    if problems:
        key = row.get("number") or row.get("name")
        log.warning("world: ignoring %s %r until it is fixed (switchd provision): %s",
                    section[:-1], key, "; ".join(f"{k}: {why}" for k, why in problems))
    return not problems


# --- world -------------------------------------------------------------------------------
def load_world(conn: psycopg.Connection) -> World:
    """Tenants, carriers (gateways in position order), DIDs and campaigns, as one snapshot.

    Read in one REPEATABLE READ-like pass: a single transaction, so a provision committing
    meanwhile is seen whole or not at all.
    """
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute("""SELECT name, accountcode, domain, default_region, max_call_seconds,
                              max_concurrent, cps_limit, monthly_budget, allowed_countries,
                              allowed_prefixes, blocked_prefixes, max_rate_per_min,
                              allowed_carriers, routing_mode, enabled, retry
                       FROM tenants ORDER BY name""")
        tenants = {}
        for r in cur.fetchall():
            for key in ("allowed_countries", "allowed_prefixes", "blocked_prefixes",
                        "allowed_carriers"):
                r[key] = tuple(r[key] or ())
            if _valid("tenants", r):
                r["retry"] = retry.policy_from(r["retry"])
                tenants[r["name"]] = Tenant(**r)

        cur.execute("""SELECT c.name AS carrier, g.name, g.position, g.leg_timeout, g.enabled,
                              g.profile
                       FROM gateways g JOIN carriers c ON c.id = g.carrier_id
                       ORDER BY c.name, g.position, g.name""")
        gateways: dict[str, list[Gateway]] = {}
        for r in cur.fetchall():
            if _valid("gateways", r):
                gateways.setdefault(r["carrier"], []).append(Gateway(**r))

        cur.execute("""SELECT name, enabled, priority, max_channels, cps_limit,
                              default_initial_increment, default_subsequent_increment,
                              billing_rounding
                       FROM carriers ORDER BY name""")
        carriers = {r["name"]: Carrier(gateways=tuple(gateways.get(r["name"], ())), **r)
                    for r in cur.fetchall() if _valid("carriers", r)}

        cur.execute("""SELECT d.number, t.name AS tenant, d.destination_type, d.destination,
                              d.profile
                       FROM dids d JOIN tenants t ON t.id = d.tenant_id ORDER BY d.number""")
        dids = {r["number"]: Did(**r) for r in cur.fetchall() if _valid("dids", r)}

        cur.execute("""SELECT c.name, t.name AS tenant, c.max_concurrent, c.cps_limit
                       FROM campaigns c JOIN tenants t ON t.id = c.tenant_id ORDER BY c.name""")
        campaigns = {r["name"]: Campaign(**r) for r in cur.fetchall() if _valid("campaigns", r)}
    return World(tenants=tenants, carriers=carriers, dids=dids, campaigns=campaigns)


# --- carrier health ----------------------------------------------------------------------
def load_carrier_health(conn: psycopg.Connection) -> dict[str, tuple[int, int, datetime | None]]:
    """name → (health, consecutive_failures, disabled_at), so a restart keeps the scores."""
    rows = conn.execute(
        "SELECT name, health, consecutive_failures, disabled_at FROM carriers").fetchall()
    return {name: (health, fails, disabled_at) for name, health, fails, disabled_at in rows}


def save_carrier_health(conn: psycopg.Connection, name: str, health: int,
                        consecutive_failures: int, disabled_at: datetime | None) -> bool:
    """Persist one carrier's score; False when no such carrier (deleted meanwhile)."""
    cur = conn.execute(
        """UPDATE carriers SET health = %s, consecutive_failures = %s, disabled_at = %s,
                              updated_at = now()
           WHERE name = %s""",
        (health, consecutive_failures, disabled_at, name))
    return cur.rowcount == 1


# --- routing decisions -------------------------------------------------------------------
def _json_default(value: Any) -> Any:
    # Rates inside candidates are Decimal: keep them exact as strings, never floats.
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def jsonb(value: Any) -> Jsonb:
    return Jsonb(value if value is not None else [],
                 dumps=lambda v: json.dumps(v, default=_json_default))


DECISION_COLUMNS = ("id", "created_at", "call_uuid", "tenant", "direction", "destination",
                    "result", "reason", "sip_code", "candidates", "chosen", "elapsed_us")

_INSERT_DECISION = """
INSERT INTO routing_decisions (id, created_at, call_uuid, tenant, direction, destination,
                               result, reason, sip_code, candidates, chosen, elapsed_us)
VALUES (%(id)s, COALESCE(%(created_at)s, now()), %(call_uuid)s, %(tenant)s, %(direction)s,
        %(destination)s, %(result)s, %(reason)s, %(sip_code)s, %(candidates)s, %(chosen)s,
        %(elapsed_us)s)
ON CONFLICT (id) DO NOTHING"""


def insert_routing_decisions(conn: psycopg.Connection, rows: Iterable[Mapping[str, Any]]) -> None:
    """Batch insert; a decision already stored (spool replay) is left as it is."""
    params = []
    for row in rows:
        unknown = set(row) - set(DECISION_COLUMNS)
        if unknown:
            raise ValueError(f"routing decision: unknown keys {sorted(unknown)}")
        p = {col: row.get(col) for col in DECISION_COLUMNS}
        p["candidates"] = jsonb(p["candidates"])
        p["chosen"] = jsonb(p["chosen"])
        p["elapsed_us"] = p["elapsed_us"] or 0
        params.append(p)
    if params:
        with conn.cursor() as cur:
            cur.executemany(_INSERT_DECISION, params)


# --- spend and summaries -----------------------------------------------------------------
def month_spend(conn: psycopg.Connection, tenant: str, month_start: datetime) -> Decimal:
    """Cost of the tenant's calls that ended in the month starting at ``month_start``."""
    row = conn.execute(
        """SELECT COALESCE(sum(cost), 0) FROM calls
           WHERE tenant = %s AND ended_at >= %s AND ended_at < %s::timestamptz + interval '1 month'""",
        (tenant, month_start, month_start)).fetchone()
    return Decimal(row[0])


def summary(conn: psycopg.Connection, since: datetime | None = None) -> dict[str, Any]:
    """The ``switchd demo --json`` object (DESIGN.md §10), read back from PostgreSQL.

    ``by_carrier`` groups calls by the carrier that carried them last (the answering one
    for answered calls); a failover is an answered call whose carrier is not its
    first-choice carrier. With ``since``, only calls started (or, lacking that, recorded)
    at or after it count; ``cdrs_stored`` always counts every row.
    """
    where = sql.SQL("")
    params: tuple = ()
    if since is not None:
        where = sql.SQL("WHERE COALESCE(started_at, recorded_at) >= %s")
        params = (since,)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("""
            SELECT count(*), count(answered_at), COALESCE(sum(cost), 0),
                   count(*) FILTER (WHERE answered_at IS NOT NULL
                                      AND first_choice_carrier IS NOT NULL
                                      AND carrier IS DISTINCT FROM first_choice_carrier)
            FROM calls {}""").format(where), params)
        calls, answered, total_cost, failovers = cur.fetchone()
        cur.execute(sql.SQL("""
            SELECT carrier, count(*), count(answered_at), COALESCE(sum(billed_seconds), 0),
                   COALESCE(sum(cost), 0)
            FROM calls {} GROUP BY carrier HAVING carrier IS NOT NULL
            ORDER BY carrier""").format(where), params)
        by_carrier = {name: {"calls": n, "answered": a, "billed_seconds": int(b),
                             "cost": str(c)}
                      for name, n, a, b, c in cur.fetchall()}
        cdrs_stored = cur.execute("SELECT count(*) FROM calls").fetchone()[0]
    return {"calls": calls, "answered": answered, "failed": calls - answered,
            "total_cost": str(total_cost), "by_carrier": by_carrier,
            "failovers": failovers, "cdrs_stored": cdrs_stored}


# --- reports -----------------------------------------------------------------------------
# Tenant and day reports count calls (what a customer is billed for); the carrier report
# counts legs, because ASR/ACD/PDD judge a carrier by every attempt it was given.
_CALL_REPORT = """
SELECT {key} AS key, count(*) AS calls, count(c.answered_at) AS answered,
       COALESCE(sum(c.billed_seconds), 0) AS billed_seconds, COALESCE(sum(c.cost), 0) AS cost,
       avg(EXTRACT(EPOCH FROM c.ended_at - c.answered_at)) FILTER (WHERE c.answered_at IS NOT NULL)
           AS acd_seconds,
       avg(c.pdd_ms) AS pdd_ms
FROM calls c
WHERE c.ended_at IS NOT NULL {range}
GROUP BY 1 ORDER BY 1"""

# PDD: from the leg's start to its first sign of life from the far end (ringing, early
# media, or the answer when neither came first): the leg's own pdd_ms (switchd/accounting/billing.py,
# from CHANNEL_PROGRESS / _MEDIA), else from the stored events (legs written before
# migration 012).
_LEG_REPORT = """
SELECT l.carrier AS key, count(*) AS calls, count(l.answered_at) AS answered,
       COALESCE(sum(l.billed_seconds), 0) AS billed_seconds, COALESCE(sum(l.cost), 0) AS cost,
       avg(EXTRACT(EPOCH FROM l.ended_at - l.answered_at)) FILTER (WHERE l.answered_at IS NOT NULL)
           AS acd_seconds,
       avg(COALESCE(l.pdd_ms::numeric,
                    EXTRACT(EPOCH FROM p.first_at - l.started_at) * 1000)) AS pdd_ms
FROM call_legs l
LEFT JOIN LATERAL (
    SELECT min(e.at) AS first_at FROM call_events e
    WHERE e.leg_uuid = l.leg_uuid
      AND e.name IN ('CHANNEL_PROGRESS', 'CHANNEL_PROGRESS_MEDIA', 'CHANNEL_ANSWER')
) p ON true
WHERE l.carrier IS NOT NULL AND l.ended_at IS NOT NULL {range}
GROUP BY 1 ORDER BY 1"""

_REPORT_KEYS = {
    "tenant": sql.SQL("COALESCE(c.tenant, '')"),
    "day": sql.SQL("to_char(c.ended_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"),
}


def report(conn: psycopg.Connection, group_by: str = "tenant", since: datetime | None = None,
           until: datetime | None = None) -> list[dict[str, Any]]:
    """Rows for ``switchd report``: one per tenant / carrier / UTC day of finished calls.

    Each row: key, calls, answered, asr (percent, 2 places), acd_seconds, billed_minutes,
    cost (Decimal), pdd_ms (carrier: per leg; tenant/day: of the leg that carried each
    call; None when no leg showed progress).
    Range is on ended_at: ``since`` inclusive, ``until`` exclusive.
    """
    if group_by not in ("tenant", "carrier", "day"):
        raise ValueError(f"report: group_by must be tenant, carrier or day, not {group_by!r}")
    alias = sql.Identifier("l" if group_by == "carrier" else "c")
    conditions, params = [], []
    if since is not None:
        conditions.append(sql.SQL("AND {}.ended_at >= %s").format(alias))
        params.append(since)
    if until is not None:
        conditions.append(sql.SQL("AND {}.ended_at < %s").format(alias))
        params.append(until)
    rng = sql.SQL(" ").join(conditions)
    if group_by == "carrier":
        query = sql.SQL(_LEG_REPORT).format(range=rng)
    else:
        query = sql.SQL(_CALL_REPORT).format(key=_REPORT_KEYS[group_by], range=rng)
    rows = []
    with conn.cursor(row_factory=dict_row) as cur:
        for r in cur.execute(query, params).fetchall():
            calls, answered = r["calls"], r["answered"]
            asr = (Decimal(answered * 100) / calls).quantize(Decimal("0.01")) if calls else None
            acd = r["acd_seconds"]
            pdd = r["pdd_ms"]
            rows.append({
                "key": r["key"], "calls": calls, "answered": answered, "asr": asr,
                "acd_seconds": Decimal(acd).quantize(Decimal("0.1")) if acd is not None else None,
                "billed_minutes": (Decimal(int(r["billed_seconds"])) / 60).quantize(Decimal("0.01")),
                "cost": Decimal(r["cost"]),
                "pdd_ms": int(round(pdd)) if pdd is not None else None,
            })
    return rows
