"""Reads of business data and the demo summary, writes of routing decisions and carrier health.

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

        cur.execute("""SELECT c.name AS carrier, g.name, g.position, g.leg_timeout,
                              g.media_timeout, g.enabled, g.profile
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
