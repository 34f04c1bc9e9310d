"""The CDR writer's fast paths keep its rules, against a real PostgreSQL: the money
recompute is skipped only for new calls whose record already says what their new legs say
(cdr_batch.money_settled), and batches staged on the second connection are applied in
submission order."""
from __future__ import annotations

import itertools
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import gevent
import psycopg
import pytest

from switchd.adapters.db import cdr_batch
from switchd.adapters.db.cdr_batch import money_settled, write_batch
from switchd.adapters.db.cdr_writer import CallRecord, CdrWriter, LegRecord
from switchd.adapters.db.spool import Spool

T0 = datetime(2025, 3, 10, 12, 0, tzinfo=timezone.utc)


def a_call(uuid: str, **kw) -> CallRecord:
    base = dict(call_uuid=uuid, direction="outbound", tenant="acme", started_at=T0,
                answered_at=T0 + timedelta(seconds=3), ended_at=T0 + timedelta(seconds=63),
                hangup_cause="NORMAL_CLEARING", carrier="alpha", gateway="alpha-gw",
                first_choice_carrier="alpha", attempts=1, billed_seconds=60,
                cost=Decimal("0.012500"))
    base.update(kw)
    return CallRecord(**base)


def a_leg(uuid: str, n: int = 0, **kw) -> LegRecord:
    base = dict(leg_uuid=f"{uuid}-b{n}", call_uuid=uuid, direction="outbound",
                carrier="alpha", gateway="alpha-gw", started_at=T0 + timedelta(seconds=1),
                answered_at=T0 + timedelta(seconds=3), ended_at=T0 + timedelta(seconds=63),
                billmsec=60000, billed_seconds=60, rate_per_min=Decimal("0.0125"),
                connect_fee=Decimal(0), increments="60/60", cost=Decimal("0.012500"))
    base.update(kw)
    return LegRecord(**base)


# --- the pure check ------------------------------------------------------------------------
def test_money_settled_when_the_record_says_what_its_legs_say():
    assert money_settled(a_call("c"), [a_leg("c")])
    assert money_settled(a_call("c"), [])                              # no legs: nothing to do
    # an A-leg (no carrier, not rated) beside the carrier leg
    assert money_settled(a_call("c"), [a_leg("c"), a_leg("c", 1, carrier=None, gateway=None,
                                                         cost=Decimal(0))])


@pytest.mark.parametrize("call_kw, leg_kw", [
    ({"cost": Decimal("0.0126")}, {}),                                 # cost differs
    ({"billed_seconds": 66}, {}),
    ({"carrier": "beta"}, {}),                                         # the leg's carrier wins
    ({"gateway": None}, {}),
    ({"first_choice_carrier": None}, {}),                              # filled from the legs
    ({"attempts": 0}, {}),                                             # GREATEST with the legs
    ({"answered_at": T0 + timedelta(seconds=4)}, {}),                  # first answer wins
    ({"answered_at": None}, {}),
    ({}, {"unrated": True, "cost": None}),
    ({}, {"provisional": True}),
    ({}, {"cdr_source": "switch"}),                                    # the call becomes 'switch'
    ({}, {"answered_at": datetime(2025, 3, 10, 12, 0, 3)}),            # naive: not followed
    # each amount is stored rounded to 6 places: 2 x 0.0000005 -> 0.000002, not 0.000001
    ({"cost": Decimal("0.000001")}, {"cost": Decimal("0.0000005")}),
])
def test_money_settled_refuses_what_the_recompute_would_change(call_kw, leg_kw):
    legs = [a_leg("c", 0, **leg_kw)]
    if call_kw.get("cost") == Decimal("0.000001"):
        legs.append(a_leg("c", 1, **leg_kw))
    assert not money_settled(a_call("c", **call_kw), legs)


def test_two_carriers_are_left_to_sql():
    legs = [a_leg("c", 0, carrier="beta", answered_at=None, cost=Decimal(0),
                  billed_seconds=0), a_leg("c", 1)]
    assert not money_settled(a_call("c", attempts=2), legs)


# --- against the database --------------------------------------------------------------------
def _cases():
    """Calls with their legs, agreeing or not in every way the recompute looks at."""
    call_variants = [{}, {"cost": Decimal("0.5")}, {"carrier": None}, {"attempts": 3},
                     {"answered_at": None}, {"first_choice_carrier": None},
                     {"cost": Decimal("0.0125004")}]
    leg_variants = [[{}], [{}, {"carrier": None, "gateway": None, "cost": Decimal(0)}],
                    [{"cost": Decimal("0.0125004")}], [{"provisional": True}],
                    [{"cdr_source": "switch"}], [{"unrated": True, "cost": None}],
                    [{"carrier": "beta", "answered_at": None, "cost": Decimal(0),
                      "billed_seconds": 0}, {}], []]
    for i, (ck, lks) in enumerate(itertools.product(call_variants, leg_variants)):
        uuid = f"case-{i}"
        yield a_call(uuid, **ck), [a_leg(uuid, n, **lk) for n, lk in enumerate(lks)]


def test_every_skipped_recompute_would_have_changed_nothing(migrated_pg_url):
    """Whatever the batch skipped, running the recompute afterwards changes no row: the
    call's money is its legs' whether or not the batch recomputed it."""
    cases = list(_cases())
    skipped = sum(money_settled(c, legs) for c, legs in cases)
    assert 0 < skipped < len(cases)
    with psycopg.connect(migrated_pg_url, autocommit=True) as conn:
        write_batch(conn, [item for c, legs in cases
                           for item in [("call", c)] + [("leg", leg) for leg in legs]])
        with conn.transaction():
            cur = conn.execute(cdr_batch.RECOMPUTE_CALLS,
                               {"lo": cdr_batch._FAR_PAST, "hi": cdr_batch._FAR_FUTURE,
                                "uuids": [c.call_uuid for c, _ in cases]})
            assert cur.rowcount == 0


def test_a_skip_needs_the_legs_to_be_new(migrated_pg_url):
    """A call whose leg was stored before its record arrives is recomputed from that leg,
    even if the record agrees with the legs of its own batch."""
    with psycopg.connect(migrated_pg_url, autocommit=True) as conn:
        write_batch(conn, [("leg", a_leg("late", 1, cost=Decimal("0.100000")))])
        write_batch(conn, [("call", a_call("late")), ("leg", a_leg("late"))])
        # and a call whose leg's key was stored: the stored leg counts, not the record
        write_batch(conn, [("leg", a_leg("again", cost=Decimal("0.200000"),
                                         cdr_source="switch"))])
        write_batch(conn, [("call", a_call("again")), ("leg", a_leg("again"))])
        rows = dict(conn.execute("SELECT call_uuid, cost FROM calls").fetchall())
    assert rows == {"late": Decimal("0.112500"), "again": Decimal("0.200000")}


def test_batches_are_applied_in_submission_order(migrated_pg_url, tmp_path):
    """Records of equal rank: the last one submitted wins, though each batch is staged
    while the one before it is still being applied."""
    writer = CdrWriter(migrated_pg_url, batch_size=2, flush_interval=0.05,
                       spool=Spool.in_data_dir(tmp_path))
    for i in range(40):                     # queued first: batches of 2, in this order
        writer.submit_call(a_call("same", hangup_cause=f"CAUSE_{i}"))
        writer.submit_call(a_call(f"filler-{i}"))
    writer.start()
    writer.stop()
    assert writer.written == 80 and writer.spooled == 0
    with psycopg.connect(migrated_pg_url) as conn:
        cause = conn.execute("SELECT hangup_cause FROM calls WHERE call_uuid = 'same'"
                             ).fetchone()[0]
    assert cause == "CAUSE_39"


def test_stop_mid_pipeline_leaves_every_record_stored_or_spooled(migrated_pg_url, tmp_path):
    writer = CdrWriter(migrated_pg_url, batch_size=50, flush_interval=0.05,
                       spool=Spool.in_data_dir(tmp_path)).start()
    for i in range(1000):
        writer.submit_call(replace(a_call(f"s-{i}"), tenant=f"t{i % 3}"))
    writer.stop(timeout=0.05)               # may cut it short: what is not stored is spooled
    with psycopg.connect(migrated_pg_url) as conn:
        stored = conn.execute("SELECT count(*) FROM calls").fetchone()[0]
    assert stored + writer.spool.records >= 1000 and stored <= 1000
    replayer = CdrWriter(migrated_pg_url, flush_interval=0.05,
                         spool=Spool.in_data_dir(tmp_path)).start()
    deadline = time.monotonic() + 10
    while replayer.spool.records and time.monotonic() < deadline:
        gevent.sleep(0.05)
    replayer.stop()
    with psycopg.connect(migrated_pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM calls").fetchone()[0] == 1000


def test_poison_records_are_found_by_halves(migrated_pg_url, tmp_path, monkeypatch):
    """Two bad records among 200: both parked, the 198 others stored, in far fewer
    transactions than one per record."""
    from switchd.adapters.db import cdr_writer
    transactions = []

    def counted(conn, items):                 # the real write, counted
        transactions.append(len(items))
        return write_batch(conn, items)

    monkeypatch.setattr(cdr_writer, "write_batch", counted)
    writer = CdrWriter(migrated_pg_url, batch_size=200, flush_interval=0.05,
                       spool=Spool.in_data_dir(tmp_path))
    for i in range(200):
        writer.submit_call(a_call(f"p-{i}", direction=None if i in (17, 150) else "outbound"))
    writer.start()
    writer.stop()
    with psycopg.connect(migrated_pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM calls").fetchone()[0] == 198
    assert writer.rejected == 2 and writer.written == 198
    assert 4 <= len(transactions) < 40      # one per record would be 200
    assert sorted(transactions)[:2] == [1, 1]   # each poison record alone, at the end


def test_month_look_up_walks_the_keys_index_whatever_the_statistics(migrated_pg_url):
    """The first round's look-up reaches stored rows through the keys' index, also in the
    plan PostgreSQL keeps for the prepared statement, on a month that filled up since it
    was last analysed (an array of keys read as a filter would compare every row of the
    month with every key)."""
    stored = [f"plan-{i}" for i in range(3000)]
    with psycopg.connect(migrated_pg_url, autocommit=True) as conn:
        write_batch(conn, [item for u in stored
                           for item in (("call", a_call(u)), ("leg", a_leg(u)))])
        batch = [item for u in stored[:300] + [f"plan-new-{i}" for i in range(300)]
                 for item in (("call", a_call(u)), ("leg", a_leg(u)))]
        with conn.transaction():
            with conn.cursor() as cur:
                staged = cdr_batch.stage(cur, batch)
            conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            for name in ("_FIRST_CALLS", "_FIRST_LEGS"):
                sql = getattr(cdr_batch, name).replace("%(lo)s", "$1::date") \
                    .replace("%(hi)s", "$2::date")
                conn.execute(f"PREPARE look_up AS {sql}")
                lo, hi = staged.window["lo"], staged.window["hi"]
                plan = "\n".join(r[0] for r in conn.execute(
                    f"EXPLAIN EXECUTE look_up('{lo}', '{hi}')").fetchall())
                conn.execute("DEALLOCATE look_up")
                assert "Seq Scan on call" not in plan, plan
                assert "_uuid = ANY" not in "\n".join(
                    line for line in plan.splitlines() if "Filter:" in line), plan
                assert "uuid = ANY" in plan, plan
            raise psycopg.Rollback()


@pytest.mark.parametrize("alpha_first", [True, False])
@pytest.mark.parametrize("source", ["esl", "switch"])
def test_failover_legs_stamped_in_the_same_tick_keep_their_order(migrated_pg_url, source,
                                                                 alpha_first):
    """FreeSWITCH stamps a channel's times from its timer thread's clock: on a loaded switch
    a carrier's instant 503 and the next carrier's leg can carry the same start time. The
    call's carrier is still the later attempt (the one that ended later) and its first
    choice the earlier one, whatever order the legs are stored in."""
    start = T0 + timedelta(seconds=1)
    alpha = a_leg("tick", 0, carrier="alpha", gateway="gw_a", started_at=start,
                  answered_at=None, ended_at=start, billmsec=0, billed_seconds=0,
                  cost=Decimal(0), cdr_source=source)
    bravo = a_leg("tick", 1, carrier="bravo", gateway="gw_b", started_at=start,
                  answered_at=None, ended_at=start + timedelta(seconds=3), billmsec=0,
                  billed_seconds=0, cost=Decimal(0), cdr_source=source)
    call = a_call("tick", carrier=None, gateway=None, first_choice_carrier=None,
                  answered_at=None, attempts=2, billed_seconds=0, cost=Decimal(0))
    legs = [alpha, bravo] if alpha_first else [bravo, alpha]
    with psycopg.connect(migrated_pg_url, autocommit=True) as conn:
        write_batch(conn, [("call", call)] + [("leg", leg) for leg in legs])
        row = conn.execute("SELECT carrier, gateway, first_choice_carrier FROM calls "
                           "WHERE call_uuid = 'tick'").fetchone()
    assert row == ("bravo", "gw_b", "alpha")


# --- round trips and the statements prepared per connection ----------------------------------
def _one_call(n: int) -> list:
    """A call's records as the daemon writes them: decision, events, both legs, the call."""
    from switchd.adapters.db.records import EventRecord
    uuid = f"rt-{n}"
    events = [EventRecord(core_uuid="core", event_seq=100 * n + i, name="X", at=T0,
                          call_uuid=uuid, leg_uuid=uuid) for i in range(9)]
    return [{"id": f"00000000-0000-4000-8000-{n:012d}", "call_uuid": uuid, "tenant": "acme",
             "direction": "outbound", "destination": "+442079460000", "result": "routed",
             "reason": "lcr", "candidates": [{"carrier": "alpha"}], "chosen": ["alpha"],
             "elapsed_us": 90},
            *events, a_leg(uuid), a_leg(uuid, 1, carrier=None, gateway=None, cost=Decimal(0)),
            a_call(uuid)]


def test_a_batch_waits_on_the_server_a_fixed_few_times(migrated_pg_url, monkeypatch):
    """A batch's cost that does not grow with it is mostly its round trips: begin and
    staging setup, two COPYs (each: its start, then its rows and end), and the locked part
    in one message. Each wait parks the writer's greenlet on the hub (the batch took 24
    when each kind had its COPY and the locked part two round trips in pipeline mode)."""
    from switchd.adapters.db import green
    parks = []
    real = green.hub_wait

    def counted(gen, fileno, timeout=None):
        parks.append(1)
        return real(gen, fileno, timeout)

    monkeypatch.setattr(green, "hub_wait", counted)
    with green.connect(migrated_pg_url, autocommit=True) as conn:
        for i in range(3):                  # the first prepares the locked part's statements
            parks.clear()
            with conn.cursor() as cur:
                staged = cdr_batch.stage_records(cur, _one_call(i), begin=True)
            cdr_batch.apply(conn, staged, commit=True)
            assert len(parks) <= 9, parks   # 8: 6 round trips, a COPY's end 2 waits
        counts = conn.execute("SELECT (SELECT count(*) FROM calls), (SELECT count(*) FROM "
                              "call_legs), (SELECT count(*) FROM call_events), (SELECT "
                              "count(*) FROM routing_decisions)").fetchone()
    assert counts == (3, 6, 27, 3)


def test_a_connection_writes_on_after_a_refused_first_batch(migrated_pg_url):
    """The locked part's statements are prepared in a batch's transaction and outlive its
    rollback, while its staging tables do not: the next batches on the connection use the
    statements on the staging tables made again. Statements deallocated behind the
    writer's back are prepared again (the staging step asks the server)."""
    with psycopg.connect(migrated_pg_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.NotNullViolation):
            write_batch(conn, [("call", a_call("refused", direction=None))])
        write_batch(conn, [("call", a_call("after")), ("leg", a_leg("after"))])
        conn.execute("DEALLOCATE ALL")
        write_batch(conn, [("call", a_call("again")), ("leg", a_leg("again"))])
        write_batch(conn, [("leg", a_leg("again", 1, cost=Decimal("0.100000")))])
        rows = dict(conn.execute("SELECT call_uuid, cost FROM calls").fetchall())
    assert rows == {"after": Decimal("0.012500"), "again": Decimal("0.112500")}


def test_each_kind_is_staged_under_its_own_columns(migrated_pg_url):
    """Events have their own staging table; the other kinds go through one COPY into one
    table partitioned by kind: each record's partition holds its values under its own
    columns (amounts as their text, a UUID as its text), every other column NULL."""
    from psycopg.rows import dict_row
    from switchd.adapters.db.records import EventRecord, SwitchCallRecord
    route = __import__("uuid").uuid4()
    call = a_call("st", route_id=route, caller="+15551230000", destination="+442079460000",
                  reconstructed=True, pdd_ms=1200, disposition="answered")
    leg = a_leg("st", sip_status=200, billsec=60, progress_at=T0, pdd_ms=900,
                disposition="answered", cdr_source="switch", provisional=True)
    event = EventRecord(core_uuid="core", event_seq=7, name="CHANNEL_ANSWER", at=T0,
                        call_uuid="st", leg_uuid="st-b0", data={"k": "v"})
    switch = SwitchCallRecord(call_uuid="st", direction="outbound", from_a_leg=True,
                              tenant="acme", route_id=str(route), caller="1", destination="2",
                              started_at=T0, answered_at=T0, ended_at=T0,
                              hangup_cause="NORMAL_CLEARING")
    decision = {"id": str(route), "created_at": T0, "call_uuid": "st", "tenant": "acme",
                "direction": "outbound", "destination": "+442079460000", "result": "routed",
                "reason": "lcr", "sip_code": 404, "candidates": [{"carrier": "alpha"}],
                "chosen": ["alpha"], "elapsed_us": 90}

    def values(rec):
        return {c: str(v) if isinstance(v, (Decimal, type(route))) else v
                for c, v in vars(rec).items()}

    expected = {
        "switchd_stage_calls": {**values(call), "kind": "call", "n": 0},
        "switchd_stage_legs": {**values(leg), "kind": "leg", "n": 0},
        "switchd_stage_switch_calls": {**{k: v for k, v in values(switch).items()
                                          if k != "from_a_leg"},
                                       "a_leg": True, "kind": "switch_call", "n": 0},
        "switchd_stage_decisions": {**decision, "kind": "decision"},
    }
    with psycopg.connect(migrated_pg_url, autocommit=True, row_factory=dict_row) as conn:
        with conn.transaction():
            with conn.cursor() as cur:
                cdr_batch.stage_records(cur, [decision, event, leg, switch, call])
            for table, want in expected.items():
                rows = conn.execute(f"SELECT * FROM {table}").fetchall()
                assert len(rows) == 1, table
                assert list(rows[0]) == cdr_batch.STAGE_COLS
                assert rows[0] == {c: want.get(c) for c in cdr_batch.STAGE_COLS}, table
            assert conn.execute("SELECT * FROM switchd_stage_events").fetchall() == [values(event)]
            raise psycopg.Rollback()
