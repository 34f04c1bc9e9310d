"""Originate attempts and scheduled retries in PostgreSQL (docs/originate.md).

`AttemptStore` records every attempt of an originated call (`originate_attempts`), keeps
the pending retries (so they survive a restart and any daemon sharing the database can
place them) and counts attempts per number per day (`originate_daily`, the daily cap).
`RetryScheduler` is the periodic job that claims due retries — `FOR UPDATE SKIP LOCKED`,
moved to 'running' in the claiming transaction, so two daemons never both place one — and
hands each to the Originator in a greenlet of its own. `CallFinal` is what the final-outcome
hook receives. None of this runs in the ESL event greenlet.

The clock is injected (a callable returning an aware datetime): the schedule follows it, so
a test can move time instead of sleeping.
"""
from __future__ import annotations

import logging
import os
import socket
import uuid
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Callable

import gevent
import psycopg
from gevent.lock import BoundedSemaphore
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from switchd.adapters.db import green

log = logging.getLogger(__name__)

# A 'running' attempt older than this belongs to a daemon that died while placing it: it is
# closed as 'interrupted' and never placed again (ringing someone twice is worse than once
# too few). One attempt takes at most five carriers x (ring time + 17 s).
INTERRUPTED_AFTER = timedelta(hours=1)

ATTEMPT_COLUMNS = ("attempt", "attempt_call_uuid", "state", "scheduled_at", "started_at",
                   "ended_at", "outcome", "cause", "sip_status", "carrier", "gateway",
                   "carriers_tried", "final", "note")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def daemon_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class CallFinal:
    """An originated call whose outcome is final: no attempt will follow.

    `call_uuid` is the id POST /v1/calls answered (the first attempt's call UUID);
    `attempt_call_uuid` the switch call of the last attempt (the answered one when
    `answered`; its CDR in `calls` has duration and cost once it has ended)."""
    call_uuid: str
    tenant: str
    destination: str
    campaign: str | None
    outcome: str               # dialplan/retry.py OUTCOMES, or refused / capped / failed / interrupted
    answered: bool
    attempts: int              # attempts placed or tried, the first included
    attempt_call_uuid: str | None
    carrier: str | None
    cause: str | None
    sip_status: int | None
    note: str
    reference: str | None = None   # the request's `reference` (e.g. a campaign's contact id)


@dataclass(frozen=True)
class AttemptEnd:
    """How one attempt ended, as recorded."""
    outcome: str
    ended_at: datetime
    cause: str | None = None
    sip_status: int | None = None
    carrier: str | None = None
    gateway: str | None = None
    carriers_tried: int = 0
    final: bool = True
    note: str = ""


class AttemptStoreError(RuntimeError):
    """PostgreSQL could not record an attempt (one line, for the API answer and the log)."""


class _Connections:
    """At most `size` connections, reused by greenlets (no pool package in the
    dependencies); a connection is handed to one greenlet at a time, and a campaign placing
    hundreds of calls at once waits its turn (milliseconds) instead of opening hundreds."""

    def __init__(self, db_url: str, size: int = 6):
        self.db_url = db_url
        self.idle: deque = deque()
        self.slots = BoundedSemaphore(size)

    @contextmanager
    def get(self):
        with self.slots:
            try:
                conn = self.idle.pop() if self.idle else green.connect(self.db_url,
                                                                       autocommit=True)
            except psycopg.Error as exc:
                raise AttemptStoreError(f"originate attempts not recorded: {exc}") from exc
            try:
                yield conn
            except psycopg.Error as exc:
                conn.close()         # state unknown (failed transaction, lost connection)
                raise AttemptStoreError(f"originate attempts not recorded: {exc}") from exc
            except BaseException:
                conn.close()
                raise
            if conn.closed:
                return
            self.idle.append(conn)

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()


class AttemptStore:
    def __init__(self, db_url: str):
        self.conns = _Connections(db_url)

    def close(self) -> None:
        self.conns.close()

    # --- the daily cap ------------------------------------------------------------------------
    def take_daily(self, tenant: str, number: str, day: date, cap: int | None) -> int | None:
        """Count one attempt to `number` on `day`; the new count, or None (nothing counted)
        when `cap` attempts were already placed. Atomic across daemons."""
        with self.conns.get() as conn:
            row = conn.execute(
                """INSERT INTO originate_daily AS d (tenant, number, day, attempts)
                   VALUES (%(tenant)s, %(number)s, %(day)s, 1)
                   ON CONFLICT (tenant, number, day) DO UPDATE SET attempts = d.attempts + 1
                   WHERE %(cap)s::integer IS NULL OR d.attempts < %(cap)s::integer
                   RETURNING attempts""",
                {"tenant": tenant, "number": number, "day": day, "cap": cap}).fetchone()
        if row is None or (cap is not None and row[0] > cap):
            return None       # (cap 0 cannot be configured; the second test is belt and braces)
        return row[0]

    def daily_count(self, tenant: str, number: str, day: date) -> int:
        with self.conns.get() as conn:
            row = conn.execute("SELECT attempts FROM originate_daily WHERE tenant = %s AND "
                               "number = %s AND day = %s", (tenant, number, day)).fetchone()
        return row[0] if row else 0

    # --- attempts -----------------------------------------------------------------------------
    def begin(self, call_uuid: str, attempt: int, *, tenant: str, destination: str,
              campaign: str | None, attempt_call_uuid: str, scheduled_at: datetime,
              started_at: datetime, request: dict, daemon: str) -> None:
        """The first attempt, placed now (a retry's row exists already: `placing`)."""
        with self.conns.get() as conn:
            conn.execute(
                """INSERT INTO originate_attempts (call_uuid, attempt, tenant, destination,
                       campaign, attempt_call_uuid, state, scheduled_at, started_at, request,
                       claimed_by)
                   VALUES (%s, %s, %s, %s, %s, %s, 'running', %s, %s, %s, %s)""",
                (call_uuid, attempt, tenant, destination, campaign, attempt_call_uuid,
                 scheduled_at, started_at, Jsonb(request), daemon))

    def placing(self, call_uuid: str, attempt: int, attempt_call_uuid: str,
                destination: str) -> None:
        with self.conns.get() as conn:
            conn.execute("UPDATE originate_attempts SET attempt_call_uuid = %s, destination = %s"
                         " WHERE call_uuid = %s AND attempt = %s",
                         (attempt_call_uuid, destination, call_uuid, attempt))

    def finish(self, call_uuid: str, attempt: int, end: AttemptEnd,
               retry_at: datetime | None = None) -> None:
        """Close attempt `attempt`; with `retry_at`, schedule the next one (same transaction:
        a crash leaves either both or neither)."""
        with self.conns.get() as conn, conn.transaction():
            row = conn.execute(
                """UPDATE originate_attempts SET state = 'done', ended_at = %s, outcome = %s,
                          cause = %s, sip_status = %s, carrier = %s, gateway = %s,
                          carriers_tried = %s, final = %s, note = %s
                   WHERE call_uuid = %s AND attempt = %s
                   RETURNING tenant, destination, campaign, request""",
                (end.ended_at, end.outcome, end.cause, end.sip_status, end.carrier, end.gateway,
                 end.carriers_tried, retry_at is None, end.note, call_uuid, attempt)).fetchone()
            if row is None or retry_at is None:
                return
            tenant, destination, campaign, request = row
            conn.execute(
                """INSERT INTO originate_attempts (call_uuid, attempt, tenant, destination,
                       campaign, state, scheduled_at, request)
                   VALUES (%s, %s, %s, %s, %s, 'pending', %s, %s)""",
                (call_uuid, attempt + 1, tenant, destination, campaign, retry_at, Jsonb(request)))

    def claim_due(self, now: datetime, daemon: str, limit: int = 20) -> list[dict]:
        """Pending retries due at `now`, moved to 'running' for this daemon in one statement:
        a row another daemon is claiming is skipped (SKIP LOCKED), never placed twice."""
        with self.conns.get() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                """UPDATE originate_attempts a SET state = 'running', started_at = %(now)s,
                          claimed_by = %(daemon)s
                   FROM (SELECT call_uuid, attempt FROM originate_attempts
                         WHERE state = 'pending' AND scheduled_at <= %(now)s
                         ORDER BY scheduled_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED) due
                   WHERE a.call_uuid = due.call_uuid AND a.attempt = due.attempt
                   RETURNING a.call_uuid::text, a.attempt, a.tenant, a.destination, a.campaign,
                             a.scheduled_at, a.request""",
                {"now": now, "daemon": daemon, "limit": limit})
            return cur.fetchall()

    def cancel_pending(self, now: datetime, note: str, *, call_uuid: str | None = None,
                       campaign: str | None = None, tenant: str | None = None) -> list[dict]:
        """Pending retries (of one call, a campaign, and/or a tenant) closed 'cancelled',
        final; a retry already claimed is not touched (its attempt runs; hang it up)."""
        if call_uuid is None and campaign is None:
            raise ValueError("cancel_pending: name a call or a campaign")
        with self.conns.get() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                """UPDATE originate_attempts SET state = 'done', ended_at = %(now)s,
                          outcome = 'cancelled', final = true, note = %(note)s
                   WHERE state = 'pending'
                     AND (%(call)s::uuid IS NULL OR call_uuid = %(call)s::uuid)
                     AND (%(campaign)s::text IS NULL OR campaign = %(campaign)s)
                     AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
                   RETURNING call_uuid::text, attempt, tenant, destination, campaign,
                             request""",
                {"now": now, "note": note, "call": call_uuid, "campaign": campaign,
                 "tenant": tenant})
            return cur.fetchall()

    def close_interrupted(self, now: datetime) -> list[dict]:
        """'running' attempts whose daemon died while placing them → 'interrupted', final."""
        with self.conns.get() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                """UPDATE originate_attempts SET state = 'done', ended_at = %(now)s,
                          outcome = 'interrupted', final = true,
                          note = 'the daemon placing it stopped; not placed again'
                   WHERE state = 'running' AND started_at < %(before)s
                   RETURNING call_uuid::text, attempt, tenant, destination, campaign,
                             attempt_call_uuid::text, request""",
                {"now": now, "before": now - INTERRUPTED_AFTER})
            return cur.fetchall()

    def attempts(self, call_uuid: str) -> list[dict]:
        with self.conns.get() as conn, conn.cursor(row_factory=dict_row) as cur:
            return list_attempts(cur, call_uuid)

    def housekeeping(self, today: date) -> None:
        with self.conns.get() as conn:
            conn.execute("DELETE FROM originate_daily WHERE day < %s", (today - timedelta(days=2),))


def list_attempts(cur, call_uuid: str) -> list[dict]:
    """The attempts of a call (by its id, or by the switch call of any of its attempts)."""
    cur.execute(f"""SELECT {', '.join(ATTEMPT_COLUMNS)} FROM originate_attempts
                    WHERE call_uuid = (SELECT call_uuid FROM originate_attempts
                                       WHERE call_uuid = %(id)s::uuid
                                          OR attempt_call_uuid = %(id)s::uuid LIMIT 1)
                    ORDER BY attempt""", {"id": call_uuid})
    rows = cur.fetchall()
    for r in rows:
        if r.get("attempt_call_uuid") is not None:
            r["attempt_call_uuid"] = str(r["attempt_call_uuid"])
    return rows


class RetryScheduler:
    """Claims due retries and places each in its own greenlet (`place(row)`)."""

    def __init__(self, store: AttemptStore, place: Callable[[dict], object],
                 clock: Callable[[], datetime] = utc_now, ready: Callable[[], bool] = lambda: True,
                 daemon: str | None = None, batch: int = 20):
        self.store, self.place, self.clock, self.ready = store, place, clock, ready
        self.daemon = daemon or daemon_id()
        self.batch = batch
        self.placing: set[gevent.Greenlet] = set()
        self.on_interrupted: Callable[[dict], None] = lambda row: None

    def step(self) -> int:
        """One round: close interrupted attempts, claim what is due, place it. Returns the
        number of retries handed to `place`."""
        now = self.clock()
        for row in self.store.close_interrupted(now):
            log.warning("originate %s attempt %d interrupted (its daemon stopped)",
                        row["call_uuid"], row["attempt"], extra={"call_uuid": row["call_uuid"]})
            self.on_interrupted(row)
        if not self.ready():
            return 0            # not connected to FreeSWITCH: leave them pending
        rows = self.store.claim_due(now, self.daemon, self.batch)
        for row in rows:
            greenlet = gevent.spawn(self._place, row)
            self.placing.add(greenlet)
            greenlet.link(self.placing.discard)
        return len(rows)

    def _place(self, row: dict) -> None:
        try:
            self.place(row)
        except Exception:        # greenlet boundary: logged; the row says what happened
            log.exception("retry %s attempt %d failed", row["call_uuid"], row["attempt"],
                          extra={"call_uuid": row["call_uuid"]})

    def drain(self, timeout: float) -> None:
        gevent.joinall(list(self.placing), timeout=timeout)
