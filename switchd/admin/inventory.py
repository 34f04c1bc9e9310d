"""What is provisioned, for operators and scripts: tenants, carriers, DIDs, rate decks
(list, export as an importable CSV, delete). Plain functions over a psycopg connection;
the CLI (switchd/commands/inventory.py) formats them.
"""
from __future__ import annotations

import csv
from datetime import datetime, timezone
from typing import IO

import psycopg
from psycopg.rows import dict_row

from switchd.routing.deck_loader import deck_info
from switchd.admin.rates_import import NOTIFY_CHANNEL

EXPORT_COLUMNS = ("prefix", "rate_per_min", "connect_fee", "initial_increment",
                  "subsequent_increment", "effective_from", "effective_to", "description")


class InventoryError(Exception):
    """A request that names something that is not there; the message is for the operator."""


def _rows(conn: psycopg.Connection, query: str, params=()) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchall()


def tenants(conn: psycopg.Connection) -> list[dict]:
    return _rows(conn, """SELECT name, accountcode, domain, default_region, max_call_seconds,
                                 max_concurrent, cps_limit, monthly_budget, allowed_countries,
                                 allowed_prefixes, blocked_prefixes, max_rate_per_min,
                                 allowed_carriers, routing_mode, enabled
                          FROM tenants ORDER BY name""")


def carriers(conn: psycopg.Connection) -> list[dict]:
    rows = _rows(conn, """SELECT c.name, c.enabled, c.priority, c.max_channels, c.cps_limit,
                                 c.default_initial_increment, c.default_subsequent_increment,
                                 c.health,
                                 (SELECT count(*) FROM rate_decks d WHERE d.carrier_id = c.id)
                                     AS decks
                          FROM carriers c ORDER BY c.name""")
    gateways = _rows(conn, """SELECT c.name AS carrier, g.name, g.profile, g.position,
                                     g.leg_timeout, g.media_timeout, g.enabled
                              FROM gateways g JOIN carriers c ON c.id = g.carrier_id
                              ORDER BY g.position, g.name""")
    for row in rows:
        row["gateways"] = [{k: v for k, v in g.items() if k != "carrier"}
                           for g in gateways if g["carrier"] == row["name"]]
    return rows


def dids(conn: psycopg.Connection) -> list[dict]:
    return _rows(conn, """SELECT d.number, t.name AS tenant, d.destination_type, d.destination
                          FROM dids d JOIN tenants t ON t.id = d.tenant_id ORDER BY d.number""")


def _carrier_id(conn: psycopg.Connection, carrier: str) -> int:
    row = conn.execute("SELECT id FROM carriers WHERE name = %s", (carrier,)).fetchone()
    if row is None:
        known = [r[0] for r in conn.execute("SELECT name FROM carriers ORDER BY name")]
        raise InventoryError(f"unknown carrier {carrier!r} (known: {', '.join(known) or 'none'})")
    return row[0]


def decks(conn: psycopg.Connection, carrier: str, at: datetime | None = None) -> list[dict]:
    """The carrier's decks, oldest start first; `state` is live (the one routing uses at
    `at`, default now), future, or superseded. effective_from None = the base deck."""
    carrier_id = _carrier_id(conn, carrier)
    live = deck_info(conn, carrier, at or datetime.now(timezone.utc)).deck_id
    rows = _rows(conn, """SELECT id, NULLIF(effective_from, '-infinity') AS effective_from,
                                 imported_at, row_count, source
                          FROM rate_decks WHERE carrier_id = %s
                          ORDER BY rate_decks.effective_from""",
                 (carrier_id,))
    seen_live = False
    for row in rows:
        if row["id"] == live:
            row["state"], seen_live = "live", True
        else:
            row["state"] = "future" if seen_live or live is None else "superseded"
    return rows


def export_deck(conn: psycopg.Connection, carrier: str, out: IO[str], *,
                at: datetime | None = None, deck_id: int | None = None) -> int:
    """Write the deck live at `at` (or deck `deck_id`) as a CSV `switchd rates import`
    reads back to the same rows; returns the number of rows written."""
    carrier_id = _carrier_id(conn, carrier)
    if deck_id is None:
        deck_id = deck_info(conn, carrier, at or datetime.now(timezone.utc)).deck_id
        if deck_id is None:
            raise InventoryError(f"carrier {carrier!r} has no deck live at "
                                 f"{(at or datetime.now(timezone.utc)).isoformat()}")
    elif conn.execute("SELECT 1 FROM rate_decks WHERE id = %s AND carrier_id = %s",
                      (deck_id, carrier_id)).fetchone() is None:
        raise InventoryError(f"carrier {carrier!r} has no deck {deck_id}")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    count = 0
    with conn.transaction(), conn.cursor(name="switchd_export") as cur:   # streamed
        cur.execute("""SELECT prefix, rate_per_min, connect_fee, initial_increment,
                              subsequent_increment, effective_from, effective_to, description
                       FROM rates WHERE deck_id = %s
                       ORDER BY prefix, effective_from NULLS FIRST""", (deck_id,))
        for row in cur:
            writer.writerow([row[0], format(row[1], "f"), format(row[2], "f"), row[3], row[4],
                             row[5].isoformat() if row[5] else "",
                             row[6].isoformat() if row[6] else "", row[7] or ""])
            count += 1
    return count


def delete_deck(conn: psycopg.Connection, carrier: str, deck_id: int) -> dict:
    """Delete one deck of `carrier`; running daemons reload the carrier (NOTIFY at commit).
    Returns the deleted deck's row."""
    with conn.transaction():
        carrier_id = _carrier_id(conn, carrier)
        rows = _rows(conn, """DELETE FROM rate_decks WHERE id = %s AND carrier_id = %s
                              RETURNING id, NULLIF(effective_from, '-infinity') AS effective_from,
                                        row_count""", (deck_id, carrier_id))
        if not rows:
            raise InventoryError(f"carrier {carrier!r} has no deck {deck_id} "
                                 f"(see switchd rates list --carrier {carrier})")
        conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, carrier))
    return rows[0]
