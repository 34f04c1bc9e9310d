"""Storage at scale against a real PostgreSQL: monthly partitions (migration 020), one row
per call and leg whatever the order of their records across a month boundary, partitions
made on demand, the conversion of existing tables, and `switchd prune`."""
from __future__ import annotations

import itertools
import shutil
import threading
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import psycopg

from switchd.adapters.db import partitions
from switchd.adapters.db.cdr_batch import LOCK_KEY, write_batch
from switchd.adapters.db.migrate import apply_migrations, migrations_dir
from switchd.adapters.db.records import (CallRecord, EventRecord, LegRecord,
                                         SwitchCallRecord)

UTC = timezone.utc
# A call whose A-leg started in January and whose B-leg started in February.
A_START = datetime(2025, 1, 31, 23, 59, 59, 500000, tzinfo=UTC)
B_START = datetime(2025, 2, 1, 0, 0, 0, 700000, tzinfo=UTC)
END = datetime(2025, 2, 1, 0, 1, 3, tzinfo=UTC)


def _records(a: str, b: str) -> dict[str, list]:
    """Every record switchd can get for one call: the switch's CDR of each leg, ESL's legs
    and call (final or provisional)."""
    b_leg = dict(leg_uuid=b, call_uuid=a, direction="outbound", carrier="alpha",
                 gateway="gw", started_at=B_START, answered_at=B_START + timedelta(seconds=2),
                 ended_at=END, billmsec=60000, rate_per_min=Decimal("0.6"),
                 connect_fee=Decimal(0), increments="1/1")
    esl_call = dict(call_uuid=a, direction="outbound", tenant="acme", started_at=A_START,
                    answered_at=B_START + timedelta(seconds=2), ended_at=END,
                    hangup_cause="NORMAL_CLEARING", carrier="alpha", attempts=1)
    return {
        "switch_a": [("switch_call", SwitchCallRecord(
                         call_uuid=a, direction="outbound", from_a_leg=True, tenant="acme",
                         started_at=A_START, ended_at=END, hangup_cause="NORMAL_CLEARING")),
                     ("leg", LegRecord(leg_uuid=a, call_uuid=a, direction="inbound",
                                       started_at=A_START, ended_at=END, cdr_source="switch"))],
        "switch_b": [("switch_call", SwitchCallRecord(
                         call_uuid=a, direction="outbound", from_a_leg=False,
                         started_at=B_START, ended_at=END, hangup_cause="NORMAL_CLEARING")),
                     ("leg", LegRecord(**b_leg, billed_seconds=60, cost=Decimal("0.600000"),
                                       billsec=60, cdr_source="switch"))],
        "esl": [("leg", LegRecord(**b_leg, billed_seconds=61, cost=Decimal("0.610000"))),
                ("call", CallRecord(**esl_call, billed_seconds=61, cost=Decimal("0.610000")))],
        "esl_provisional": [
            ("leg", LegRecord(**{**b_leg, "ended_at": B_START + timedelta(seconds=30)},
                              billed_seconds=28, cost=Decimal("0.280000"), provisional=True)),
            ("call", CallRecord(**{**esl_call, "ended_at": B_START + timedelta(seconds=30)},
                                billed_seconds=28, cost=Decimal("0.280000"),
                                reconstructed=True))],
    }


def _rows(conn, a):
    calls = conn.execute("SELECT filed_month, cost, cdr_source, started_at, hangup_cause "
                         "FROM calls WHERE call_uuid = %s", (a,)).fetchall()
    legs = conn.execute("SELECT leg_uuid, filed_month, cost, cdr_source FROM call_legs "
                        "WHERE call_uuid = %s ORDER BY leg_uuid", (a,)).fetchall()
    return calls, legs


def test_any_order_across_a_month_boundary_gives_one_row_per_call_and_leg(migrated_pg_url):
    """The four sources in every order, each delivered twice (retries, spool replays), in
    separate batches or all in one: one call row, filed once, with the switch's money."""
    with psycopg.connect(migrated_pg_url, autocommit=True) as conn:
        for order in itertools.permutations(["switch_a", "switch_b", "esl", "esl_provisional"]):
            for one_batch in (False, True):
                a, b = str(uuid.uuid4()), str(uuid.uuid4())
                recs = _records(a, b)
                steps = [recs[s] for s in order + order]
                if one_batch:
                    write_batch(conn, [item for step in steps for item in step])
                else:
                    for step in steps:
                        write_batch(conn, step)
                calls, legs = _rows(conn, a)
                assert len(calls) == 1 and len(legs) == 2, (order, one_batch, calls, legs)
                month, cost, source, started, cause = calls[0]
                assert (cost, source, cause) == (Decimal("0.600000"), "switch",
                                                 "NORMAL_CLEARING"), order
                assert started == A_START, order         # the A-leg's CDR is the authority
                # filed under the month of the first record applied (in one batch ESL's
                # call goes first: kinds apply in a fixed order); the legs with their call
                first = "esl" if one_batch else order[0]
                assert month == (date(2025, 2, 1) if first == "switch_b"
                                 else date(2025, 1, 1)), order
                assert {l[1] for l in legs} == {month}, order


def test_the_first_record_decides_the_month_and_the_rest_follow(migrated_pg_url):
    with psycopg.connect(migrated_pg_url, autocommit=True) as conn:
        a, b = str(uuid.uuid4()), str(uuid.uuid4())
        recs = _records(a, b)
        write_batch(conn, recs["switch_b"])          # February: the B-leg started then
        write_batch(conn, recs["switch_a"])          # January start, filed in February
        write_batch(conn, recs["esl"])
        calls, legs = _rows(conn, a)
        assert calls[0][0] == date(2025, 2, 1) and calls[0][3] == A_START
        assert [l[1] for l in legs] == [date(2025, 2, 1)] * 2
        a, b = str(uuid.uuid4()), str(uuid.uuid4())
        recs = _records(a, b)
        write_batch(conn, recs["esl"][1:])           # ESL's call first: January
        write_batch(conn, recs["switch_b"])
        calls, legs = _rows(conn, a)
        assert calls[0][0] == date(2025, 1, 1) and [l[1] for l in legs] == [date(2025, 1, 1)]


def test_concurrent_writers_of_one_new_call_file_it_once(migrated_pg_url):
    """Two connections write the same new call at once, one from the B-leg's CDR
    (February), one from ESL (January): the advisory lock makes look-up-then-insert
    atomic, so there is one row whichever wins."""
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    recs = _records(a, b)
    errors = []
    with psycopg.connect(migrated_pg_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))

        def write(items):
            try:
                with psycopg.connect(migrated_pg_url, autocommit=True) as conn:
                    write_batch(conn, items)
            except Exception as exc:     # reported below
                errors.append(exc)
        threads = [threading.Thread(target=write, args=(recs[k],)) for k in ("switch_b", "esl")]
        for t in threads:
            t.start()
        # both are waiting for the lock (synchronised on PostgreSQL's own view)
        for _ in range(200):
            waiting = holder.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ).fetchone()[0]
            if waiting == 2:
                break
            threading.Event().wait(0.05)
        assert waiting == 2
        holder.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
        for t in threads:
            t.join(20)
    assert not errors
    with psycopg.connect(migrated_pg_url) as conn:
        calls, legs = _rows(conn, a)
    assert len(calls) == 1 and len(legs) == 1 and legs[0][3] == "switch"


def test_old_records_create_their_month_on_demand_and_events_replay_once(migrated_pg_url):
    old = datetime(2019, 6, 15, 12, tzinfo=UTC)
    event = EventRecord(core_uuid="core", event_seq=7, name="CHANNEL_ANSWER", at=old,
                        call_uuid="c-old", leg_uuid="c-old")
    with psycopg.connect(migrated_pg_url, autocommit=True) as conn:
        assert "calls_2019_06" not in {p.name for p in partitions.partitions(conn)}
        for _ in range(2):                                   # a replay changes nothing
            write_batch(conn, [("call", CallRecord(call_uuid="c-old", direction="inbound",
                                                   started_at=old, ended_at=old)),
                               ("event", event), ("event", event)])
        names = {p.name for p in partitions.partitions(conn)}
        assert {"calls_2019_06", "call_legs_2019_06", "call_events_2019_06"} <= names
        assert conn.execute("SELECT count(*), min(filed_month) FROM calls_2019_06").fetchone() \
            == (1, date(2019, 6, 1))
        assert conn.execute("SELECT count(*), max(data::text) FROM call_events_2019_06"
                            ).fetchone() == (1, None)


def test_ensure_ahead_creates_this_and_next_month(migrated_pg_url):
    with psycopg.connect(migrated_pg_url, autocommit=True) as conn:
        months = partitions.ensure_ahead(conn, datetime(2031, 12, 20, tzinfo=UTC))
        assert months == [date(2031, 12, 1), date(2032, 1, 1)]
        names = {p.name for p in partitions.partitions(conn)}
    assert {"calls_2031_12", "call_legs_2032_01", "call_events_2032_01"} <= names


def test_migration_converts_existing_rows(pg_url, tmp_path):
    """A database at 018 with calls, legs and events: 020 keeps every row, files each call
    under its start month and each leg with its call."""
    before = tmp_path / "sql"
    before.mkdir()
    for path in migrations_dir().glob("*.sql"):
        if path.name < "020":
            shutil.copy(path, before / path.name)
    apply_migrations(pg_url, before)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("""INSERT INTO calls (call_uuid, direction, started_at, ended_at, cost)
                        VALUES ('c1', 'outbound', '2025-01-31 23:59:59+00',
                                '2025-02-01 00:01:00+00', 1.5),
                               ('c2', 'inbound', NULL, NULL, 0)""")
        conn.execute("""INSERT INTO call_legs (leg_uuid, call_uuid, direction, started_at, cost)
                        VALUES ('l1', 'c1', 'outbound', '2025-02-01 00:00:01+00', 1.5)""")
        conn.execute("""INSERT INTO call_events (core_uuid, event_seq, call_uuid, leg_uuid,
                        name, at, data) VALUES ('core', 1, 'c1', 'l1', 'CHANNEL_CREATE',
                        '2025-01-31 23:59:59+00', '{"cause": "x"}')""")
    later = sorted(path.name[:3] for path in migrations_dir().glob("*.sql") if path.name >= "020")
    assert apply_migrations(pg_url) == later and later[0] == "020"
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT call_uuid, tableoid::regclass::text, cost FROM calls "
                            "ORDER BY 1").fetchall()[0] == ("c1", "calls_2025_01",
                                                            Decimal("1.500000"))
        assert conn.execute("SELECT count(*) FROM calls").fetchone()[0] == 2
        assert conn.execute("SELECT tableoid::regclass::text FROM call_legs").fetchone()[0] \
            == "call_legs_2025_01"
        assert conn.execute("SELECT data FROM call_events").fetchone()[0] == {"cause": "x"}
        assert conn.execute("SELECT to_regclass('calls_v1')").fetchone()[0] is None


# --- prune -------------------------------------------------------------------------------------
def _seed(conn, months_back: list[int], now: datetime):
    """One call (A-leg + carrier leg), two events and a routing decision per age."""
    items = []
    for i, days in enumerate(months_back):
        at = now - timedelta(days=days)
        items += [("call", CallRecord(call_uuid=f"c{i}", direction="outbound", started_at=at,
                                      ended_at=at + timedelta(minutes=1))),
                  ("leg", LegRecord(leg_uuid=f"l{i}", call_uuid=f"c{i}", direction="outbound",
                                    carrier="alpha", started_at=at, ended_at=at)),
                  ("event", EventRecord(core_uuid="core", event_seq=2 * i, name="CHANNEL_CREATE",
                                        at=at, leg_uuid=f"l{i}", call_uuid=f"c{i}")),
                  ("event", EventRecord(core_uuid="core", event_seq=2 * i + 1,
                                        name="CHANNEL_HANGUP_COMPLETE", at=at,
                                        leg_uuid=f"l{i}", call_uuid=f"c{i}")),
                  ("decision", {"id": uuid.uuid4(), "created_at": at, "direction": "outbound",
                                "result": "routed", "reason": "lcr"})]
    write_batch(conn, items)


def _counts(conn):
    return tuple(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                 for t in ("calls", "call_legs", "call_events", "routing_decisions"))


def test_prune_drops_whole_months_and_deletes_the_straddling_rows(migrated_pg_url):
    now = datetime.now(UTC)
    ages = [400, 200, 120, 91, 89, 30, 0]
    cutoff = now - timedelta(days=90)
    with psycopg.connect(migrated_pg_url, autocommit=True) as conn:
        _seed(conn, ages, now)
        assert _counts(conn) == (7, 7, 14, 7)
        steps = partitions.plan(conn, cutoff)
        assert _counts(conn) == (7, 7, 14, 7)                # planning changes nothing
        assert sum(s.rows for s in steps) == 4 * 5           # 1 call, 1 leg, 2 events, 1 decision
        dropped = {s.target for s in steps if s.action == "drop"}
        for days in (400, 200):                              # their months ended long ago
            at = now - timedelta(days=days)
            assert {f"{t}_{at:%Y_%m}" for t in ("calls", "call_legs", "call_events")} <= dropped
        assert all(p.end <= cutoff for p in partitions.partitions(conn) if p.name in dropped)
        seen = []
        removed = partitions.execute(conn, steps, cutoff, chunk=1,
                                     progress=lambda s, n, done: seen.append((s.target, n, done)))
        assert removed == 20 and seen and all(done for _, _, done in seen if _ in dropped)
        assert _counts(conn) == (3, 3, 6, 3)
        assert not dropped & {p.name for p in partitions.partitions(conn)}
        assert partitions.plan(conn, cutoff) == []
        left = {r[0] for r in conn.execute("SELECT call_uuid FROM calls").fetchall()}
        assert left == {"c4", "c5", "c6"}


def test_prune_cli_dry_run_only_and_bad_age(migrated_pg_url, monkeypatch, capsys):
    from switchd.cli import main
    now = datetime.now(UTC)
    with psycopg.connect(migrated_pg_url, autocommit=True) as conn:
        _seed(conn, [100, 10], now)
    monkeypatch.setenv("SWITCHD_DATABASE_URL", migrated_pg_url)
    assert main(["prune", "--older-than", "90d", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would remove cdrs, events, decisions" in out and "5 rows would be removed" in out
    with psycopg.connect(migrated_pg_url) as conn:
        assert _counts(conn) == (2, 2, 4, 2)
    assert main(["prune", "--older-than", "90d", "--only", "events,decisions"]) == 0
    assert "3 rows removed" in capsys.readouterr().out
    with psycopg.connect(migrated_pg_url) as conn:
        assert _counts(conn) == (2, 2, 2, 1)
    assert main(["prune", "--older-than", "12w", "--only", "cdrs"]) == 0
    with psycopg.connect(migrated_pg_url) as conn:
        assert _counts(conn) == (1, 1, 2, 1)
    assert main(["prune", "--older-than", "90 days"]) == 2
    assert "--older-than '90 days'" in capsys.readouterr().err
    assert main(["prune", "--older-than", "90d", "--only", "calls"]) == 2
    assert "choose from cdrs, events, decisions" in capsys.readouterr().err


def test_a_direct_insert_without_filed_month_is_filed_this_month(migrated_pg_url):
    """SQL written by hand (scripts, other tools) need not know the partition key."""
    with psycopg.connect(migrated_pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO calls (call_uuid, direction, started_at) "
                     "VALUES ('hand', 'inbound', '2020-01-01 00:00:00+00')")
        conn.execute("INSERT INTO call_legs (leg_uuid, call_uuid, direction) "
                     "VALUES ('hand', 'hand', 'inbound')")
        this = conn.execute("SELECT switchd_month(now())").fetchone()[0]
        assert conn.execute("SELECT filed_month FROM calls WHERE call_uuid = 'hand'"
                            ).fetchone()[0] == this
        assert conn.execute("SELECT filed_month FROM call_legs WHERE leg_uuid = 'hand'"
                            ).fetchone()[0] == this


def _store_a_month(conn, items: list, table: str) -> None:
    """Write a month of records in the writer's batches, then let the planner see them."""
    for start in range(0, len(items), 8000):
        write_batch(conn, items[start:start + 8000])
    conn.execute(f"VACUUM ANALYZE {table}")


def test_legs_of_a_period_are_read_through_the_ended_at_index(migrated_pg_url):
    """`switchd rerate --carrier` and the carrier report select legs by when they ended:
    over one hour of a month of legs, PostgreSQL reads that hour's pages through the BRIN
    index on ended_at (migration 024), not the month, and finds exactly that hour's legs."""
    from psycopg import sql

    from switchd.accounting import reports
    month = datetime(2025, 3, 1, tzinfo=UTC)
    items = []
    for i in range(20_000):                  # a month of legs, stored as their calls end
        ended = month + timedelta(minutes=2 * i)
        carrier = ("alpha", "beta", "gamma")[i % 3]
        items += [("leg", LegRecord(leg_uuid=f"bl-{i}", call_uuid=f"bc-{i}",
                                    direction="outbound", carrier=carrier, gateway="gw",
                                    started_at=ended - timedelta(seconds=90),
                                    answered_at=ended - timedelta(seconds=80), ended_at=ended,
                                    billed_seconds=80, cost=Decimal("0.080000"))),
                  ("call", CallRecord(call_uuid=f"bc-{i}", direction="outbound", tenant="acme",
                                      started_at=ended - timedelta(seconds=90), ended_at=ended,
                                      carrier=carrier, attempts=1))]
    since = month + timedelta(days=12)
    until = since + timedelta(hours=1)
    with psycopg.connect(migrated_pg_url, autocommit=True) as conn:
        _store_a_month(conn, items, "call_legs")
        rerate = sql.SQL(reports._PRICED_LEGS).format(
            key=sql.SQL(reports._LEG_KEYS["carrier"]), anchor=sql.Identifier("l"),
            tenant=sql.SQL(""), carrier=sql.SQL("AND l.carrier = %(carrier)s"))
        legs_report = sql.SQL(reports._LEGS).format(join=sql.SQL(""), tenant=sql.SQL(""))
        # the hour's 30 legs: alpha's 10 to rerate; one report row per carrier, of 10 legs
        for query, found in ((rerate, [10]), (legs_report, [10, 10, 10])):
            params = {"since": since, "until": until, "carrier": "alpha"}
            plan = "\n".join(r[0] for r in conn.execute(
                sql.SQL("EXPLAIN ANALYZE ") + query, params).fetchall())
            assert "Seq Scan on call_legs_2025_03" not in plan, plan     # the month
            assert "Bitmap Index Scan on call_legs_2025_03_ended_at_idx" in plan, plan
            rows = conn.execute(query, params).fetchall()
            assert ([len(rows)] if query is rerate else [r[5] for r in rows]) == found


def test_calls_of_a_period_are_read_through_the_ended_at_index(migrated_pg_url):
    """The tenant and day reports and the spend watch select calls by when they ended: over
    one hour of a month of calls, PostgreSQL reads that hour's pages through the BRIN index
    on calls.ended_at (migration 025), not the month, and finds exactly that hour's calls."""
    from psycopg import sql

    from switchd.accounting import reports, spend_watch
    month = datetime(2025, 4, 1, tzinfo=UTC)
    items = []
    for i in range(20_000):                  # a month of calls, stored as they end
        ended = month + timedelta(minutes=2 * i)
        items.append(("call", CallRecord(call_uuid=f"pc-{i}", direction="outbound",
                                         tenant=("acme", "globex")[i % 2],
                                         started_at=ended - timedelta(seconds=90),
                                         answered_at=ended - timedelta(seconds=80),
                                         ended_at=ended, carrier="alpha", attempts=1,
                                         billed_seconds=80, cost=Decimal("0.080000"))))
    since = month + timedelta(days=12)
    until = since + timedelta(hours=1)
    with psycopg.connect(migrated_pg_url, autocommit=True) as conn:
        _store_a_month(conn, items, "calls")
        by_tenant = sql.SQL(reports._CALLS).format(key=sql.SQL(reports._CALL_KEYS["tenant"]),
                                                   tenant=sql.SQL(""))
        params = {"since": since, "until": until, "hour": since, "now": until,
                  "month": month, "next_month": month + timedelta(days=30)}
        # the hour's 30 calls: 15 a tenant, in the report and in the spend watch's sum
        for query, counted in ((by_tenant, lambda rows: sorted(r[5] for r in rows)),
                               (sql.SQL(spend_watch._NOW),
                                lambda rows: sorted(round(r[1] / Decimal("0.08")) for r in rows))):
            plan = "\n".join(r[0] for r in conn.execute(
                sql.SQL("EXPLAIN ANALYZE ") + query, params).fetchall())
            assert "Seq Scan on calls_2025_04" not in plan, plan        # the month
            assert "Bitmap Index Scan on calls_2025_04_ended_at_idx" in plan, plan
            assert counted(conn.execute(query, params).fetchall()) == [15, 15]
