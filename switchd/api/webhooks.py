"""Call events for applications: per-tenant webhooks, an outbox in PostgreSQL, signed
deliveries with exponential backoff and a give-up horizon (docs/api.md, "Webhooks").

Three parts, so nothing in the ESL event path waits on the network:
  CallEvents  the daemon's event greenlet tells it what happened (registry effects and
              progress events); it numbers each call's events and puts them on a bounded
              in-memory queue — never blocking, never touching the database;
  Outbox      a writer greenlet drains that queue in batches into `webhook_outbox` (one row
              per event for a tenant with a webhook);
  Deliverer   claims due rows atomically (FOR UPDATE SKIP LOCKED, with a lease) so several
              daemons sharing the database deliver each row once, POSTs them signed, and
              marks them delivered or schedules the next try.

Signature: header `Switchd-Signature: t=<unix seconds>,v1=<hex>` where hex is
HMAC-SHA256(secret, "<t>." + body). A receiver recomputes it and rejects old timestamps.
"""
from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import random
import secrets
import time
import uuid
from collections import deque
from datetime import datetime, timedelta, timezone
from typing import Callable
from urllib.parse import urlsplit

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from dialplan import budget as budget_rules
from switchd import metrics
from switchd.adapters.db import green
from switchd.calls.model import origin_of

log = logging.getLogger(__name__)

EVENTS = ("created", "ringing", "answered", "completed", "busy", "no-answer", "failed")
FINAL = ("completed", "busy", "no-answer", "failed")
BUDGET_THRESHOLDS = budget_rules.THRESHOLDS       # percent of the monthly budget: 75, 90, 100
_BUDGET_NS = uuid.UUID("6d0f8a52-3c1e-4b7a-9d59-2f0c5b8e1a47")
_SPEND_NS = uuid.UUID("b3c4e1f0-7a2d-4c59-8e16-5d0a9f3b2c71")
_BUSY = {"USER_BUSY"}
_NO_ANSWER = {"NO_ANSWER", "NO_USER_RESPONSE", "ORIGINATOR_CANCEL", "ALLOTTED_TIMEOUT",
              "CALL_REJECTED", "PROGRESS_TIMEOUT"}


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def thresholds_crossed(before, after, budget) -> list[int]:
    """The BUDGET_THRESHOLDS (percent) that spend moving from `before` to `after` passes."""
    return budget_rules.thresholds_crossed(before, after, budget, BUDGET_THRESHOLDS)


def final_event(answered: bool, hangup_cause: str | None) -> str:
    if answered:
        return "completed"
    if hangup_cause in _BUSY:
        return "busy"
    if hangup_cause in _NO_ANSWER:
        return "no-answer"
    return "failed"


def _iso(us: int | None) -> str:
    at = datetime.fromtimestamp(us / 1e6, tz=timezone.utc) if us else datetime.now(timezone.utc)
    return at.isoformat()


def _known(call) -> dict:
    return {"direction": call.direction, "caller": call.caller or None,
            "destination": call.destination or None}


# --- in the event greenlet ------------------------------------------------------------------
class CallEvents:
    """Turns registry effects into application events; O(1) per event, no I/O. The queue
    is bounded: when the writer cannot keep up, new events are dropped and counted (the
    CDR stays the record; a replay re-sends what was written).

    A call event is queued as a plain tuple (tenant, call UUID, sequence, name, time,
    data); its event id and ISO time are made by `take`, and only for the tenants the
    outbox writes (those with an enabled webhook, as PostgreSQL says at write time): the
    events of every other tenant's calls are never built into documents."""

    def __init__(self, max_queued: int = 50_000):
        self.queue: deque = deque()
        self.max_queued = max_queued
        self._calls: dict[str, dict] = {}       # call_uuid -> {seq, tenant, rang, pending}

    def _state(self, call_uuid: str) -> dict:
        st = self._calls.get(call_uuid)
        if st is None:
            st = self._calls[call_uuid] = {"seq": 0, "tenant": None, "rang": False,
                                           "pending": [], "origin": None}
        return st

    def _emit(self, call_uuid: str, tenant: str | None, name: str, at_us: int, data: dict,
              known: dict | None = None, call=None):
        st = self._state(call_uuid)
        if tenant and not st["tenant"]:
            st["tenant"] = tenant
        if call is not None and call.origin_call and st["origin"] is None:
            # an attempt of an originated call: the id POST /v1/calls answered, and which
            st["origin"] = (call.origin_call, call.origin_attempt)
        self._complete(st, known)
        st["pending"].append((name, at_us, data))
        self._flush(call_uuid, st)

    @staticmethod
    def _complete(st: dict, known: dict | None) -> None:
        """Fill what a held `created` did not know yet (a routed call's direction and
        numbers arrive with the events after the dialplan's `set`s)."""
        if not known:
            return
        for name, _, data in st["pending"]:
            if name == "created":
                for key, value in known.items():
                    if data.get(key) is None and value:
                        data[key] = value

    def _flush(self, call_uuid: str, st: dict) -> None:
        if not st["tenant"]:
            return      # held until the call's tenant is known (an inbound A-leg's is set later)
        for name, at, payload in st["pending"]:
            st["seq"] += 1
            if len(self.queue) >= self.max_queued:
                metrics.WEBHOOK_EVENTS_DROPPED.inc()
                continue
            self.queue.append((st["tenant"], call_uuid, st["seq"], name, at, payload,
                               st["origin"]))
        st["pending"] = []

    def started(self, call) -> None:
        self._emit(call.call_uuid, call.tenant, "created", call.started_us,
                   {"direction": call.direction, "caller": call.caller or None,
                    "destination": call.destination or None}, call=call)

    def progress(self, call_uuid: str, tenant: str | None, at_us: int) -> None:
        st = self._calls.get(call_uuid)
        if st is None or st["rang"]:
            return
        st["rang"] = True
        self._emit(call_uuid, tenant, "ringing", at_us, {})

    def waiting(self, call_uuid: str) -> bool:
        """True while the call's events are held for want of its tenant."""
        st = self._calls.get(call_uuid)
        return st is not None and st["tenant"] is None

    def learn_tenant(self, call_uuid: str, tenant: str | None, known: dict | None = None,
                     switchd_vars: dict | None = None) -> None:
        """The held events' tenant (and, for an originate attempt, its origin) from the
        first event that names it: the `created` of a new channel precedes its variables."""
        st = self._calls.get(call_uuid)
        if st is not None and tenant and not st["tenant"]:
            st["tenant"] = tenant
            if st["origin"] is None:
                st["origin"] = origin_of(switchd_vars or {})
            self._complete(st, known)
            self._flush(call_uuid, st)

    def answered(self, call, leg) -> None:
        st = self._state(call.call_uuid)
        st["rang"] = True
        self._emit(call.call_uuid, call.tenant, "answered", call.answered_us or leg.answered_us,
                   {"carrier": leg.carrier, "gateway": leg.gateway}, _known(call), call)

    def ended(self, call, record) -> None:
        """`record`: the CallRecord billing made (duration and cost are the CDR's)."""
        name = final_event(record.answered_at is not None, record.hangup_cause)
        data = {"hangup_cause": record.hangup_cause, "carrier": record.carrier,
                "attempts": record.attempts, "destination": record.destination}
        if name == "completed":
            data["duration_seconds"] = record.billed_seconds
            data["cost"] = str(record.cost)
        at = int(record.ended_at.timestamp() * 1e6) if record.ended_at else call.ended_us
        self._emit(call.call_uuid, record.tenant or call.tenant, name, at, data, _known(call),
                   call)
        self._calls.pop(call.call_uuid, None)

    def budget_crossed(self, tenant: str, threshold: int, spent, budget, month: datetime,
                       at: datetime) -> None:
        """A budget alert on the same channel: the tenant's month-to-date spend passed
        `threshold` % of its monthly budget. Its event_id is derived from tenant, month and
        threshold, so a second daemon noticing the same crossing sends a duplicate that
        receivers drop like any retry."""
        if len(self.queue) >= self.max_queued:
            metrics.WEBHOOK_EVENTS_DROPPED.inc()
            return
        key = f"{tenant}/{month:%Y-%m}/{threshold}"
        self.queue.append({"event_id": str(uuid.uuid5(_BUDGET_NS, key)), "tenant": tenant,
                           "call_uuid": f"budget:{month:%Y-%m}", "sequence": threshold,
                           "event": "budget.threshold", "occurred_at": at.isoformat(),
                           "data": {"threshold_percent": threshold, "spent": str(spent),
                                    "monthly_budget": str(budget), "month": f"{month:%Y-%m}"}})

    def spend_alert(self, tenant: str, kind: str, period: str, data: dict,
                    at: datetime) -> None:
        """A spend guard alert (switchd/accounting/spend_watch.py), event `spend.<kind>`;
        its event_id is derived from tenant, kind and period like a budget alert's."""
        if len(self.queue) >= self.max_queued:
            metrics.WEBHOOK_EVENTS_DROPPED.inc()
            return
        key = f"{tenant}/{kind}/{period}"
        self.queue.append({"event_id": str(uuid.uuid5(_SPEND_NS, key)), "tenant": tenant,
                           "call_uuid": f"spend:{kind}:{period}", "sequence": 1,
                           "event": f"spend.{kind}", "occurred_at": at.isoformat(),
                           "data": data})

    def take(self, limit: int, keep: Callable[[str], bool] | None = None) -> list[dict]:
        """Up to `limit` events, oldest first, as documents. With `keep`, the events of
        tenants it refuses are discarded on the way, unbuilt and not counted in `limit`."""
        out = []
        queue = self.queue
        while queue and len(out) < limit:
            item = queue.popleft()
            if type(item) is dict:                  # an alert, built when raised
                if keep is None or keep(item["tenant"]):
                    out.append(item)
                continue
            tenant, call_uuid, seq, name, at, payload, origin = item
            if keep is None or keep(tenant):
                doc = {"event_id": str(uuid.uuid4()), "tenant": tenant,
                       "call_uuid": call_uuid, "sequence": seq, "event": name,
                       "occurred_at": _iso(at), "data": payload}
                if origin is not None:
                    doc["origin_call_uuid"], doc["attempt"] = origin
                out.append(doc)
        return out


# --- outbox writer ------------------------------------------------------------------------------
def hooked_tenants(conn: psycopg.Connection) -> frozenset[str]:
    """The tenants that have an enabled webhook."""
    return frozenset(row[0] for row in conn.execute(
        "SELECT t.name FROM webhooks w JOIN tenants t ON t.id = w.tenant_id WHERE w.enabled"))


def write_events(conn: psycopg.Connection, events: list[dict], horizon_s: float) -> int:
    """Insert the events of tenants that have an enabled webhook; returns rows written."""
    if not events:
        return 0
    with conn.transaction():
        hooked = hooked_tenants(conn)
        return _insert(conn, [e for e in events if e["tenant"] in hooked], horizon_s)


def _insert(conn: psycopg.Connection, rows: list[dict], horizon_s: float) -> int:
    if rows:
        with conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO webhook_outbox (event_id, tenant, call_uuid, call_seq, event,
                                               occurred_at, body, give_up_at)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, now() + %s * interval '1 second')""",
                [(e["event_id"], e["tenant"], e["call_uuid"], e["sequence"], e["event"],
                  e["occurred_at"], Jsonb(e), horizon_s) for e in rows])
    return len(rows)


class Outbox:
    """Drains CallEvents into the outbox every `interval` seconds (batched)."""

    def __init__(self, db_url: str, events: CallEvents, horizon_s: float,
                 interval: float = 0.2, batch: int = 500):
        self.db_url, self.events, self.horizon_s = db_url, events, horizon_s
        self.interval, self.batch = interval, batch
        self._conn = None
        self._held: list[dict] = []

    def step(self) -> int:
        if not self._held and not self.events.queue:
            return 0
        try:
            if self._conn is None or self._conn.closed:
                self._conn = green.connect(self.db_url, autocommit=True)
            if not self._held:
                # Only the events of tenants with a webhook are built (CallEvents.take).
                hooked = hooked_tenants(self._conn)
                self._held = self.events.take(self.batch, keep=hooked.__contains__)
            with self._conn.transaction():
                written = _insert(self._conn, self._held, self.horizon_s)
        except psycopg.Error as exc:
            # Keep the batch (or the queue) and try again: PostgreSQL being away must not
            # lose events; a held batch keeps its event ids.
            log.warning("webhook outbox: cannot write %d event(s): %s",
                        len(self._held) or len(self.events.queue),
                        str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            return 0
        self._held = []
        return written

    def run(self, stopping) -> None:
        while not stopping.is_set():
            if not self.step():
                stopping.wait(self.interval)
        while self.step():         # drain at shutdown
            pass


# --- delivery ---------------------------------------------------------------------------------
_CLAIM = """
UPDATE webhook_outbox o SET attempts = o.attempts + 1, next_at = %(now)s + %(lease)s * interval '1 second'
FROM (SELECT id FROM webhook_outbox
      WHERE delivered_at IS NULL AND failed_at IS NULL AND next_at <= %(now)s
      ORDER BY next_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED) due,
     tenants t JOIN webhooks w ON w.tenant_id = t.id
WHERE o.id = due.id AND t.name = o.tenant
RETURNING o.id, o.event_id, o.body, o.attempts, o.give_up_at, o.event, w.url, w.secret
"""


def backoff(attempts: int, base: float, cap: float, rng=random.random) -> float:
    """Seconds before try `attempts + 1`: base·2^(attempts-1), capped, with ±20 % jitter."""
    delay = min(cap, base * (2 ** max(0, attempts - 1)))
    return delay * (0.8 + 0.4 * rng())


def post(url: str, body: bytes, headers: dict, timeout: float) -> int:
    """POST with the standard library (cooperative under gevent's monkey patching)."""
    parts = urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname, parts.port, timeout=timeout)
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read(64 * 1024)
        return response.status
    finally:
        conn.close()


class Deliverer:
    def __init__(self, db_url: str, *, base: float = 2.0, cap: float = 600.0,
                 timeout: float = 10.0, lease: float = 60.0, batch: int = 50,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 wall: Callable[[], float] = time.time):
        self.db_url = db_url
        self.base, self.cap, self.timeout, self.lease, self.batch = base, cap, timeout, lease, batch
        self.clock, self.wall = clock, wall
        self._conn = None

    def _db(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = green.connect(self.db_url, autocommit=True)
        return self._conn

    def claim(self) -> list[dict]:
        with self._db().cursor(row_factory=dict_row) as cur:
            cur.execute(_CLAIM, {"now": self.clock(), "lease": self.lease, "limit": self.batch})
            return cur.fetchall()

    def step(self) -> int:
        """Claim and try the due rows once; returns how many were tried."""
        rows = self.claim()
        for row in rows:
            self._deliver(row)
        return len(rows)

    def _deliver(self, row: dict) -> None:
        body = json.dumps(row["body"], separators=(",", ":"), sort_keys=True).encode()
        ts = int(self.wall())
        headers = {"Content-Type": "application/json", "User-Agent": "switchd-webhooks",
                   "Switchd-Event-Id": str(row["event_id"]),
                   "Switchd-Signature": sign(row["secret"], ts, body)}
        try:
            status = post(row["url"], body, headers, self.timeout)
            error = None if 200 <= status < 300 else f"HTTP {status}"
        except (OSError, http.client.HTTPException) as exc:
            error = f"{type(exc).__name__}: {exc}"
        conn = self._db()
        now = self.clock()
        if error is None:
            conn.execute("UPDATE webhook_outbox SET delivered_at = %s, last_error = NULL"
                         " WHERE id = %s", (now, row["id"]))
            metrics.WEBHOOK_DELIVERIES.labels("delivered").inc()
            return
        retry_at = now + timedelta(seconds=backoff(row["attempts"], self.base, self.cap))
        if retry_at > row["give_up_at"]:
            conn.execute("UPDATE webhook_outbox SET failed_at = %s, last_error = %s WHERE id = %s",
                         (now, error, row["id"]))
            metrics.WEBHOOK_DELIVERIES.labels("gave_up").inc()
            log.warning("webhook %s (%s) given up after %d tries: %s", row["event_id"],
                        row["event"], row["attempts"], error)
            return
        conn.execute("UPDATE webhook_outbox SET next_at = %s, last_error = %s WHERE id = %s",
                     (retry_at, error, row["id"]))
        metrics.WEBHOOK_DELIVERIES.labels("retry").inc()

    def run(self, stopping, interval: float = 0.5) -> None:
        while not stopping.is_set():
            try:
                tried = self.step()
            except psycopg.Error as exc:
                log.warning("webhook delivery: database error: %s", exc)
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                tried = 0
            if not tried:
                stopping.wait(interval)


# --- management (API and CLI) -------------------------------------------------------------------
def set_webhook(conn: psycopg.Connection, tenant: str, url: str, secret: str | None = None,
                enabled: bool = True) -> dict:
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("url: must be an http:// or https:// URL with a host")
    if secret is not None and (not isinstance(secret, str) or len(secret) < 16):
        raise ValueError("secret: at least 16 characters (leave it out to get a generated one)")
    row = conn.execute("SELECT id FROM tenants WHERE name = %s", (tenant,)).fetchone()
    if row is None:
        raise LookupError(f"tenant: no tenant named {tenant!r}")
    secret = secret or new_secret()
    conn.execute("""INSERT INTO webhooks (tenant_id, url, secret, enabled) VALUES (%s, %s, %s, %s)
                    ON CONFLICT (tenant_id) DO UPDATE SET url = EXCLUDED.url,
                        secret = EXCLUDED.secret, enabled = EXCLUDED.enabled, updated_at = now()""",
                 (row[0], url, secret, enabled))
    return {"tenant": tenant, "url": url, "secret": secret, "enabled": enabled}


def get_webhook(conn: psycopg.Connection, tenant: str) -> dict | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("""SELECT t.name AS tenant, w.url, w.enabled, w.updated_at
                       FROM webhooks w JOIN tenants t ON t.id = w.tenant_id
                       WHERE t.name = %s""", (tenant,))
        return cur.fetchone()


def delete_webhook(conn: psycopg.Connection, tenant: str) -> bool:
    return conn.execute("""DELETE FROM webhooks USING tenants t
                           WHERE t.id = webhooks.tenant_id AND t.name = %s""",
                        (tenant,)).rowcount == 1


def call_events(conn: psycopg.Connection, call_uuid: str, tenant: str | None) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("""SELECT DISTINCT ON (event_id) event_id, call_seq AS sequence, event,
                              occurred_at, attempts, delivered_at, failed_at, last_error
                       FROM webhook_outbox
                       WHERE call_uuid = %s AND (%s::text IS NULL OR tenant = %s)
                       ORDER BY event_id, id DESC""", (call_uuid, tenant, tenant))
        return sorted(cur.fetchall(), key=lambda r: r["sequence"])


def replay(conn: psycopg.Connection, call_uuid: str, tenant: str | None,
           horizon_s: float) -> int:
    """Queue every event of the call again (same event ids: receivers deduplicate on them)."""
    return conn.execute(
        """INSERT INTO webhook_outbox (event_id, tenant, call_uuid, call_seq, event, occurred_at,
                                       body, give_up_at)
           SELECT DISTINCT ON (event_id) event_id, tenant, call_uuid, call_seq, event,
                  occurred_at, body, now() + %s * interval '1 second'
           FROM webhook_outbox WHERE call_uuid = %s AND (%s::text IS NULL OR tenant = %s)
           ORDER BY event_id, id""", (horizon_s, call_uuid, tenant, tenant)).rowcount


def housekeeping(conn: psycopg.Connection, idempotency_hours: float = 24,
                 keep_days: float = 30) -> tuple[int, int]:
    """Forget Idempotency-Key answers after a day and finished outbox rows after a month
    (docs/api.md says both); returns (keys, rows) removed."""
    keys = conn.execute("DELETE FROM api_idempotency WHERE created_at < now() - %s * interval "
                        "'1 hour' AND status IS NOT NULL", (idempotency_hours,)).rowcount
    done = conn.execute("DELETE FROM webhook_outbox WHERE coalesce(delivered_at, failed_at) < "
                        "now() - %s * interval '1 day'", (keep_days,)).rowcount
    return keys, done
