"""CDR writer: bounded in-memory queue → batched upserts into PostgreSQL, durable spool.

The event greenlet only ever calls ``submit_*``: a ``put_nowait`` on a bounded queue, never
the network (STYLE.md §6). When the queue is full the record goes straight to the local
spool (an fsync'd append), so nothing is dropped. One writer greenlet drains the queue in
batches, one transaction per batch. Any PostgreSQL error sends the batch to the spool; the
writer then reconnects with jittered backoff (forever) and, once connected, replays the spool
before writing anything newer. Every write is idempotent by primary key (call_uuid,
leg_uuid, (core_uuid, event_seq), decision id), so a replay that repeats rows already
committed changes nothing.

Superseding rule for calls and legs (ON CONFLICT DO UPDATE ... WHERE): a stored row is
replaced only by a record carrying at least as much information, ranked by
(not reconstructed, has ended_at, has answered_at) for calls and (has ended_at, has
answered_at) for legs. So a real CDR replaces a reconstructed one (built after a restart
from ``show channels``), a final CDR replaces an interim one, and neither is ever
overwritten by a poorer record arriving late (e.g. from a spool replay). Among records of
equal rank the last write wins.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from decimal import Decimal
from typing import Any

import gevent
import psycopg
from gevent.queue import Empty, Full, Queue

from switchd.adapters.db import store
from switchd.adapters.db.spool import Spool, SpoolError
from switchd.metrics import CDR_QUEUE_DEPTH, CDRS_WRITTEN, DB_ERRORS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CallRecord:
    """One row of ``calls``: the CDR of a call, keyed by the A-leg (or originated) UUID."""
    call_uuid: str
    direction: str
    tenant: str | None = None
    route_id: str | None = None            # routing_decisions.id
    caller: str | None = None
    destination: str | None = None
    started_at: datetime | None = None
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    hangup_cause: str | None = None
    carrier: str | None = None             # the carrier that carried (or last tried) it
    gateway: str | None = None
    first_choice_carrier: str | None = None
    attempts: int = 0
    billed_seconds: int = 0
    cost: Decimal = Decimal("0")
    reconstructed: bool = False            # rebuilt after a restart, not seen end to end
    pdd_ms: int | None = None              # of the leg that carried (or last tried) it
    disposition: str | None = None         # dialplan.causes.disposition of that leg


@dataclass(frozen=True)
class LegRecord:
    """One row of ``call_legs``: a carrier (or A-) leg, rated on its own."""
    leg_uuid: str
    call_uuid: str
    direction: str
    carrier: str | None = None
    gateway: str | None = None
    started_at: datetime | None = None
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    hangup_cause: str | None = None
    sip_status: int | None = None
    billmsec: int = 0
    billed_seconds: int = 0
    rate_per_min: Decimal | None = None
    connect_fee: Decimal | None = None
    increments: str | None = None          # 'initial/subsequent', e.g. '60/6'
    cost: Decimal | None = Decimal("0")    # None exactly when unrated
    billsec: int | None = None             # FreeSWITCH's billsec, when known
    cdr_source: str = "esl"                # 'esl' | 'switch' (FreeSWITCH's own CDR)
    provisional: bool = False              # closed without its hangup: estimated
    unrated: bool = False                  # answered but could not be rated
    progress_at: datetime | None = None    # first CHANNEL_PROGRESS / _MEDIA (ringing, early media)
    pdd_ms: int | None = None              # start → progress (or answer, if none came first)
    disposition: str | None = None         # dialplan.causes.disposition


@dataclass(frozen=True)
class SwitchCallRecord:
    """What FreeSWITCH's CDR of one leg says about its call (upserted into ``calls``).

    An A-leg's CDR (``from_a_leg``) is the authority on the call's times and cause; a
    B-leg's only fills what is still unknown, so deliveries in any order give one row."""
    call_uuid: str
    direction: str
    from_a_leg: bool
    tenant: str | None = None
    route_id: str | None = None
    caller: str | None = None
    destination: str | None = None
    started_at: datetime | None = None
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    hangup_cause: str | None = None


@dataclass(frozen=True)
class EventRecord:
    """One row of ``call_events``; (core_uuid, event_seq) makes replays idempotent."""
    core_uuid: str
    event_seq: int
    name: str
    at: datetime
    call_uuid: str | None = None
    leg_uuid: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


_KINDS = {"call": CallRecord, "leg": LegRecord, "event": EventRecord,
          "switch_call": SwitchCallRecord}
_KIND_OF = {cls: kind for kind, cls in _KINDS.items()}


def _columns(cls) -> list[str]:
    return [f.name for f in fields(cls)]


# Known only from ESL's progress events: a later record that lacks them (FreeSWITCH's CDR)
# keeps what is stored.
_KEEP_WHEN_NULL = frozenset({"progress_at", "pdd_ms", "disposition"})


def _upsert_sql(table: str, cls, key: str, rank_new: str, rank_old: str) -> str:
    cols = _columns(cls)
    updates = ", ".join(f"{c} = COALESCE(EXCLUDED.{c}, {table}.{c})" if c in _KEEP_WHEN_NULL
                        else f"{c} = EXCLUDED.{c}" for c in cols if c != key)
    return (f"INSERT INTO {table} ({', '.join(cols)}) "
            f"VALUES ({', '.join(f'%({c})s' for c in cols)}) "
            f"ON CONFLICT ({key}) DO UPDATE SET {updates} WHERE {rank_new} >= {rank_old}")


# Static SQL built once from the dataclass fields (identifiers only, no values).
_UPSERT_CALL = _upsert_sql(
    "calls", CallRecord, "call_uuid",
    "(NOT EXCLUDED.reconstructed, EXCLUDED.ended_at IS NOT NULL, EXCLUDED.answered_at IS NOT NULL)",
    "(NOT calls.reconstructed, calls.ended_at IS NOT NULL, calls.answered_at IS NOT NULL)")
# FreeSWITCH's CDR outranks anything ESL said; a leg closed without its hangup
# (provisional) outranks nothing it would replace.
_UPSERT_LEG = _upsert_sql(
    "call_legs", LegRecord, "leg_uuid",
    "(EXCLUDED.cdr_source = 'switch', NOT EXCLUDED.provisional, "
    "EXCLUDED.ended_at IS NOT NULL, EXCLUDED.answered_at IS NOT NULL)",
    "(call_legs.cdr_source = 'switch', NOT call_legs.provisional, "
    "call_legs.ended_at IS NOT NULL, call_legs.answered_at IS NOT NULL)")


def _switch_call_sql(a_leg: bool) -> str:
    """A-leg CDR: its values win over what is stored; B-leg CDR: it only fills gaps."""
    cols = ["call_uuid", "direction", "tenant", "route_id", "caller", "destination",
            "started_at", "answered_at", "ended_at", "hangup_cause"]
    facts = ("started_at", "ended_at", "hangup_cause", "caller", "destination")
    sets = []
    for c in cols[1:]:
        first, second = ("EXCLUDED", "calls") if a_leg and c in facts else ("calls", "EXCLUDED")
        sets.append(f"{c} = COALESCE({first}.{c}, {second}.{c})")
    if a_leg:
        sets.append("reconstructed = false")
    return (f"INSERT INTO calls ({', '.join(cols)}) "
            f"VALUES ({', '.join(f'%({c})s' for c in cols)}) "
            f"ON CONFLICT (call_uuid) DO UPDATE SET {', '.join(sets)}")


_UPSERT_SWITCH_CALL = {True: _switch_call_sql(True), False: _switch_call_sql(False)}

# A call's money and flags always come from its leg rows, whichever record came last, so
# the result does not depend on the order ESL records and switch CDRs arrive in. Carrier
# legs are the rated ones (a carrier or gateway is known).
RECOMPUTE_CALLS = """
UPDATE calls c SET cost = s.cost, billed_seconds = s.billed, unrated = s.unrated,
       provisional = s.provisional, cdr_source = s.source,
       attempts = GREATEST(c.attempts, s.attempts),
       carrier = COALESCE(s.carrier, c.carrier), gateway = COALESCE(s.gateway, c.gateway),
       first_choice_carrier = COALESCE(c.first_choice_carrier, s.first_carrier),
       answered_at = COALESCE(s.answered_at, c.answered_at)
FROM (SELECT call_uuid,
             COALESCE(sum(cost) FILTER (WHERE rated), 0) AS cost,
             COALESCE(sum(billed_seconds) FILTER (WHERE rated), 0) AS billed,
             bool_or(unrated) AS unrated, bool_or(provisional) AS provisional,
             CASE WHEN bool_and(cdr_source = 'switch') THEN 'switch' ELSE 'esl' END AS source,
             count(*) FILTER (WHERE rated) AS attempts,
             (array_agg(carrier ORDER BY answered_at IS NULL, started_at DESC)
                 FILTER (WHERE rated))[1] AS carrier,
             (array_agg(gateway ORDER BY answered_at IS NULL, started_at DESC)
                 FILTER (WHERE rated))[1] AS gateway,
             (array_agg(carrier ORDER BY started_at) FILTER (WHERE rated))[1] AS first_carrier,
             min(answered_at) AS answered_at
      FROM (SELECT *, (carrier IS NOT NULL OR gateway IS NOT NULL) AS rated
            FROM call_legs WHERE call_uuid = ANY(%(uuids)s)) l
      GROUP BY call_uuid) s
WHERE c.call_uuid = s.call_uuid
"""
_INSERT_EVENT = (f"INSERT INTO call_events ({', '.join(_columns(EventRecord))}) "
                 f"VALUES ({', '.join(f'%({c})s' for c in _columns(EventRecord))}) "
                 "ON CONFLICT (core_uuid, event_seq) DO NOTHING")


def _to_spool(item: tuple[str, Any]) -> dict:
    kind, rec = item
    return {"kind": kind, "record": rec if kind == "decision" else asdict(rec)}


def _from_spool(entry: dict) -> tuple[str, Any]:
    kind, rec = entry["kind"], entry["record"]
    return kind, (rec if kind == "decision" else _KINDS[kind](**rec))


def write_batch(conn: psycopg.Connection, items: list[tuple[str, Any]]) -> int:
    """Write one batch in one transaction; returns the number of call rows (CDRs) in it."""
    by_kind: dict[str, list] = {"call": [], "leg": [], "event": [], "decision": [],
                                "switch_call": []}
    for kind, rec in items:
        by_kind[kind].append(rec)
    with conn.transaction(), conn.cursor() as cur:
        # executemany runs in pipeline mode: one round trip per batch, not per row.
        if by_kind["call"]:
            cur.executemany(_UPSERT_CALL, [asdict(r) for r in by_kind["call"]])
        for a_leg in (True, False):
            rows = [asdict(r) for r in by_kind["switch_call"] if r.from_a_leg is a_leg]
            if rows:
                cur.executemany(_UPSERT_SWITCH_CALL[a_leg], rows)
        if by_kind["leg"]:
            cur.executemany(_UPSERT_LEG, [asdict(r) for r in by_kind["leg"]])
        touched = sorted({r.call_uuid for k in ("call", "leg", "switch_call")
                          for r in by_kind[k]})
        if touched:
            cur.execute(RECOMPUTE_CALLS, {"uuids": touched})
        if by_kind["event"]:
            cur.executemany(_INSERT_EVENT, [
                {**asdict(r), "data": store.jsonb(r.data or {})} for r in by_kind["event"]])
        if by_kind["decision"]:
            store.insert_routing_decisions(conn, by_kind["decision"])
    return len(by_kind["call"])


# Errors meaning "the database is not reachable now": spool and retry later. Anything else
# (DataError, IntegrityError...) means PostgreSQL refused the data itself.
_OUTAGE = (psycopg.OperationalError, psycopg.InterfaceError)


class CdrWriter:
    def __init__(self, url: str, batch_size: int = 200, flush_interval: float = 0.5,
                 queue_max: int = 100_000, spool: Spool | None = None, *,
                 connect_timeout: int = 5, backoff_max: float = 30.0):
        if spool is None:
            raise ValueError("CdrWriter needs a Spool: records must never be dropped")
        self.url = url
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.spool = spool
        self.connect_timeout = connect_timeout
        self.backoff_max = backoff_max
        self._queue: Queue = Queue(maxsize=queue_max)
        # Last resort when the queue is full AND the spool disk fails: memory, unbounded,
        # loudly logged. Losing a CDR is worse than growing.
        self._overflow: list[tuple[str, Any]] = []
        self._conn: psycopg.Connection | None = None
        self._greenlet: gevent.Greenlet | None = None
        self._stopping = False
        self._inflight: list[tuple[str, Any]] = []
        self._failures = 0
        self._next_attempt = 0.0
        self.last_error: str | None = None
        self.written = 0          # call rows (CDRs) committed by this writer
        self.spooled = 0          # records this writer sent to the spool
        self.rejected = 0         # records PostgreSQL refused as data (parked, see spool.reject)

    # --- producer side (event greenlet): never blocks, never drops -------------------------
    def submit_call(self, rec: CallRecord) -> None:
        self._submit(("call", rec))

    def submit_leg(self, rec: LegRecord) -> None:
        self._submit(("leg", rec))

    def submit_event(self, rec: EventRecord) -> None:
        self._submit(("event", rec))

    def submit_decision(self, row: dict) -> None:
        self._submit(("decision", row))

    def _submit(self, item: tuple[str, Any]) -> None:
        try:
            self._queue.put_nowait(item)
        except Full:
            # Overflow is durable too: an fsync'd local append, no network.
            try:
                self.spool.append([_to_spool(item)])
                self.spooled += 1
            except SpoolError as exc:
                self.last_error = str(exc)
                log.error("CDR queue full and spool unwritable; holding record in memory: %s",
                          exc)
                self._overflow.append(item)
        CDR_QUEUE_DEPTH.set(self._queue.qsize() + len(self._overflow))

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> "CdrWriter":
        self._stopping = False
        self._greenlet = gevent.spawn(self._run)
        return self

    def stop(self, flush: bool = True, timeout: float = 10.0) -> None:
        """Stop the writer. With ``flush``, write (or spool) everything queued first.

        After ``timeout`` the writer is killed and whatever it still held, in flight or
        queued, is spooled: when stop() returns every submitted record is in PostgreSQL or
        in the spool (SpoolError if the disk refuses even that).
        """
        self._stopping = True
        if self._greenlet is not None:
            self._greenlet.join(timeout if flush else 0)
            if not self._greenlet.dead:
                self._greenlet.kill(block=True, timeout=2)
            self._greenlet = None
        leftover = self._inflight + self._drain_all()
        self._inflight = []
        if leftover:
            self.spool.append([_to_spool(i) for i in leftover])
            self.spooled += len(leftover)
        CDR_QUEUE_DEPTH.set(0)
        self._close()
        self.spool.close()

    def stats(self) -> dict[str, Any]:
        """For /readyz: ready when CDRs can be stored now or at least spooled durably."""
        db_ok = self._conn is not None and not self._conn.closed
        spool_ok = self.spool.writable()
        return {"can_store": db_ok or spool_ok, "db_connected": db_ok,
                "spool_writable": spool_ok,
                "queue_depth": self._queue.qsize() + len(self._overflow),
                "spool_records": self.spool.records, "written": self.written,
                "rejected": self.rejected, "last_error": self.last_error}

    # --- writer greenlet ------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            if self._stopping and self._queue.empty() and not self._overflow:
                break
            try:
                if self._step():
                    break
            except Exception:   # greenlet boundary: a bug must not silently stop CDR writing
                DB_ERRORS.labels(operation="writer").inc()
                log.exception("CDR writer: unexpected error; spooling the batch in hand")
                self._close()
                try:
                    self._spool_batch(self._inflight)
                except (TypeError, ValueError):
                    # Not even JSON-serialisable: unstorable anywhere; keep it in the log.
                    log.error("CDR writer: dropping unserialisable records: %r", self._inflight)
                    self._inflight = []
                gevent.sleep(self.flush_interval)
        if self._conn is not None and self.spool.records:
            self._replay()   # SIGTERM: leave as little as possible in the spool

    def _step(self) -> bool:
        """One batch: write it, or spool it. True when shutdown should end the loop now."""
        batch = self._take_batch()
        if self._ensure_connected():
            # Older spooled records go first, so a later record is never overtaken.
            if self.spool.records and not self._replay():
                self._spool_batch(batch)
            elif batch:
                self._write(batch)
        elif batch:
            # No database: make the batch durable now rather than hold it in memory.
            self._spool_batch(batch)
        if self._stopping and self._conn is None:
            # Shutting down with the database away: spool the rest, do not wait for it.
            self._spool_batch(self._drain_all())
            return True
        return False

    def _take_batch(self) -> list[tuple[str, Any]]:
        batch, self._overflow = self._overflow[:self.batch_size], self._overflow[self.batch_size:]
        try:
            if not batch:
                batch.append(self._queue.get(timeout=self.flush_interval)
                             if not self._stopping else self._queue.get_nowait())
            while len(batch) < self.batch_size:
                batch.append(self._queue.get_nowait())
        except Empty:
            pass
        self._inflight = batch
        CDR_QUEUE_DEPTH.set(self._queue.qsize() + len(self._overflow))
        return batch

    def _drain_all(self) -> list[tuple[str, Any]]:
        items, self._overflow = self._overflow, []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except Empty:
                return items

    def _write(self, batch: list[tuple[str, Any]]) -> None:
        try:
            self._commit(batch)
        except _OUTAGE as exc:
            self._db_failed("write", exc)
            self._spool_batch(batch)
            return
        self._inflight = []

    def _commit(self, items: list[tuple[str, Any]]) -> None:
        """One transaction for the batch; if PostgreSQL refuses the data itself, find the
        bad records one by one and park them, so one poison record never blocks the rest."""
        try:
            n = write_batch(self._conn, items)
        except _OUTAGE:
            raise
        except psycopg.Error as exc:
            DB_ERRORS.labels(operation="reject").inc()
            log.error("CDR batch refused by PostgreSQL (%s); retrying record by record", exc)
            n = 0
            for item in items:
                try:
                    n += write_batch(self._conn, [item])
                except _OUTAGE:
                    raise
                except psycopg.Error as one:
                    self.spool.reject([_to_spool(item)], f"{type(one).__name__}: {one}".strip())
                    self.rejected += 1
        self.written += n
        CDRS_WRITTEN.inc(n)

    def _replay(self) -> bool:
        """Replay the spool oldest first; False (and backoff) when the database fails."""
        try:
            result = self.spool.replay(lambda entries: self._commit(
                [_from_spool(e) for e in entries]))
        except _OUTAGE as exc:
            self._db_failed("replay", exc)
            return False
        if result.records or result.skipped:
            log.info("spool replayed: %d records from %d files, %d torn lines skipped",
                     result.records, result.files, len(result.skipped))
        return True

    def _spool_batch(self, items: list[tuple[str, Any]]) -> None:
        """Append to the spool, retrying until the disk takes it (records stay in flight,
        so stop() can still spool them)."""
        if not items:
            return
        self._inflight = items
        while True:
            try:
                self.spool.append([_to_spool(i) for i in items])
                break
            except SpoolError as exc:
                self.last_error = str(exc)
                log.error("cannot spool %d records, retrying: %s", len(items), exc)
                gevent.sleep(1.0)
        self._inflight = []
        self.spooled += len(items)

    # --- connection management ----------------------------------------------------------
    def _ensure_connected(self) -> bool:
        if self._conn is not None and not self._conn.closed:
            return True
        if time.monotonic() < self._next_attempt:
            return False
        try:
            self._conn = psycopg.connect(self.url, autocommit=True,
                                         connect_timeout=self.connect_timeout,
                                         application_name="switchd-cdr-writer")
        except psycopg.Error as exc:
            self._db_failed("connect", exc)
            return False
        if self._failures:
            log.info("CDR writer reconnected to PostgreSQL after %d failures", self._failures)
        self._failures = 0
        self.last_error = None
        return True

    def _db_failed(self, operation: str, exc: Exception) -> None:
        DB_ERRORS.labels(operation=operation).inc()
        self.last_error = f"{operation}: {type(exc).__name__}: {str(exc).strip()}"
        self._failures += 1
        # Jittered exponential backoff, forever (STYLE.md §9): 0.25 s doubling to the cap.
        delay = min(self.backoff_max, 0.25 * 2 ** min(self._failures - 1, 10))
        self._next_attempt = time.monotonic() + delay * random.uniform(0.5, 1.0)
        log.warning("CDR writer: PostgreSQL %s failed (%s); retry in %.1fs, spooling meanwhile",
                    operation, self.last_error, delay)
        self._close()

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass   # closing a connection that is already broken
            self._conn = None
