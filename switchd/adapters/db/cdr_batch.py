"""One batch of CDR records into PostgreSQL, in one transaction: COPY, then set-based upserts.

The records are COPYed (binary) into session-local staging tables (created once per
connection, emptied at every commit): the events into theirs, every other kind in one COPY
into a table partitioned by kind. They are moved into their tables by one INSERT … SELECT …
ON CONFLICT per kind: a few statements per batch instead of one per record, and the same
upserts, so every rule of the row-by-row writer holds:

* Superseding (calls, legs): a stored row is replaced only by a record carrying at least as
  much information (``_CALL_RANK``, ``_LEG_RANK``); among equal ranks the last write wins.
  A key that occurs several times in one batch is applied in rounds (its first
  occurrence, then its second, …), in submission order, exactly as one statement per
  record would.
* Kinds are applied in this order within a batch: ESL calls, the switch's A-leg calls, its
  B-leg calls, legs, the call money recomputed from the legs, events, decisions.

Partitions (migration 020): ``calls`` and ``call_legs`` are partitioned by ``filed_month``,
the month of the first record that named the call or leg, so the unique keys are
(call_uuid, filed_month) and (leg_uuid, filed_month). A record cannot compute that month
alone (a B-leg's CDR does not know when its A-leg started), so each upsert first looks the
key up: an existing row keeps its month; a new call takes the month of legs already filed
for it, a new leg the month of its call, and only a key seen nowhere takes the month of its
own start (or end, or now). The look-up reads the partitions within a month either side of
the batch's own times (a call lasts hours, not months). An advisory lock (``LOCK_KEY``),
held to commit, makes "look up, then insert" atomic between writers (the CDR writer, the
switch-CDR intake, several daemons).
``call_events`` are partitioned by their own time ``at``: (core_uuid, event_seq, at).

Every statement reaches stored rows by key: index probes per staged record, or, for the
first round's month look-up, one index walk per partition through the batch's sorted keys
(``key = ANY(array)`` on a primary key it leads). The batch turns the planner's hash and
merge joins and its scans off, so a month partition whose statistics lag behind its
growth is never read whole.

Round trips: a batch's cost that does not depend on its size is mostly round trips (each
one costs the writer's process system calls and a wait on the hub) and psycopg's work per
statement. A batch takes six: the transaction's start with the staging setup, two COPYs
(each: its start, then its rows and end), and the locked part, whose statements are
prepared once per connection and EXECUTEd together in one message (apply()).
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, fields, replace
from datetime import date, datetime, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from itertools import chain, repeat
from operator import attrgetter, itemgetter
from typing import Any, Callable, Iterable, Sequence

import gevent
import psycopg
from psycopg import postgres, sql
from psycopg.rows import tuple_row

from switchd.adapters.db import store
from switchd.adapters.db.records import (KIND_OF, CallRecord, EventRecord, LegRecord,
                                         SwitchCallRecord)

# Taken by every batch once its rows are staged, held to commit. Arbitrary constant.
LOCK_KEY = 0x5157_1C4E

_FAR_PAST, _FAR_FUTURE = date(1, 1, 1), date(9999, 12, 1)
_MICRO = Decimal("0.000001")


def month_of(at: datetime) -> date:
    """The UTC month of an instant, as its first day (SQL: switchd_month)."""
    at = at.astimezone(timezone.utc)
    return date(at.year, at.month, 1)


def add_months(month: date, n: int) -> date:
    index = month.year * 12 + month.month - 1 + n
    year, m = divmod(index, 12)
    if year < 1:
        return _FAR_PAST
    if year > 9999:
        return _FAR_FUTURE
    return date(year, m + 1, 1)


def _names(cls) -> list[str]:
    return [f.name for f in fields(cls)]


CALL_COLS = _names(CallRecord)
LEG_COLS = _names(LegRecord)
EVENT_COLS = _names(EventRecord)
SWITCH_COLS = [c for c in _names(SwitchCallRecord) if c != "from_a_leg"]
DECISION_COLS = list(store.DECISION_COLUMNS)

# Staging tables, one per kind, session-local and emptied at every commit. Their column
# types are those of the Python values (text, bigint, timestamptz, boolean, jsonb), so
# rows go in by binary COPY; the INSERT into the real table casts them (a uuid from its
# text, an integer to its width) and checks every constraint. `n` is the round of a key
# that occurs more than once in the batch. Amounts (Decimal) are staged as their text and
# cast to numeric by the INSERT: the same value exactly, and formatting a Decimal in
# binary numeric costs the writer about five times its str().
def _pg_type(annotation: str) -> str:
    for name, pg in (("datetime", "timestamptz"), ("Decimal", "text"), ("bool", "boolean"),
                     ("int", "bigint"), ("dict", "jsonb"), ("str", "text")):
        if name in annotation:
            return pg
    raise TypeError(f"no staging type for {annotation!r}")


def _types(cls, cols: list[str]) -> list[str]:
    hints = {f.name: str(f.type) for f in fields(cls)}
    return [_pg_type(hints[c]) for c in cols]


def _amounts(cls) -> list[str]:
    return [f.name for f in fields(cls) if "Decimal" in str(f.type)]


CALL_TYPES = _types(CallRecord, CALL_COLS) + ["bigint"]
SWITCH_TYPES = _types(SwitchCallRecord, SWITCH_COLS) + ["boolean", "bigint"]
LEG_TYPES = _types(LegRecord, LEG_COLS) + ["bigint"]
EVENT_TYPES = _types(EventRecord, EVENT_COLS)
DECISION_TYPES = ["text", "timestamptz", "text", "text", "text", "text", "text", "text",
                  "bigint", "jsonb", "jsonb", "bigint"]
assert len(DECISION_TYPES) == len(DECISION_COLS)


def _table(name: str, cols: list[str], types: list[str]) -> str:
    defs = ", ".join(f"{c} {t}" for c, t in zip(cols, types))
    return f"CREATE TEMP TABLE IF NOT EXISTS {name} ({defs}) ON COMMIT DELETE ROWS;"


# Staging takes two COPYs (each COPY is two round trips), whatever the batch holds. Events,
# most of a batch's records, have their own table. The other kinds share one table
# partitioned by kind: each kind's partition is the staging table its statements read,
# with the columns of every kind (those of other kinds NULL: a few bytes each, and a few
# ns to format). A column that several kinds have has the same type in each. The
# columns, in the COPY's order, are in blocks, so that the row of a call or a leg is a few
# runs of its own values and NULLs, built in this order directly (stage_records).
_CALL_ONLY = ["first_choice_carrier", "attempts", "reconstructed", "tenant", "route_id",
              "caller", "destination"]
_CALL_AND_LEG = ["call_uuid", "direction", "started_at", "answered_at", "ended_at",
                 "hangup_cause", "carrier", "gateway", "billed_seconds", "pdd_ms",
                 "disposition", "cost", "n"]
_LEG_ONLY = ["leg_uuid", "sip_status", "billmsec", "increments", "billsec", "cdr_source",
             "provisional", "unrated", "progress_at", "rate_per_min", "connect_fee"]
_DECISION_ONLY = ["id", "created_at", "result", "reason", "sip_code", "candidates", "chosen",
                  "elapsed_us"]
STAGE_COLS = ["kind", *_CALL_ONLY, *_CALL_AND_LEG, *_LEG_ONLY, *_DECISION_ONLY, "a_leg"]
_KIND_COLS = {"call": CALL_COLS + ["n"], "switch_call": SWITCH_COLS + ["a_leg", "n"],
              "leg": LEG_COLS + ["n"], "decision": DECISION_COLS}
_KIND_TYPES = {"call": CALL_TYPES, "switch_call": SWITCH_TYPES, "leg": LEG_TYPES,
               "decision": DECISION_TYPES}
_STAGE_TYPE: dict[str, str] = {"kind": "text"}
for _kind, _cols in _KIND_COLS.items():
    for _col, _type in zip(_cols, _KIND_TYPES[_kind]):
        if _STAGE_TYPE.setdefault(_col, _type) != _type:
            raise TypeError(f"staging column {_col}: {_type} here, {_STAGE_TYPE[_col]} before")
if sorted(_STAGE_TYPE) != sorted(STAGE_COLS):
    raise TypeError(f"staging columns: {sorted(set(_STAGE_TYPE) ^ set(STAGE_COLS))} in one "
                    "of the records and the staging table's blocks only")
_STAGE_TABLES = {"call": "switchd_stage_calls", "switch_call": "switchd_stage_switch_calls",
                 "leg": "switchd_stage_legs", "decision": "switchd_stage_decisions"}
# As oids (built-in types: the same on every server), so that a COPY does not look each
# name up again.
STAGE_TYPES = [postgres.types.get_oid(_STAGE_TYPE[c]) for c in STAGE_COLS]
_EVENT_OIDS = [postgres.types.get_oid(t) for t in EVENT_TYPES]


def _stage_tables() -> list[str]:
    defs = ", ".join(f"{c} {_STAGE_TYPE[c]}" for c in STAGE_COLS)
    return ([f"CREATE TEMP TABLE IF NOT EXISTS switchd_stage ({defs}) PARTITION BY LIST (kind);"]
            + [f"CREATE TEMP TABLE IF NOT EXISTS {table} PARTITION OF switchd_stage "
               f"FOR VALUES IN ('{kind}') ON COMMIT DELETE ROWS;"
               for kind, table in _STAGE_TABLES.items()])


_STAGING = "\n".join([
    "SET LOCAL client_min_messages = warning;",
    # Every statement of a batch reaches the stored rows by key, a few per staged record:
    # index probes in nested loops, whatever the planner's statistics of a month that is
    # filling up say (a hash join over the month would read all of it, every batch).
    "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off;",
    "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off;",
    *_stage_tables(),
    _table("switchd_stage_events", EVENT_COLS, EVENT_TYPES),
    # The calls the first rounds found not new (or with legs that were not): see apply().
    _table("switchd_stage_unsettled", ["call_uuid"], ["text"]),
    # The locked part's statements this connection has prepared (see apply()).
    "SELECT COALESCE(array_agg(name), '{}') FROM pg_prepared_statements "
    "WHERE starts_with(name, 'switchd_cdr_');",
])
_BEGIN_STAGING = "BEGIN;\n" + _STAGING
# A caller's own transaction (a connection not in autocommit) gets its planner back.
_UNSET = "; ".join(f"SET LOCAL {name} TO DEFAULT" for name in (
    "enable_hashjoin", "enable_mergejoin", "enable_seqscan", "enable_bitmapscan",
    "client_min_messages"))

# Known only from ESL's progress events: a later record that lacks them (FreeSWITCH's CDR)
# keeps what is stored.
_KEEP_WHEN_NULL = frozenset({"progress_at", "pdd_ms", "disposition"})
_CALL_RANK = "(NOT {t}.reconstructed, {t}.ended_at IS NOT NULL, {t}.answered_at IS NOT NULL)"
# FreeSWITCH's CDR outranks anything ESL said; a leg closed without its hangup
# (provisional) outranks nothing it would replace.
_LEG_RANK = ("({t}.cdr_source = 'switch', NOT {t}.provisional, {t}.ended_at IS NOT NULL, "
             "{t}.answered_at IS NOT NULL)")

# The month a key is filed under: where it already is, else where its kin are, else its own.
_WINDOW = "filed_month BETWEEN %(lo)s AND %(hi)s"
_OWN_MONTH = "switchd_month(COALESCE(s.started_at, s.ended_at, now()))"
_CALL_MONTH = f"""COALESCE(
    (SELECT k.filed_month FROM calls k WHERE k.call_uuid = s.call_uuid AND k.{_WINDOW} LIMIT 1),
    (SELECT min(l.filed_month) FROM call_legs l WHERE l.call_uuid = s.call_uuid AND l.{_WINDOW}),
    {_OWN_MONTH})"""
_LEG_MONTH = f"""COALESCE(
    (SELECT k.filed_month FROM call_legs k WHERE k.leg_uuid = s.leg_uuid AND k.{_WINDOW} LIMIT 1),
    (SELECT c.filed_month FROM calls c WHERE c.call_uuid = s.call_uuid AND c.{_WINDOW} LIMIT 1),
    {_OWN_MONTH})"""


# Staged as text, stored as uuid or numeric (a cast from text is never implicit).
_CASTS = {"route_id": "::uuid", "id": "::uuid"} | {
    c: "::numeric" for cls in (CallRecord, LegRecord, SwitchCallRecord, EventRecord)
    for c in _amounts(cls)}


def _select(cols: list[str], prefix: str = "s.") -> str:
    return ", ".join(prefix + c + _CASTS.get(c, "") for c in cols)


def _upsert(table: str, stage: str, cols: list[str], key: str, month: str, sets: list[str],
            where: str = "", only: str = "") -> str:
    cond = f"WHERE s.n = %(n)s{only}"
    return (f"INSERT INTO {table} ({', '.join(cols)}, filed_month) "
            f"SELECT {_select(cols)}, {month} FROM {stage} s {cond} "
            f"ON CONFLICT ({key}, filed_month) DO UPDATE SET {', '.join(sets)}"
            + (f" WHERE {where}" if where else ""))


def _replace_sets(table: str, cols: list[str], key: str) -> list[str]:
    return [f"{c} = COALESCE(EXCLUDED.{c}, {table}.{c})" if c in _KEEP_WHEN_NULL
            else f"{c} = EXCLUDED.{c}" for c in cols if c != key]


_UPSERT_CALL = _upsert(
    "calls", "switchd_stage_calls", CALL_COLS, "call_uuid", _CALL_MONTH,
    _replace_sets("calls", CALL_COLS, "call_uuid"),
    f"{_CALL_RANK.format(t='EXCLUDED')} >= {_CALL_RANK.format(t='calls')}")
_UPSERT_LEG = _upsert(
    "call_legs", "switchd_stage_legs", LEG_COLS, "leg_uuid", _LEG_MONTH,
    _replace_sets("call_legs", LEG_COLS, "leg_uuid"),
    f"{_LEG_RANK.format(t='EXCLUDED')} >= {_LEG_RANK.format(t='call_legs')}")


# A key's first round (most keys have only one) resolves its month once and then either
# inserts a new row (no ON CONFLICT: under the lock, a key the look-up did not find within
# the window cannot be there) or updates the stored row under the superseding rank: what
# the upsert does, for less work. The look-up is set-based where the key leads the
# table's primary key: the batch's keys go into one sorted array, and each partition of
# the window is read once with `key = ANY(array)` (one walk of the index through the keys
# in order) instead of one probe per staged row and partition. A call's legs are found
# through call_legs' call_uuid index one key at a time (as an array there, a planner that
# cannot know the array's length may prefer reading the whole month's primary key).
# What the look-ups find (usually nothing) becomes one jsonb object, key -> month, that
# each staged row reads by its key: no join for a planner to get wrong, whatever it
# believes of the batch's size. Each statement notes the calls whose money must be
# recomputed whatever their records say in switchd_stage_unsettled (see apply()):
# usually none.
def _months_of(table: str, key: str, keys: str) -> str:
    """{key: month} of the keys in the array `keys` stored in `table` within the window
    (the earliest month, should a key be in two). `key` must lead the table's primary key."""
    return (f"(SELECT COALESCE(jsonb_object_agg(f.{key}, f.month), '{{}}') FROM "
            f"(SELECT {key}, min(filed_month) AS month FROM {table} "
            f"WHERE {key} = ANY(({keys})::text[]) AND {_WINDOW} GROUP BY {key}) f)")


def _months_by_probe(table: str, key: str, keys: str) -> str:
    """The same, one index probe per key (for a key that does not lead the primary key)."""
    return (f"(SELECT COALESCE(jsonb_object_agg(k.x, m.month), '{{}}') "
            f"FROM unnest(({keys})::text[]) AS k(x), LATERAL (SELECT min(filed_month) AS month "
            f"FROM {table} f WHERE f.{key} = k.x AND f.{_WINDOW}) m WHERE m.month IS NOT NULL)")


def _first_round(table: str, stage: str, cols: list[str], key: str, kin_table: str,
                 kin_key: str, kin_leads: bool, sets: list[str], rank_ok: str,
                 unsettled: str) -> str:
    kin_months = _months_of if kin_leads else _months_by_probe
    staged = ", ".join(f"s.{c}{_CASTS.get(c, '')} AS {c}" for c in cols)
    month = "COALESCE(r.kin, switchd_month(COALESCE(r.started_at, r.ended_at, now())))"
    return f"""WITH keys AS MATERIALIZED (
    SELECT array_agg({key} ORDER BY {key}) AS own,
           array_agg(DISTINCT {kin_key} ORDER BY {kin_key}) AS kin
    FROM {stage} WHERE n = 0),
found AS MATERIALIZED (
    SELECT {_months_of(table, key, "SELECT own FROM keys")} AS stored,
           {kin_months(kin_table, kin_key, "SELECT kin FROM keys")} AS kin),
r AS MATERIALIZED (
    SELECT t.*, CASE WHEN t.stored IS NULL THEN (f.kin ->> t.{kin_key})::date END AS kin
    FROM (SELECT {staged}, (f.stored ->> s.{key})::date AS stored
          FROM {stage} s, found f WHERE s.n = 0) t, found f),
new AS (INSERT INTO {table} ({', '.join(cols)}, filed_month)
        SELECT {', '.join('r.' + c for c in cols)}, {month} FROM r WHERE r.stored IS NULL),
old AS (UPDATE {table} SET {', '.join(x.replace('EXCLUDED.', 'r.') for x in sets)} FROM r
        WHERE r.stored IS NOT NULL AND {table}.{key} = r.{key}
          AND {table}.filed_month = r.stored AND {rank_ok.replace('EXCLUDED', 'r')})
INSERT INTO switchd_stage_unsettled SELECT DISTINCT r.call_uuid FROM r WHERE {unsettled}"""


# A new call takes the month of legs already filed for it; calls stored before, or with a
# leg stored before, must be recomputed: the legs in the batch are not all.
_FIRST_CALLS = _first_round(
    "calls", "switchd_stage_calls", CALL_COLS, "call_uuid", "call_legs", "call_uuid", False,
    _replace_sets("calls", CALL_COLS, "call_uuid"),
    f"{_CALL_RANK.format(t='EXCLUDED')} >= {_CALL_RANK.format(t='calls')}",
    "r.stored IS NOT NULL OR r.kin IS NOT NULL")
# A new leg takes the month of its call; calls with a staged leg that was stored before
# must be recomputed: that leg row may not be what is staged.
_FIRST_LEGS = _first_round(
    "call_legs", "switchd_stage_legs", LEG_COLS, "leg_uuid", "calls", "call_uuid", True,
    _replace_sets("call_legs", LEG_COLS, "leg_uuid"),
    f"{_LEG_RANK.format(t='EXCLUDED')} >= {_LEG_RANK.format(t='call_legs')}",
    "r.stored IS NOT NULL")


def _switch_call_sql(a_leg: bool) -> str:
    """A-leg CDR: its values win over what is stored; B-leg CDR: it only fills gaps."""
    # direction too: a carrier leg's CDR, when it came first, could only guess "outbound"
    facts = ("direction", "started_at", "ended_at", "hangup_cause", "caller", "destination")
    sets = []
    for c in SWITCH_COLS[1:]:
        first, second = ("EXCLUDED", "calls") if a_leg and c in facts else ("calls", "EXCLUDED")
        sets.append(f"{c} = COALESCE({first}.{c}, {second}.{c})")
    if a_leg:
        sets.append("reconstructed = false")
    return _upsert("calls", "switchd_stage_switch_calls", SWITCH_COLS, "call_uuid",
                   _CALL_MONTH, sets, only=f" AND s.a_leg = {str(a_leg).lower()}")


_UPSERT_SWITCH_CALL = {True: _switch_call_sql(True), False: _switch_call_sql(False)}

# A call's money and flags always come from its leg rows, whichever record came last, so
# the result does not depend on the order ESL records and switch CDRs arrive in. Carrier
# legs are the rated ones (a carrier or gateway is known). The call's carrier is the
# answered leg, else the last attempt; its first choice the first attempt. FreeSWITCH
# stamps times from its timer thread's tick, so on a loaded switch a carrier's instant
# refusal and the next attempt can start in the same microsecond: the attempt that ended
# later (or has not ended) is the later one, and the leg's key settles the rest.
_LAST_ATTEMPT = ("answered_at IS NULL, started_at DESC NULLS LAST, "
                 "ended_at DESC NULLS FIRST, leg_uuid DESC")
_FIRST_ATTEMPT = "started_at NULLS LAST, ended_at NULLS LAST, leg_uuid"
_LEG_MONEY = f"""SELECT count(*) AS legs,
       COALESCE(sum(cost) FILTER (WHERE rated), 0) AS cost,
       COALESCE(sum(billed_seconds) FILTER (WHERE rated), 0) AS billed,
       bool_or(unrated) AS unrated, bool_or(provisional) AS provisional,
       CASE WHEN bool_and(cdr_source = 'switch') THEN 'switch' ELSE 'esl' END AS source,
       count(*) FILTER (WHERE rated) AS attempts,
       (array_agg(carrier ORDER BY {_LAST_ATTEMPT}) FILTER (WHERE rated))[1] AS carrier,
       (array_agg(gateway ORDER BY {_LAST_ATTEMPT}) FILTER (WHERE rated))[1] AS gateway,
       (array_agg(carrier ORDER BY {_FIRST_ATTEMPT}) FILTER (WHERE rated))[1]
           AS first_carrier,
       min(answered_at) AS answered_at
FROM (SELECT *, (carrier IS NOT NULL OR gateway IS NOT NULL) AS rated
      FROM call_legs l WHERE l.call_uuid = c.call_uuid AND l.{_WINDOW}) l"""
_MONEY_COLS = ("cost, billed_seconds, unrated, provisional, cdr_source, attempts, carrier, "
               "gateway, first_choice_carrier, answered_at")
_MONEY_NEW = ("a.cost, a.billed, a.unrated, a.provisional, a.source, "
              "GREATEST(c.attempts, a.attempts), COALESCE(a.carrier, c.carrier), "
              "COALESCE(a.gateway, c.gateway), COALESCE(c.first_choice_carrier, a.first_carrier), "
              "COALESCE(a.answered_at, c.answered_at)")
# Each touched call is reached through its key and its legs through call_legs' call_uuid
# index (no join a planner could turn into a scan of the month); a call whose row already
# says what its legs say is not rewritten (ESL's call record usually does).
RECOMPUTE_CALLS = f"""
UPDATE calls c SET ({_MONEY_COLS}) = (SELECT {_MONEY_NEW} FROM ({_LEG_MONEY}) a)
WHERE c.call_uuid = ANY(%(uuids)s) AND c.{_WINDOW}
  AND EXISTS (SELECT 1 FROM ({_LEG_MONEY}) a
              WHERE a.legs > 0 AND ({', '.join('c.' + x for x in _MONEY_COLS.split(', '))})
                                   IS DISTINCT FROM ({_MONEY_NEW}))
"""
# The batch's recompute: the touched calls money_settled() did not vouch for (the
# parameter), and those the first rounds noted (a call or leg stored before).
_RECOMPUTE_BATCH = RECOMPUTE_CALLS.replace(
    "%(uuids)s", "(%(uuids)s::text[] || ARRAY(SELECT call_uuid FROM switchd_stage_unsettled))")
assert _RECOMPUTE_BATCH != RECOMPUTE_CALLS
_INSERT_EVENTS = (f"INSERT INTO call_events ({', '.join(EVENT_COLS)}) "
                  f"SELECT {', '.join(EVENT_COLS)} FROM switchd_stage_events "
                  "ON CONFLICT (core_uuid, event_seq, at) DO NOTHING")
_INSERT_DECISIONS = (
    f"INSERT INTO routing_decisions ({', '.join(DECISION_COLS)}) "
    f"SELECT {_select(DECISION_COLS, '').replace('created_at', 'COALESCE(created_at, now())')} "
    "FROM switchd_stage_decisions ON CONFLICT (id) DO NOTHING")


# The rows of calls and legs in the staging table's column order (STAGE_COLS):
# their values in runs (one attrgetter each), amounts as their text, NULLs between.
def _nulls(after: str | None, before: str | None) -> tuple[None, ...]:
    """NULLs for the staging columns strictly between two (None: the row's ends)."""
    lo = STAGE_COLS.index(after) + 1 if after else 0
    return (None,) * ((STAGE_COLS.index(before) if before else len(STAGE_COLS)) - lo)


_CALL_HEAD = attrgetter(*_CALL_ONLY, *_CALL_AND_LEG[:-2])      # all but cost, n
_NULLS_AFTER_CALL = _nulls("n", None)
_NULLS_BEFORE_LEG = _nulls("kind", "call_uuid")
_LEG_SHARED = attrgetter(*_CALL_AND_LEG[:-2])                   # all but cost, n
_LEG_OWN = attrgetter(*_LEG_ONLY[:-2])                          # all but the two amounts
_NULLS_AFTER_LEG = _nulls("connect_fee", None)
_EVENT_HEAD = attrgetter(*EVENT_COLS[:-1])                      # all but data
assert _CALL_AND_LEG[-2:] == ["cost", "n"] and _LEG_ONLY[-2:] == ["rate_per_min", "connect_fee"]
assert set(_CALL_ONLY + _CALL_AND_LEG) == set(CALL_COLS + ["n"])
assert set(_CALL_AND_LEG + _LEG_ONLY) == set(LEG_COLS + ["n"])
assert EVENT_COLS[-1] == "data"
assert _amounts(CallRecord) == ["cost"]
assert sorted(_amounts(LegRecord)) == ["connect_fee", "cost", "rate_per_min"]


def _widen(cols: list[str]) -> Callable[[tuple], tuple]:
    """For the rarer kinds (the switch's calls, routing decisions): their row in `cols`'
    order, followed by None and the kind's name → the staging table's row."""
    pick = [len(cols) + 1 if c == "kind" else cols.index(c) if c in cols else len(cols)
            for c in STAGE_COLS]
    return itemgetter(*pick)


_SWITCH_WIDE = _widen(_KIND_COLS["switch_call"])
_DECISION_WIDE = _widen(_KIND_COLS["decision"])
_SWITCH_ROW = attrgetter(*SWITCH_COLS)


def _db_money(amount: Decimal | None) -> Decimal | None:
    """An amount as numeric(…, 6) stores it (half away from zero), or None if it is not
    a plain finite amount."""
    if amount is None or not amount.is_finite():
        return None
    try:
        return amount.quantize(_MICRO, rounding=ROUND_HALF_UP)
    except InvalidOperation:
        return None


def money_settled(call: CallRecord, legs: Sequence[LegRecord]) -> bool:
    """Whether RECOMPUTE_CALLS would leave this call's row as the record wrote it, when the
    call is new and `legs` are all its legs (none stored before, each written once in the
    batch). Conservative: anything it does not follow exactly means "recompute"."""
    if not legs:
        return True                      # no leg rows: the recompute changes nothing
    rated = billed = 0
    cost = Decimal(0)
    carrier = gateway = answered = None
    from_esl = False
    for leg in legs:
        if leg.unrated or leg.provisional:
            return False                 # the new call row says neither
        from_esl = from_esl or leg.cdr_source != "switch"
        if leg.answered_at is not None:
            if leg.answered_at.tzinfo is None:
                return False
            answered = leg.answered_at if answered is None else min(answered, leg.answered_at)
        if leg.carrier is None and leg.gateway is None:
            continue                     # not a carrier leg: not rated
        if rated and (leg.carrier != carrier or leg.gateway != gateway):
            return False                 # which carrier wins depends on times: let SQL say
        carrier, gateway = leg.carrier, leg.gateway
        rated += 1
        billed += leg.billed_seconds
        if leg.cost is not None:
            amount = _db_money(leg.cost)
            if amount is None:
                return False
            cost += amount
    if answered is not None:             # COALESCE(first answer of the legs, the call's)
        if call.answered_at is None or call.answered_at.tzinfo is None \
                or call.answered_at != answered:
            return False
    return (from_esl                     # the new row says 'esl'
            and _db_money(call.cost) == cost
            and call.billed_seconds == billed
            and rated <= call.attempts
            and (carrier is None or carrier == call.carrier)
            and (gateway is None or gateway == call.gateway)
            and (call.first_choice_carrier is not None or carrier is None))


def _settled_calls(calls: list[CallRecord], call_rounds: list[int] | None,
                   legs: list[LegRecord], leg_rounds: list[int] | None,
                   switch: list) -> set[str]:
    """The calls of the batch money_settled() vouches for: written once, not named by a
    switch CDR, with legs written once each (round 0 only).

    Builds no container per call that outlives its own check: what a batch holds while
    it is formatted survives the collector's young generations, and what survives them is
    walked again by every full collection (with every record queued)."""
    unsure = {r.call_uuid for r in switch}
    for records, rounds in ((calls, call_rounds), (legs, leg_rounds)):
        if rounds is not None:
            unsure.update(rec.call_uuid for rec, n in zip(records, rounds) if n)
    first_leg: dict[str, LegRecord] = {}
    more_legs: dict[str, list[LegRecord]] = {}       # calls with several legs only
    for leg in legs:
        if leg.call_uuid in first_leg:
            more_legs.setdefault(leg.call_uuid, []).append(leg)
        else:
            first_leg[leg.call_uuid] = leg
    return {rec.call_uuid for rec in calls
            if rec.call_uuid not in unsure
            and money_settled(rec, _legs_of(rec.call_uuid, first_leg, more_legs))}


def _legs_of(call_uuid: str, first_leg: dict, more_legs: dict) -> tuple:
    first = first_leg.get(call_uuid)
    if first is None:
        return ()
    more = more_legs.get(call_uuid)
    return (first,) if more is None else (first, *more)


def _rounds(records: list, key: Callable[[Any], Any]) -> tuple[list[int] | None, int]:
    """Each record's round (how many earlier records of the batch share its key), in
    the records' order, and the number of rounds. None for the usual batch, every key
    once: all round 0."""
    keys = list(map(key, records))
    if len(set(keys)) == len(keys):
        return None, min(len(keys), 1)
    seen: dict[Any, int] = {}
    out = []
    for k in keys:
        n = seen.get(k, 0)
        seen[k] = n + 1
        out.append(n)
    return out, max(seen.values(), default=0)


# Rows formatted between two yields to the other greenlets: formatting a batch takes
# tens of milliseconds, and the greenlet applying the previous batch (or the event
# greenlet) must not wait that long to send its next statement.
_YIELD_EVERY = 500


def _copy(cur: psycopg.Cursor, table: str, cols: list[str], types: list[int],
          rows: Iterable[tuple]) -> None:
    with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(types)
        for i, row in enumerate(rows, 1):
            copy.write_row(row)
            if i % _YIELD_EVERY == 0:
                gevent.sleep(0)


def _amount_text(value: Decimal | None) -> str | None:
    return value if value is None else str(value)


def _text(value: Any) -> str | None:
    """A uuid column's value as text (a record replayed from the spool holds a UUID)."""
    return value if value is None or type(value) is str else str(value)


def _decision_row(row: dict) -> tuple:
    unknown = set(row) - set(DECISION_COLS)
    if unknown:
        raise ValueError(f"routing decision: unknown keys {sorted(unknown)}")
    return tuple(store.jsonb(row.get(c)) if c in ("candidates", "chosen")
                 else (row.get(c) or 0) if c == "elapsed_us"
                 else _text(row.get(c)) if c in ("id", "call_uuid") else row.get(c)
                 for c in DECISION_COLS)


def _months(records: Iterable) -> tuple[set[date], bool]:
    """Months of the records' own times (start, else end); whether one had neither."""
    times = [rec.started_at or rec.ended_at for rec in records]
    timeless = None in times
    if timeless:
        times = [at for at in times if at is not None]
    return _months_of_times(times), timeless


def _months_of_times(times: list[datetime]) -> set[date]:
    if not times:
        return set()
    try:
        first, last = month_of(min(times)), month_of(max(times))
    except TypeError:                    # naive and aware times mixed: one by one
        return {month_of(at) for at in times}
    if first == last:                    # the usual batch: one month, no per-record work
        return {first}
    return {month_of(at) for at in times}


@dataclass(frozen=True)
class StagedBatch:
    """A batch whose rows are in the session's staging tables (its transaction open), with
    what the locked part needs: the month window, the rounds per kind, the touched calls."""
    calls: int                      # call records (CDRs) in the batch
    window: dict[str, date]         # the months the look-ups read (lo, hi)
    months: list[date]              # the partitions the batch may write to
    call_rounds: int
    switch_rounds: int
    leg_rounds: int
    touched: list[str]              # calls whose money is recomputed from their legs
    settled: frozenset[str]         # ... unless new and vouched for (money_settled)
    events: bool
    decisions: bool
    prepared: frozenset[str]        # the locked part's statements the connection has


def write_batch(conn: psycopg.Connection, items: list[tuple[str, Any]]) -> int:
    """Write one batch of (kind, record) pairs in one transaction; returns the number of
    call rows (CDRs) in it."""
    return write_records(conn, [rec for _, rec in items])


def write_records(conn: psycopg.Connection, records: list) -> int:
    """write_batch() of records bare (each one's kind is its type, records.KIND_OF)."""
    with conn.transaction():
        with conn.cursor() as cur:
            staged = stage_records(cur, records)
        n = apply(conn, staged)
        conn.execute(_UNSET)     # a caller's own transaction gets its planner back
        return n


def stage(cur: psycopg.Cursor, items: list[tuple[str, Any]]) -> StagedBatch:
    """COPY a batch of (kind, record) pairs into the staging tables, inside the caller's
    transaction. Takes no lock: a writer stages its next batch while another transaction
    applies the previous."""
    return stage_records(cur, [rec for _, rec in items])


def stage_records(cur: psycopg.Cursor, records: list, *, begin: bool = False) -> StagedBatch:
    """stage() of records bare (each one's kind is its type, records.KIND_OF). With
    ``begin``, the transaction begins in the staging's first message (a connection in
    autocommit: one round trip less)."""
    by_kind: dict[str, list] = {"call": [], "leg": [], "event": [], "decision": [],
                                "switch_call": []}
    for rec in records:
        try:
            by_kind[KIND_OF[type(rec)]].append(rec)
        except KeyError:
            raise TypeError(f"CDR writer: not a record it stores: {type(rec).__name__}") \
                from None
    calls, legs, switch = by_kind["call"], by_kind["leg"], by_kind["switch_call"]
    events, decisions = by_kind["event"], by_kind["decision"]
    decision_rows = [_decision_row(d) for d in decisions]

    keyed = calls + legs + switch
    months, timeless = _months(keyed)
    if timeless or not months:
        window = {"lo": _FAR_PAST, "hi": _FAR_FUTURE}
    else:
        window = {"lo": add_months(min(months), -1), "hi": add_months(max(months), 1)}
    if timeless:
        now = month_of(datetime.now(timezone.utc))
        months |= {now, add_months(now, 1)}      # now() in SQL: this month, or just after
    months |= _months_of_times([e.at for e in events])

    with cur.connection.cursor(row_factory=tuple_row) as setup:   # whatever cur's rows are
        setup.execute(_BEGIN_STAGING if begin else _STAGING)
        while setup.nextset():
            pass                         # to the last statement's result: what is prepared
        prepared = frozenset(setup.fetchone()[0])
    # Rounds as lists of ints (None: all 0), not (record, round) pairs: see _settled_calls.
    call_ns, call_rounds = _rounds(calls, attrgetter("call_uuid"))
    switch_ns, switch_rounds = _rounds(switch, attrgetter("from_a_leg", "call_uuid"))
    leg_ns, leg_rounds = _rounds(legs, attrgetter("leg_uuid"))
    rows = []
    if calls:
        rows.append(("call", *_CALL_HEAD(r if type(r.route_id) is not uuid.UUID
                                         else replace(r, route_id=str(r.route_id))),
                     _amount_text(r.cost), n, *_NULLS_AFTER_CALL)
                    for r, n in zip(calls, call_ns or repeat(0)))
    if switch:
        rows.append(_SWITCH_WIDE((*_SWITCH_ROW(r if type(r.route_id) is not uuid.UUID
                                               else replace(r, route_id=str(r.route_id))),
                                  r.from_a_leg, n, None, "switch_call"))
                    for r, n in zip(switch, switch_ns or repeat(0)))
    if legs:
        rows.append(("leg", *_NULLS_BEFORE_LEG, *_LEG_SHARED(r), _amount_text(r.cost), n,
                     *_LEG_OWN(r), _amount_text(r.rate_per_min), _amount_text(r.connect_fee),
                     *_NULLS_AFTER_LEG)
                    for r, n in zip(legs, leg_ns or repeat(0)))
    if decisions:
        rows.append(_DECISION_WIDE((*row, None, "decision")) for row in decision_rows)
    if events:
        _copy(cur, "switchd_stage_events", EVENT_COLS, _EVENT_OIDS,
              ((*_EVENT_HEAD(e), store.jsonb(e.data) if e.data else None) for e in events))
    if rows:
        _copy(cur, "switchd_stage", STAGE_COLS, STAGE_TYPES, chain(*rows))
    settled = _settled_calls(calls, call_ns, legs, leg_ns, switch)
    return StagedBatch(calls=len(calls), window=window, months=sorted(months),
                       call_rounds=call_rounds, switch_rounds=switch_rounds,
                       leg_rounds=leg_rounds, touched=sorted({r.call_uuid for r in keyed}),
                       settled=frozenset(settled),
                       events=bool(events), decisions=bool(decisions), prepared=prepared)


# The locked part's statements, prepared once per connection and executed by name (see
# apply()). Their parameters are named %(name)s in the SQL above, typed here; the
# staging step asks the server which the connection has (_STAGING's last statement).
_LOCKED = {
    "ensure_months": "SELECT switchd_ensure_month(m) FROM unnest(%(months)s) AS m",
    "first_calls": _FIRST_CALLS,
    "upsert_call": _UPSERT_CALL,
    "upsert_a_leg_call": _UPSERT_SWITCH_CALL[True],
    "upsert_b_leg_call": _UPSERT_SWITCH_CALL[False],
    "first_legs": _FIRST_LEGS,
    "upsert_leg": _UPSERT_LEG,
    "recompute": _RECOMPUTE_BATCH,
    "insert_events": _INSERT_EVENTS,
    "insert_decisions": _INSERT_DECISIONS,
}
_LOCK = f"SELECT pg_advisory_xact_lock({LOCK_KEY})"
_PARAM_TYPES = {"lo": "date", "hi": "date", "n": "bigint", "months": "date[]",
                "uuids": "text[]"}
_PREFIX = "switchd_cdr_"


def _params(name: str) -> list[str]:
    return list(dict.fromkeys(re.findall(r"%\((\w+)\)s", _LOCKED[name])))


def _prepare(name: str) -> str:
    body = _LOCKED[name]
    params = _params(name)
    for i, param in enumerate(params, 1):
        body = body.replace(f"%({param})s", f"${i}")
    types = f"({', '.join(_PARAM_TYPES[p] for p in params)})" if params else ""
    return f"PREPARE {_PREFIX}{name}{types} AS {body}"


# EXECUTE of each statement, its arguments to be filled in by str.format with literals.
_EXECUTE = {name: f"EXECUTE {_PREFIX}{name}" + (
    f"({', '.join('{' + p + '}' for p in _params(name))})" if _params(name) else "")
    for name in _LOCKED}


def apply(conn: psycopg.Connection, staged: StagedBatch, *, commit: bool = False) -> int:
    """Move the staged rows into their tables under the lock, kinds in a fixed order (in
    the same transaction as stage(); the caller commits, or with ``commit`` the COMMIT is
    the last statement). Returns the call rows (CDRs).

    One message, one round trip, whatever the batch holds (simple query protocol): the
    lock, then PREPARE of the statements stage() found the connection without (its first
    batch; prepared statements outlive a rollback), then EXECUTE of each with its
    arguments as literals. PostgreSQL runs them in order and stops at the first that
    fails (the transaction is then aborted: the caller rolls back). Prepared, each
    statement is parsed once per connection and its plan is cached as PostgreSQL
    decides, as when psycopg prepared them itself."""
    # Dates are ours (month_of, add_months): their ISO form is the literal. Text is quoted
    # by psycopg for this connection.
    literal = {"lo": f"'{staged.window['lo'].isoformat()}'",
               "hi": f"'{staged.window['hi'].isoformat()}'"}
    run = []
    if staged.months:
        run.append(("ensure_months", 0))
        literal["months"] = f"'{{{','.join(m.isoformat() for m in staged.months)}}}'"
    if staged.call_rounds:
        run.append(("first_calls", 0))
    run += [("upsert_call", n) for n in range(1, staged.call_rounds)]
    for kind in ("upsert_a_leg_call", "upsert_b_leg_call"):
        run += [(kind, n) for n in range(staged.switch_rounds)]
    if staged.leg_rounds:
        run.append(("first_legs", 0))
    run += [("upsert_leg", n) for n in range(1, staged.leg_rounds)]
    if staged.touched:
        # A new call whose legs are all new, and whose record already says what they
        # say, needs no recompute: the statement would read its legs to change nothing.
        run.append(("recompute", 0))
        literal["uuids"] = sql.quote([u for u in staged.touched if u not in staged.settled],
                                     conn)
    if staged.events:
        run.append(("insert_events", 0))
    if staged.decisions:
        run.append(("insert_decisions", 0))
    # The lock first: a PREPARE locks the tables it names until the commit, and a writer
    # holding them while it waits for the lock would block one that holds the lock and
    # adds a month's partition.
    message = [_LOCK]
    message += [_prepare(name) for name in dict.fromkeys(name for name, _ in run)
                if _PREFIX + name not in staged.prepared]
    message += [_EXECUTE[name].format(n=n, **literal) for name, n in run]
    if commit:
        message.append("COMMIT")
    conn.execute(";\n".join(message))
    return staged.calls
