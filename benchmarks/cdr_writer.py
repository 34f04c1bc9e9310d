"""CDRs persisted per second through the whole CDR writer, against one INSERT per CDR.

    python benchmarks/cdr_writer.py            (100k CDRs, about a minute)
    python benchmarks/cdr_writer.py --full     (1M CDRs)
    python benchmarks/cdr_writer.py --cdrs N
    python benchmarks/cdr_writer.py --small-only   (the one-call batches alone, ~15 s)

PostgreSQL: SWITCHD_TEST_DATABASE_URL if set (a scratch database is created and dropped),
else an embedded server in a temporary directory; the schema is every migration (calls,
call_legs and call_events partitioned by month). Measured, in one run, under gevent as in
the daemon:

- ``cdrs_per_s``: a CDR is what the daemon submits when an outbound call ends: its call
  row (CallRecord) and its carrier leg (LegRecord), rated, with distinct UUIDs, tenants
  and carriers. Timed from the first ``submit_*`` to the moment the writer has committed
  the last call row (``CdrWriter.written``), default settings (batches of up to 16,000
  records on two connections in turn: COPY into staging tables, then, under the lock,
  one statement per kind and the money recompute where it can change something);
  ``process_cpu_us_per_cdr``: this process's CPU (user + system) meanwhile, per CDR: the
  producer's submits and the writer's own work, steadier than a rate on a shared box;
- ``full_calls_per_s``: every record of such a call: the A-leg and the carrier leg, the
  call, 12 channel events and the routing decision (16 records per call);
- ``baseline_cdrs_per_s``: the naive controller: one autocommitted ``INSERT INTO calls``
  per CDR (the call row only, no leg, no upsert), same table, same run; half of them just
  before the writer's run and half just after (the box is shared: both sides see its load);
- ``replay_per_s``: CDRs (call row + leg) replayed from the spool by a fresh writer, as
  after a PostgreSQL outage: the spool files are written first (not timed), the time is
  from the writer's start to the spool being empty;
- ``small_batch_cpu_ms``: this process's CPU per batch when each batch holds one call's
  records (the routing decision, 12 events, both legs, the call), as the daemon writes
  at a low call rate: the writer with no gather, each call submitted once the one before
  is committed (the median of 1,000); ``insert_cpu_ms``: per autocommitted ``INSERT`` of
  a call row on the same kind of connection (gevent's hub, as the daemon's), the same
  run; ``small_batch_in_inserts``: their ratio, the batch's fixed cost in plain round
  trips.

The last stdout line is one JSON object.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from datetime import datetime, timedelta, timezone  # noqa: E402
from decimal import Decimal  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import psycopg  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _env import cpu_seconds, machine, scratch_database  # noqa: E402
from switchd.adapters.db import green  # noqa: E402
from switchd.adapters.db.cdr_batch import month_of  # noqa: E402
from switchd.adapters.db.cdr_writer import CdrWriter, _to_spool  # noqa: E402
from switchd.adapters.db.migrate import apply_migrations  # noqa: E402
from switchd.adapters.db.records import CallRecord, EventRecord, LegRecord  # noqa: E402
from switchd.adapters.db.spool import Spool  # noqa: E402

CARRIERS = ("budgetel", "globex", "primo")
TENANTS = ("acme", "bench1", "bench2", "bench3", "bench4")
EVENTS = ("CHANNEL_CREATE", "CHANNEL_PROGRESS", "CHANNEL_ANSWER", "CHANNEL_BRIDGE",
          "CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def call_records(n: int, tag: str, start: datetime, full: bool = False) -> list[tuple]:
    """n calls as the daemon would submit them; ``full``: with the A-leg, 12 events and
    the routing decision. Distinct UUIDs, calls spread over the last hours."""
    items = []
    seq = 0
    for i in range(n):
        a, b = f"{tag}-{i:09d}-a", f"{tag}-{i:09d}-b"
        t0 = start + timedelta(milliseconds=37 * i)
        answered, ended = t0 + timedelta(seconds=4), t0 + timedelta(seconds=4 + i % 300)
        billed = 60 + (i % 300 - 1) // 6 * 6 if i % 300 > 60 else 60
        carrier, tenant = CARRIERS[i % 3], TENANTS[i % 5]
        cost = (Decimal(i % 97) / 1000 + Decimal("0.0125")) * billed / 60
        cost = cost.quantize(Decimal("0.000001"))
        if full:
            items.append(("decision", {"id": uuid.uuid4(), "created_at": t0, "call_uuid": a,
                                       "tenant": tenant, "direction": "outbound",
                                       "destination": f"+4420794{i:07d}"[:13],
                                       "result": "routed", "reason": "lcr",
                                       "candidates": [{"carrier": carrier, "rate": "0.0125"}],
                                       "chosen": [carrier], "elapsed_us": 90}))
            for leg in (a, b):
                for name in EVENTS:
                    seq += 1
                    items.append(("event", EventRecord(core_uuid=tag, event_seq=seq, name=name,
                                                       at=t0, call_uuid=a, leg_uuid=leg)))
            items.append(("leg", LegRecord(leg_uuid=a, call_uuid=a, direction="inbound",
                                           started_at=t0, answered_at=answered, ended_at=ended,
                                           hangup_cause="NORMAL_CLEARING")))
        items.append(("leg", LegRecord(
            leg_uuid=b, call_uuid=a, direction="outbound", carrier=carrier,
            gateway=f"{carrier}-gw1", started_at=t0, answered_at=answered, ended_at=ended,
            hangup_cause="NORMAL_CLEARING", sip_status=200, billmsec=(ended - answered).seconds * 1000,
            billed_seconds=billed, rate_per_min=Decimal("0.0125") + Decimal(i % 97) / 1000,
            connect_fee=Decimal(0), increments="60/6", cost=cost, billsec=(ended - answered).seconds,
            progress_at=t0 + timedelta(seconds=1), pdd_ms=1000, disposition="answered")))
        items.append(("call", CallRecord(
            call_uuid=a, direction="outbound", tenant=tenant, caller="+15551230000",
            destination=f"+4420794{i:07d}"[:13], started_at=t0, answered_at=answered,
            ended_at=ended, hangup_cause="NORMAL_CLEARING", carrier=carrier,
            gateway=f"{carrier}-gw1", first_choice_carrier=carrier, attempts=1,
            billed_seconds=billed, cost=cost, pdd_ms=1000, disposition="answered")))
    return items


def submit(writer: CdrWriter, items: list[tuple]) -> None:
    by_kind = {"call": writer.submit_call, "leg": writer.submit_leg,
               "event": writer.submit_event, "decision": writer.submit_decision}
    for n, (kind, rec) in enumerate(items):
        by_kind[kind](rec)
        if n % 1000 == 999:
            gevent.sleep(0)      # the producer is the event greenlet: it yields too


def through_writer(url: str, spool_dir: Path, items: list[tuple], calls: int
                   ) -> tuple[float, float]:
    """Seconds from the first submit to the last call row committed, and the CPU seconds
    this process (the producer and the writer) spent meanwhile."""
    writer = CdrWriter(url, spool=Spool(spool_dir), queue_max=len(items) + 1).start()
    cpu = cpu_seconds(os.getpid())
    started = time.perf_counter()
    submit(writer, items)
    while writer.written < calls:
        gevent.sleep(0.005)
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(os.getpid()) - cpu
    writer.stop()
    assert writer.spooled == 0 and writer.rejected == 0, (writer.spooled, writer.rejected)
    return elapsed, cpu


def baseline(url: str, items: list[tuple]) -> float:
    """One autocommitted INSERT per CDR: the call row, nothing else."""
    cols = ["call_uuid", "direction", "tenant", "caller", "destination", "started_at",
            "answered_at", "ended_at", "hangup_cause", "carrier", "gateway",
            "first_choice_carrier", "attempts", "billed_seconds", "cost", "filed_month"]
    query = (f"INSERT INTO calls ({', '.join(cols)}) "
             f"VALUES ({', '.join(['%s'] * len(cols))})")
    rows = [tuple(getattr(rec, c) for c in cols[:-1]) + (month_of(rec.started_at),)
            for kind, rec in items if kind == "call"]
    with psycopg.connect(url, autocommit=True) as conn:
        # Its months' partitions exist, as the daemon makes them ahead of time (not timed:
        # near a month's start, "the last hours" are last month).
        conn.execute("SELECT switchd_ensure_month(m) FROM unnest(%s::date[]) AS m",
                     (sorted({row[-1] for row in rows}),))
        started = time.perf_counter()
        for row in rows:
            conn.execute(query, row)
        return time.perf_counter() - started


def replay(url: str, spool_dir: Path, items: list[tuple], calls: int) -> float:
    spool = Spool(spool_dir)
    for start in range(0, len(items), 2000):        # as a writer spools its batches
        spool.append([_to_spool(i) for i in items[start:start + 2000]])
    spool.close()
    writer = CdrWriter(url, spool=Spool(spool_dir))
    started = time.perf_counter()
    writer.start()
    while writer.spool.records or writer.written < calls:
        gevent.sleep(0.005)
    elapsed = time.perf_counter() - started
    writer.stop()
    return elapsed


SMALL_BATCHES = 1000


class _Committed(CdrWriter):
    """The writer, telling when a batch is committed (the benchmark waits without polling)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.committed = gevent.event.Event()

    def _count(self, n: int) -> None:
        super()._count(n)
        self.committed.set()


def small_batches(url: str, spool_dir: Path, start: datetime, n: int) -> dict:
    """CPU per one-call batch through the writer, and per plain INSERT, medians."""
    items = call_records(n, "s", start, full=True)
    per_call = len(items) // n
    writer = _Committed(url, spool=Spool(spool_dir), gather=0.0).start()
    batch_cpu = []
    for i in range(n):
        writer.committed.clear()
        cpu = time.process_time()
        submit(writer, items[i * per_call:(i + 1) * per_call])
        writer.committed.wait(10)
        batch_cpu.append(time.process_time() - cpu)
    writer.stop()
    assert writer.written == n and writer.spooled == 0, (writer.written, writer.spooled)
    query = ("INSERT INTO calls (call_uuid, direction, started_at, filed_month) "
             "VALUES (%s, 'outbound', %s, switchd_month(%s))")
    insert_cpu = []
    with green.connect(url, autocommit=True) as conn:
        for i in range(n):
            cpu = time.process_time()
            conn.execute(query, (f"si-{i}", start, start))
            insert_cpu.append(time.process_time() - cpu)
    batch, insert = statistics.median(batch_cpu), statistics.median(insert_cpu)
    return {"small_batches": n, "small_batch_records": per_call,
            "small_batch_cpu_ms": round(batch * 1e3, 3), "insert_cpu_ms": round(insert * 1e3, 3),
            "small_batch_in_inserts": round(batch / insert, 1)}


def count(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def small_only() -> dict:
    start = datetime.now(timezone.utc) - timedelta(hours=3)
    with tempfile.TemporaryDirectory(prefix="switchd-cdrw-") as tmp, \
            scratch_database(Path(tmp), "cdr_bench") as url:
        apply_migrations(url)
        result = {"benchmark": "cdr_writer", **small_batches(url, Path(tmp) / "spool-s", start,
                                                             SMALL_BATCHES)}
    result["machine"] = machine()
    print(json.dumps(result))
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="1M CDRs")
    ap.add_argument("--cdrs", type=int, default=None, help="CDRs through the writer")
    ap.add_argument("--small-only", action="store_true", help="the one-call batches alone")
    args = ap.parse_args(argv)
    if args.small_only:
        return small_only()
    n = args.cdrs or (1_000_000 if args.full else 100_000)
    n_full = max(n // 10, 1000)
    n_base = max(n // 20, 1000)
    n_replay = max(n // 2, 1000)
    start = datetime.now(timezone.utc) - timedelta(hours=3)
    result: dict = {"benchmark": "cdr_writer", "cdrs": n}
    with tempfile.TemporaryDirectory(prefix="switchd-cdrw-") as tmp, \
            scratch_database(Path(tmp), "cdr_bench") as url:
        tmp = Path(tmp)
        apply_migrations(url)
        log(f"generating {n:,} CDRs ...")
        items = call_records(n, "w", start)
        base_items = call_records(n_base, "b", start)
        half = len(base_items) // 2
        # The box is shared: the baseline runs half before and half after the writer, so
        # a change of load between phases weighs on both sides.
        t_base = [baseline(url, base_items[:half])]
        log("through the writer ...")
        t, cpu = through_writer(url, tmp / "spool-w", items, n)
        result["cdrs_per_s"] = round(n / t)
        result["process_cpu_us_per_cdr"] = round(cpu / n * 1e6, 1)
        log(f"  {n:,} CDRs in {t:.2f}s: {n / t:,.0f}/s "
            f"(this process: {cpu:.2f}s of CPU, {cpu / n * 1e6:.1f} µs per CDR)")
        del items
        t_base.append(baseline(url, base_items[half:]))
        result.update(baseline_cdrs=n_base, baseline_cdrs_per_s=round(n_base / sum(t_base)),
                      baseline_before_per_s=round(n_base / 2 / t_base[0]),
                      baseline_after_per_s=round(n_base / 2 / t_base[1]))
        log(f"baseline: {n_base:,} INSERTs in {sum(t_base):.2f}s: {n_base / sum(t_base):,.0f}/s "
            f"({result['baseline_before_per_s']:,}/s before the writer, "
            f"{result['baseline_after_per_s']:,}/s after)")
        del base_items

        items = call_records(n_full, "f", start, full=True)
        t, _ = through_writer(url, tmp / "spool-f", items, n_full)
        result.update(full_calls=n_full, full_records=len(items),
                      full_calls_per_s=round(n_full / t),
                      full_records_per_s=round(len(items) / t))
        log(f"  {n_full:,} full calls ({len(items):,} records) in {t:.2f}s: "
            f"{n_full / t:,.0f} calls/s")
        del items

        items = call_records(n_replay, "r", start)
        t = replay(url, tmp / "spool-r", items, n_replay)
        result.update(replay_cdrs=n_replay, replay_per_s=round(n_replay / t))
        log(f"replay: {n_replay:,} CDRs from the spool in {t:.2f}s: {n_replay / t:,.0f}/s")
        del items

        stored = count(url, "calls")
        expected = n + n_full + n_base + n_replay
        assert stored == expected, (stored, expected)
        assert count(url, "call_legs") == n + 2 * n_full + n_replay
        log(f"{SMALL_BATCHES:,} one-call batches ...")
        result.update(small_batches(url, tmp / "spool-s", start, SMALL_BATCHES))
        log(f"  {result['small_batch_cpu_ms']} ms of CPU a batch, "
            f"{result['insert_cpu_ms']} ms an INSERT: "
            f"{result['small_batch_in_inserts']} INSERTs' worth")
    result["ratio"] = round(result["cdrs_per_s"] / result["baseline_cdrs_per_s"], 1)
    result["machine"] = machine()
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
