"""CDR writer: bounded in-memory queue → batched writes into PostgreSQL, durable spool.

The event greenlet only ever calls ``submit_*``: a ``put_nowait`` on a bounded queue, never
the network (STYLE.md §6). When the queue is full the record goes straight to the local
spool (an fsync'd append), so nothing is dropped. One writer greenlet drains the queue in
batches (up to ``batch_size`` records, whatever is queued), one transaction per batch:
COPY into staging tables (cdr_batch.stage), then, under the batch lock, one upsert per
kind (cdr_batch.apply).

Two connections work in turn so the writer's process and PostgreSQL run at the same time
(one core each): while batch N is applied on one (a greenlet waiting for the server), the
writer formats and COPYs batch N+1 on the other. Batch N+1 is applied only once batch N
has committed, so batches reach the tables in submission order, exactly as one at a time.

Any PostgreSQL outage sends the batch to the spool (after the batch before it, which is
applied or spooled first); the writer then reconnects with jittered
backoff (forever) and, once connected, replays the spool before writing anything newer.
Every write is idempotent by key (a call's and a leg's UUID, an event's (core_uuid,
event_seq), a decision's id), so a replay that repeats rows already committed changes
nothing.

Superseding rule for calls and legs (ON CONFLICT DO UPDATE ... WHERE): a stored row is
replaced only by a record carrying at least as much information, ranked by
(not reconstructed, has ended_at, has answered_at) for calls and (from the switch's CDR,
not provisional, has ended_at, has answered_at) for legs. So a real CDR replaces a
reconstructed one (built after a restart from ``show channels``), a final CDR replaces an
interim one, and neither is ever overwritten by a poorer record arriving late (e.g. from a
spool replay). Among records of equal rank the last write wins.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import fields
from typing import Any

import gevent
import psycopg
from gevent.event import Event
from gevent.queue import Empty, Full, Queue

from switchd.adapters.db import cdr_batch
from switchd.adapters.db import green
from switchd.adapters.db.cdr_batch import write_batch
from switchd.adapters.db.records import (KIND_OF, KINDS, CallRecord, EventRecord, LegRecord,
                                         SwitchCallRecord)
from switchd.adapters.db.spool import Spool, SpoolError
from switchd.metrics import CDR_QUEUE_DEPTH, CDRS_WRITTEN, DB_ERRORS

log = logging.getLogger(__name__)

__all__ = ["CdrWriter", "CallRecord", "EventRecord", "LegRecord", "SwitchCallRecord",
           "write_batch"]


_FIELDS = {kind: tuple(f.name for f in fields(cls)) for kind, cls in KINDS.items()}


def _to_spool(item: tuple[str, Any]) -> dict:
    kind, rec = item
    if kind == "decision":
        return {"kind": kind, "record": rec}
    return {"kind": kind, "record": {name: getattr(rec, name) for name in _FIELDS[kind]}}


def _kind(rec: Any) -> str:
    try:
        return KIND_OF[type(rec)]
    except KeyError:
        raise TypeError(f"CDR writer: not a record it stores: {type(rec).__name__}") from None


def _record_to_spool(rec: Any) -> dict:
    """_to_spool() of a record bare (the writer's queue holds records, see _submit)."""
    return _to_spool((_kind(rec), rec))


def _paired(records: list) -> list[tuple[str, Any]]:
    """(kind, record) pairs, as write_batch takes them (the rare path of a refused batch)."""
    return [(_kind(rec), rec) for rec in records]


def _from_spool(entry: dict) -> tuple[str, Any]:
    kind, rec = entry["kind"], entry["record"]
    return kind, (rec if kind == "decision" else KINDS[kind](**rec))


# Errors meaning "the database is not reachable now": spool and retry later. Anything else
# (DataError, IntegrityError...) means PostgreSQL refused the data itself.
_OUTAGE = (psycopg.OperationalError, psycopg.InterfaceError)


class CdrWriter:
    def __init__(self, url: str, batch_size: int = 16_000, flush_interval: float = 0.5,
                 queue_max: int = 100_000, spool: Spool | None = None, *,
                 connect_timeout: int = 5, backoff_max: float = 30.0, gather: float = 0.1):
        if spool is None:
            raise ValueError("CdrWriter needs a Spool: records must never be dropped")
        self.url = url
        # Records per batch at most (whatever is queued). A batch's own cost (round trips,
        # planning, the commit's WAL flush) is paid once per batch, while the next batch
        # is formatted: 16,000 records (8,000 CDRs) write ~10 % more CDRs per second
        # than 8,000 under a burst (docs/benchmarks.md), and at a daemon's usual pace a
        # batch is whatever the gather time collected, far fewer.
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        # Seconds the writer waits, once it holds a record, for more to join its batch
        # (cdr.gather_ms): a batch's own cost (statements, round trips, the commit) is
        # then shared by many records instead of the few queued at one instant. It wakes
        # at once when a full batch is queued (`_submit` sets `_batch_full` once the queue
        # holds `_full_at` records) or when stop() is called.
        self.gather = gather
        self._batch_full = Event()
        self._full_at = 0           # queue depth that completes the batch gathering; 0: none
        self.spool = spool
        self.connect_timeout = connect_timeout
        self.backoff_max = backoff_max
        self._queue: Queue = Queue(maxsize=queue_max)
        # Last resort when the queue is full AND the spool disk fails: memory, unbounded,
        # loudly logged. Losing a CDR is worse than growing. Records, like the queue's.
        self._overflow: list[Any] = []
        # Two connections used in turn (see the module docstring); `_conn` is the one the
        # next batch is staged on, `_other` the one the previous batch may be applying on.
        self._conn: psycopg.Connection | None = None
        self._other: psycopg.Connection | None = None
        self._greenlet: gevent.Greenlet | None = None
        self._stopping = False
        self._inflight: list[Any] = []                   # the batch in the writer's hands
        self._applying: gevent.Greenlet | None = None    # applying the previous batch
        self._applying_batch: list[Any] = []
        self._failures = 0
        self._next_attempt = 0.0
        self.last_error: str | None = None
        self.written = 0          # call rows (CDRs) committed by this writer
        self.spooled = 0          # records this writer sent to the spool
        self.rejected = 0         # records PostgreSQL refused as data (parked, see spool.reject)

    # --- producer side (event greenlet): never blocks, never drops -------------------------
    def submit_call(self, rec: CallRecord) -> None:
        self._submit(rec)

    def submit_leg(self, rec: LegRecord) -> None:
        self._submit(rec)

    def submit_event(self, rec: EventRecord) -> None:
        self._submit(rec)

    def submit_decision(self, row: dict) -> None:
        self._submit(row)

    def _submit(self, rec: Any) -> None:
        # The queue holds the record itself (its kind is its type, records.KIND_OF): a
        # record waiting in the queue costs no object beyond itself, and every object
        # held that long is one more for each full collection of the garbage collector
        # to walk.
        try:
            self._queue.put_nowait(rec)
            if self._full_at and self._queue.qsize() >= self._full_at:
                self._batch_full.set()
        except Full:
            # Overflow is durable too: an fsync'd local append, no network.
            try:
                self.spool.append([_record_to_spool(rec)])
                self.spooled += 1
            except SpoolError as exc:
                self.last_error = str(exc)
                log.error("CDR queue full and spool unwritable; holding record in memory: %s",
                          exc)
                self._overflow.append(rec)

    def depth(self) -> int:
        """Records waiting to be written (switchd_cdr_queue_depth, read at each scrape)."""
        return self._queue.qsize() + len(self._overflow)

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> "CdrWriter":
        # The gauge is read when scraped, not set on every submit (the event path's cost).
        CDR_QUEUE_DEPTH.set_function(self.depth)
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
        self._batch_full.set()      # a gathering writer writes what it holds now
        if self._greenlet is not None:
            self._greenlet.join(timeout if flush else 0)
            if not self._greenlet.dead:
                self._greenlet.kill(block=True, timeout=2)
            self._greenlet = None
        leftover = self._unapplied(timeout if flush else 0) + self._inflight + self._drain_all()
        self._inflight = []
        if leftover:
            self.spool.append([_record_to_spool(r) for r in leftover])
            self.spooled += len(leftover)
        CDR_QUEUE_DEPTH.set_function(lambda: 0)
        self._close()
        self.spool.close()

    def stats(self) -> dict[str, Any]:
        """For /readyz: ready when CDRs can be stored now or at least spooled durably."""
        db_ok = all(c is not None and not c.closed for c in (self._conn, self._other))
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
                self._settle()
                self._close()
                try:
                    self._spool_batch(self._inflight)
                except (TypeError, ValueError):
                    # Not even JSON-serialisable: unstorable anywhere; keep it in the log.
                    log.error("CDR writer: dropping unserialisable records: %r", self._inflight)
                    self._inflight = []
                gevent.sleep(self.flush_interval)
        self._settle()
        if self._conn is not None and self.spool.records:
            self._replay()   # SIGTERM: leave as little as possible in the spool

    def _step(self) -> bool:
        """One batch: write it, or spool it. True when shutdown should end the loop now."""
        batch = self._take_batch()
        connected = self._ensure_connected()
        if not batch or self.spool.records or not connected:
            # Idle, replaying or away: the previous batch finishes first. If it failed, the
            # connections were closed, so look again before writing.
            if not self._settle():
                connected = self._ensure_connected()
        if connected:
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

    def _take_batch(self) -> list[Any]:
        """The next batch: up to batch_size records, waiting up to flush_interval for the
        first; then up to `gather` seconds for more, unless the batch is full or the
        writer is stopping (a record waits at most `gather` in the writer's hands before
        its batch is written)."""
        batch, self._overflow = self._overflow[:self.batch_size], self._overflow[self.batch_size:]
        try:
            if not batch:
                batch.append(self._queue.get(timeout=self.flush_interval)
                             if not self._stopping else self._queue.get_nowait())
        except Empty:
            self._inflight = batch
            return batch
        self._inflight = batch      # held while gathering: stop() spools it if need be
        missing = self.batch_size - len(batch)
        if self.gather > 0 and not self._stopping and self._queue.qsize() < missing:
            self._batch_full.clear()
            self._full_at = missing
            try:
                self._batch_full.wait(self.gather)
            finally:
                self._full_at = 0
        try:
            while len(batch) < self.batch_size:
                batch.append(self._queue.get_nowait())
        except Empty:
            pass
        self._inflight = batch
        return batch

    def _drain_all(self) -> list[Any]:
        items, self._overflow = self._overflow, []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except Empty:
                return items

    def _write(self, batch: list[Any]) -> None:
        """Stage the batch while the previous one is applied; then apply it in a greenlet."""
        conn = self._conn
        try:
            with conn.cursor() as cur:
                staged = cdr_batch.stage_records(cur, batch, begin=True)
        except _OUTAGE as exc:
            self._settle()
            self._db_failed("write", exc)
            self._spool_batch(batch)
            return
        except psycopg.Error as exc:
            # Refused at COPY (a value its column cannot hold): by halves, in order.
            if not self._settle():
                self._spool_batch(batch)
                return
            try:
                conn.execute("ROLLBACK")
                self._write_alone(conn, _paired(batch), exc)
            except _OUTAGE as outage:
                self._db_failed("write", outage)
                self._spool_batch(batch)
                return
            self._inflight = []
            return
        if not self._settle():
            # The batch before it went to the spool: this one follows it there.
            self._spool_batch(batch)
            return
        self._applying_batch, self._inflight = batch, []
        self._applying = gevent.spawn(self._apply, conn, staged, batch)
        self._conn, self._other = self._other, conn

    def _apply(self, conn: psycopg.Connection, staged: cdr_batch.StagedBatch,
               batch: list[Any]) -> Exception | None:
        """The applying greenlet: the locked part and the commit. Returns what failed it
        (an outage, or a bug), for _settle; a batch refused as data is written by halves."""
        try:
            try:
                n = cdr_batch.apply(conn, staged, commit=True)
            except _OUTAGE:
                raise
            except psycopg.Error as exc:
                conn.execute("ROLLBACK")
                self._write_alone(conn, _paired(batch), exc)
                return None
        except Exception as exc:    # handed to the writer greenlet, which spools the batch
            return exc
        self._count(n)
        return None

    def _settle(self) -> bool:
        """Wait for the batch being applied. False when it failed: it is spooled (before
        anything newer) and the connections are closed."""
        if self._applying is None:
            return True
        self._applying.join()
        failure, self._applying = self._applying.value, None
        if failure is None:
            self._applying_batch = []
            return True
        if isinstance(failure, _OUTAGE):
            self._db_failed("write", failure)
        else:
            DB_ERRORS.labels(operation="writer").inc()
            log.error("CDR writer: unexpected error applying a batch; spooling it",
                      exc_info=failure)
            self._close()
        self._spool_batch(self._applying_batch)
        self._applying_batch = []
        return False

    def _unapplied(self, timeout: float) -> list[Any]:
        """At stop: the batch being applied, unless it commits within the timeout."""
        if self._applying is not None:
            self._applying.join(timeout)
            if not self._applying.dead:
                self._applying.kill(block=True, timeout=2)
            if self._applying.successful() and self._applying.value is None:
                self._applying_batch = []          # committed
            self._applying = None
        batch, self._applying_batch = self._applying_batch, []
        return batch

    def _commit(self, items: list[tuple[str, Any]]) -> None:
        """One transaction for the records (a spool replay); if PostgreSQL refuses the data
        itself, they are written by halves."""
        try:
            n = write_batch(self._conn, items)
        except _OUTAGE:
            raise
        except psycopg.Error as exc:
            self._write_alone(self._conn, items, exc)
            return
        self._count(n)

    def _write_alone(self, conn: psycopg.Connection, items: list[tuple[str, Any]],
                     refusal: psycopg.Error) -> None:
        """Find the records PostgreSQL refuses and park them, so one poison record never
        blocks the rest: the batch is written by halves, in order, and a refused half is
        halved again (a few transactions per poison record, not one per record)."""
        DB_ERRORS.labels(operation="reject").inc()
        log.error("CDR batch refused by PostgreSQL (%s); retrying by halves", refusal)
        self._write_halves(conn, items)

    def _write_halves(self, conn: psycopg.Connection, items: list[tuple[str, Any]]) -> None:
        half = len(items) // 2
        for part in (items[:half], items[half:]):
            if not part:
                continue
            try:
                self._count(write_batch(conn, part))
            except _OUTAGE:
                raise
            except psycopg.Error as exc:
                if len(part) > 1:
                    self._write_halves(conn, part)
                else:
                    self.spool.reject([_to_spool(part[0])],
                                      f"{type(exc).__name__}: {exc}".strip())
                    self.rejected += 1

    def _count(self, n: int) -> None:
        self.written += n
        CDRS_WRITTEN.inc(n)

    def _replay(self) -> bool:
        """Replay the spool oldest first; False (and backoff) when the database fails."""
        try:
            # In transactions of a batch's size, like the writer's own.
            result = self.spool.replay(lambda entries: self._commit(
                [_from_spool(e) for e in entries]), chunk=self.batch_size)
        except _OUTAGE as exc:
            self._db_failed("replay", exc)
            return False
        if result.records or result.skipped:
            log.info("spool replayed: %d records from %d files, %d torn lines skipped",
                     result.records, result.files, len(result.skipped))
        return True

    def _spool_batch(self, items: list[Any]) -> None:
        """Append records to the spool, retrying until the disk takes them (they stay in
        flight, so stop() can still spool them)."""
        if not items:
            return
        # Held until the spool has them: stop() spools what the writer still holds.
        held_as_applying = items is self._applying_batch
        if not held_as_applying:
            self._inflight = items
        while True:
            try:
                self.spool.append([_record_to_spool(r) for r in items])
                break
            except SpoolError as exc:
                self.last_error = str(exc)
                log.error("cannot spool %d records, retrying: %s", len(items), exc)
                gevent.sleep(1.0)
        if not held_as_applying:
            self._inflight = []
        self.spooled += len(items)

    # --- connection management ----------------------------------------------------------
    def _ensure_connected(self) -> bool:
        if all(c is not None and not c.closed for c in (self._conn, self._other)):
            return True
        self._settle()          # a batch applying on the one still open finishes first
        if time.monotonic() < self._next_attempt:
            return False
        self._close()
        try:
            self._conn, self._other = self._connect(), self._connect()
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

    def _connect(self) -> psycopg.Connection:
        return green.connect(self.url, autocommit=True, connect_timeout=self.connect_timeout,
                             application_name="switchd-cdr-writer")

    def _close(self) -> None:
        for conn in (self._conn, self._other):
            if conn is not None:
                try:
                    conn.close()
                except psycopg.Error:
                    pass   # closing a connection that is already broken
        self._conn = self._other = None
