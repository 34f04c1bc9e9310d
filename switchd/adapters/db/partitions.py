"""Monthly partitions of calls, call_legs and call_events: created ahead, listed, pruned.

Partitions are named ``<table>_YYYY_MM`` (migration 020, ``switchd_ensure_month``).
``calls`` and ``call_legs`` are partitioned by ``filed_month``, which is never earlier than
the month the call started (the first record that names a call carries its start or a
later time), so a partition whose month ended before the cutoff holds only calls that
started before it. ``call_events`` are partitioned by their time ``at``.

Pruning ``--older-than`` a cutoff: whole partitions whose month ended at or before the
cutoff are detached (``DETACH PARTITION … CONCURRENTLY``: writers and readers carry on)
and dropped; in the partitions that straddle it, rows older than the cutoff are deleted
in chunks. A row's age: a call's start (else its end, else when it was recorded), a leg's
start (else its end), an event's time, a routing decision's creation.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Callable, Iterable

import psycopg
from psycopg import sql

from switchd.adapters.db.cdr_batch import add_months, month_of

PARTITIONED = ("calls", "call_legs", "call_events")
_NAME = re.compile(r"^(calls|call_legs|call_events)_(\d{4})_(\d{2})$")

# What `switchd prune --only` names, and the tables each covers.
GROUPS = {"cdrs": ("calls", "call_legs"), "events": ("call_events",),
          "decisions": ("routing_decisions",)}

# Per table: the row's age, the columns that identify a row (for chunked deletes).
_AGE = {"calls": ("COALESCE(started_at, ended_at, recorded_at)", ("call_uuid", "filed_month")),
        "call_legs": ("COALESCE(started_at, ended_at)", ("leg_uuid", "filed_month")),
        "call_events": ("at", ("core_uuid", "event_seq", "at")),
        "routing_decisions": ("created_at", ("id",))}


def ensure_months(conn: psycopg.Connection, months: Iterable[date]) -> None:
    """Create the partitions of calls, call_legs and call_events for these months."""
    conn.execute("SELECT switchd_ensure_month(m) FROM unnest(%s::date[]) AS m",
                  (sorted(set(months)),))


def ensure_ahead(conn: psycopg.Connection, now: datetime | None = None) -> list[date]:
    """This month's and next month's partitions (the daemon, at start and every 6 hours)."""
    this = month_of(now or datetime.now(timezone.utc))
    months = [this, add_months(this, 1)]
    ensure_months(conn, months)
    return months


@dataclass(frozen=True)
class Partition:
    table: str
    name: str
    month: date

    @property
    def end(self) -> datetime:
        nxt = add_months(self.month, 1)
        return datetime(nxt.year, nxt.month, 1, tzinfo=timezone.utc)


def partitions(conn: psycopg.Connection) -> list[Partition]:
    """The monthly partitions that exist, oldest first (others attached by hand are left)."""
    rows = conn.execute(
        """SELECT p.relname, c.relname FROM pg_inherits i
           JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
           WHERE p.relname = ANY(%s) AND p.relnamespace = c.relnamespace
             AND p.relnamespace = current_schema()::regnamespace""",
        (list(PARTITIONED),)).fetchall()
    found = []
    for table, name in rows:
        m = _NAME.match(name)
        if m and m.group(1) == table:
            found.append(Partition(table, name, date(int(m.group(2)), int(m.group(3)), 1)))
    return sorted(found, key=lambda p: (p.month, p.table))


@dataclass
class Step:
    action: str          # 'drop' (a whole partition) | 'delete' (rows older than the cutoff)
    table: str           # the partitioned (or plain) table
    target: str          # the partition dropped, or the table rows are deleted from
    rows: int            # rows it removes (counted when planned)

    def __str__(self) -> str:
        if self.action == "drop":
            return f"drop partition {self.target} ({self.rows:,} rows)"
        return f"delete {self.rows:,} rows from {self.target}"


def _delete_where(table: str) -> sql.Composable:
    age, _ = _AGE[table]
    cond = sql.SQL(age + " < %(cutoff)s")
    if table in ("calls", "call_legs"):
        # Only the months that can still hold such rows (the older ones are dropped):
        # partition pruning keeps the newer months out of the scan.
        cond = sql.SQL("filed_month <= %(last)s AND ") + cond
    return cond


def plan(conn: psycopg.Connection, cutoff: datetime,
         tables: Iterable[str] = ("calls", "call_legs", "call_events", "routing_decisions")
         ) -> list[Step]:
    """What pruning everything older than `cutoff` does, with row counts; changes nothing."""
    tables = list(tables)
    steps = []
    for part in partitions(conn):
        if part.table in tables and part.end <= cutoff:
            rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier(part.name))).fetchone()[0]
            steps.append(Step("drop", part.table, part.name, rows))
    dropped = {s.target for s in steps}
    params = _params(cutoff)
    for table in tables:
        query = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
            sql.Identifier(table), _delete_where(table))
        if table in PARTITIONED and dropped:
            # rows in the partitions about to be dropped are counted there
            query = sql.SQL("SELECT count(*) FROM {} WHERE {} AND tableoid::regclass::text "
                            "<> ALL(%(dropped)s)").format(sql.Identifier(table),
                                                          _delete_where(table))
        rows = conn.execute(query, {**params, "dropped": sorted(dropped)}).fetchone()[0]
        if rows:
            steps.append(Step("delete", table, table, rows))
    return steps


def _params(cutoff: datetime) -> dict:
    return {"cutoff": cutoff, "last": add_months(month_of(cutoff), 1)}


def execute(conn: psycopg.Connection, steps: list[Step], cutoff: datetime, *,
            chunk: int = 10_000, progress: Callable[[Step, int, bool], None] | None = None) -> int:
    """Carry out a plan on an autocommit connection; returns the rows removed.

    A drop is DETACH … CONCURRENTLY then DROP; a delete runs in chunks of `chunk` rows, one
    transaction each, so it never holds locks for long and can be interrupted."""
    removed = 0
    params = _params(cutoff)
    for step in steps:
        if step.action == "drop":
            conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {} CONCURRENTLY").format(
                sql.Identifier(step.table), sql.Identifier(step.target)))
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(step.target)))
            removed += step.rows
            if progress:
                progress(step, step.rows, True)
            continue
        _, key = _AGE[step.table]
        keys = sql.SQL(", ").join(map(sql.Identifier, key))
        query = sql.SQL("DELETE FROM {t} WHERE ({k}) IN (SELECT {k} FROM {t} WHERE {w} "
                        "LIMIT %(chunk)s)").format(t=sql.Identifier(step.table), k=keys,
                                                   w=_delete_where(step.table))
        done = 0
        while True:
            n = conn.execute(query, {**params, "chunk": chunk}).rowcount
            done += n
            if progress:
                progress(step, done, n < chunk)
            if n < chunk:
                break
        removed += done
    return removed


_DURATION = re.compile(r"^\s*(\d+)\s*([dhw])\s*$")
_UNIT_S = {"h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> int:
    """'90d', '12h', '2w' → seconds; ValueError naming the value otherwise."""
    m = _DURATION.match(text or "")
    if not m or int(m.group(1)) <= 0:
        raise ValueError(f"--older-than {text!r}: give a positive number of hours, days or "
                         "weeks, e.g. 90d, 12h, 2w")
    return int(m.group(1)) * _UNIT_S[m.group(2)]
