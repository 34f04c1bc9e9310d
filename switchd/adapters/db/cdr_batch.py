"""One batch of CDR records into PostgreSQL, in one transaction: COPY, then set-based upserts.

Each kind of record is COPYed (binary) into a session-local staging table (created once per
connection, emptied at every commit), and moved into its table by one INSERT … SELECT …
ON CONFLICT per kind: a few statements per batch instead of one per record, and the
same upserts, so every rule of the row-by-row writer holds:

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
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, fields, replace
from datetime import date, datetime, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from itertools import repeat
from operator import attrgetter
from typing import Any, Callable, Iterable, Sequence

import gevent
import psycopg

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


def _amounts_last(cls, cols: list[str]) -> list[str]:
    """The COPY's column order: the amounts (formatted apart, see _copy_rows) last."""
    amounts = _amounts(cls)
    return [c for c in cols if c not in amounts] + [c for c in cols if c in amounts]


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


_STAGING = "\n".join([
    "SET LOCAL client_min_messages = warning;",
    # Every statement of a batch reaches the stored rows by key, a few per staged record:
    # index probes in nested loops, whatever the planner's statistics of a month that is
    # filling up say (a hash join over the month would read all of it, every batch).
    "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off;",
    "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off;",
    _table("switchd_stage_calls", CALL_COLS + ["n"], CALL_TYPES),
    _table("switchd_stage_switch_calls", SWITCH_COLS + ["a_leg", "n"], SWITCH_TYPES),
    _table("switchd_stage_legs", LEG_COLS + ["n"], LEG_TYPES),
    _table("switchd_stage_events", EVENT_COLS, EVENT_TYPES),
    _table("switchd_stage_decisions", DECISION_COLS, DECISION_TYPES),
])
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
# believes of the batch's size. Each statement returns the calls whose money must be
# recomputed whatever their records say (see apply()): usually none.
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
SELECT DISTINCT r.call_uuid FROM r WHERE {unsettled}"""


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
# legs are the rated ones (a carrier or gateway is known).
_LEG_MONEY = f"""SELECT count(*) AS legs,
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
_INSERT_EVENTS = (f"INSERT INTO call_events ({', '.join(EVENT_COLS)}) "
                  f"SELECT {', '.join(EVENT_COLS)} FROM switchd_stage_events "
                  "ON CONFLICT (core_uuid, event_seq, at) DO NOTHING")
_INSERT_DECISIONS = (
    f"INSERT INTO routing_decisions ({', '.join(DECISION_COLS)}) "
    f"SELECT {_select(DECISION_COLS, '').replace('created_at', 'COALESCE(created_at, now())')} "
    "FROM switchd_stage_decisions ON CONFLICT (id) DO NOTHING")

# Call and leg rows: the columns other than amounts in one attrgetter, then the amounts
# as text (_copy_rows).
_CALL_COPY_COLS = _amounts_last(CallRecord, CALL_COLS) + ["n"]
_LEG_COPY_COLS = _amounts_last(LegRecord, LEG_COLS) + ["n"]
def _values(names: list[str]) -> Callable[[Any], tuple]:
    """A record's values of these attributes, as a tuple (also of one)."""
    get = attrgetter(*names)
    return get if len(names) > 1 else lambda rec: (get(rec),)


_CALL_PLAIN = _values([c for c in CALL_COLS if c not in _amounts(CallRecord)])
_LEG_PLAIN = _values([c for c in LEG_COLS if c not in _amounts(LegRecord)])
_CALL_AMOUNTS = _values(_amounts(CallRecord))
_LEG_AMOUNTS = _values(_amounts(LegRecord))
_CALL_COPY_TYPES = _types(CallRecord, _CALL_COPY_COLS[:-1]) + ["bigint"]
_LEG_COPY_TYPES = _types(LegRecord, _LEG_COPY_COLS[:-1]) + ["bigint"]
_SWITCH_ROW = attrgetter(*SWITCH_COLS)
_EVENT_HEAD = attrgetter(*[c for c in EVENT_COLS if c != "data"])
assert EVENT_COLS[-1] == "data"


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


def _copy(cur: psycopg.Cursor, table: str, cols: list[str], types: list[str],
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


def stage_records(cur: psycopg.Cursor, records: list) -> StagedBatch:
    """stage() of records bare (each one's kind is its type, records.KIND_OF)."""
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

    cur.execute(_STAGING)
    # Rounds as lists of ints (None: all 0), not (record, round) pairs: see _settled_calls.
    call_ns, call_rounds = _rounds(calls, attrgetter("call_uuid"))
    switch_ns, switch_rounds = _rounds(switch, attrgetter("from_a_leg", "call_uuid"))
    leg_ns, leg_rounds = _rounds(legs, attrgetter("leg_uuid"))
    if calls:
        _copy(cur, "switchd_stage_calls", _CALL_COPY_COLS, _CALL_COPY_TYPES,
              ((*_CALL_PLAIN(r), *map(_amount_text, _CALL_AMOUNTS(r)), n)
               if type(r.route_id) is not uuid.UUID else
               (*_CALL_PLAIN(replace(r, route_id=str(r.route_id))),
                *map(_amount_text, _CALL_AMOUNTS(r)), n)
               for r, n in zip(calls, call_ns or repeat(0))))
    if switch:
        _copy(cur, "switchd_stage_switch_calls", SWITCH_COLS + ["a_leg", "n"], SWITCH_TYPES,
              ((*_SWITCH_ROW(r), r.from_a_leg, n) if type(r.route_id) is not uuid.UUID
               else (*_SWITCH_ROW(replace(r, route_id=str(r.route_id))), r.from_a_leg, n)
               for r, n in zip(switch, switch_ns or repeat(0))))
    if legs:
        _copy(cur, "switchd_stage_legs", _LEG_COPY_COLS, _LEG_COPY_TYPES,
              ((*_LEG_PLAIN(r), *map(_amount_text, _LEG_AMOUNTS(r)), n)
               for r, n in zip(legs, leg_ns or repeat(0))))
    if events:
        _copy(cur, "switchd_stage_events", EVENT_COLS, EVENT_TYPES,
              ((*_EVENT_HEAD(e), store.jsonb(e.data) if e.data else None) for e in events))
    if decisions:
        _copy(cur, "switchd_stage_decisions", DECISION_COLS, DECISION_TYPES, decision_rows)
    settled = _settled_calls(calls, call_ns, legs, leg_ns, switch)
    return StagedBatch(calls=len(calls), window=window, months=sorted(months),
                       call_rounds=call_rounds, switch_rounds=switch_rounds,
                       leg_rounds=leg_rounds, touched=sorted({r.call_uuid for r in keyed}),
                       settled=frozenset(settled),
                       events=bool(events), decisions=bool(decisions))


def apply(conn: psycopg.Connection, staged: StagedBatch, *, commit: bool = False) -> int:
    """Move the staged rows into their tables under the lock, kinds in a fixed order (in
    the same transaction as stage(); the caller commits, or with ``commit`` the COMMIT is
    the pipeline's last statement: one round trip less). Returns the call rows (CDRs).

    Pipeline mode, two round trips: the statements up to the legs, then, knowing which
    calls are new, the money recompute and the rest."""
    window = staged.window
    with conn.pipeline(), conn.cursor() as cur, conn.cursor() as first_calls, \
            conn.cursor() as first_legs:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        if staged.months:
            cur.execute("SELECT switchd_ensure_month(m) FROM unnest(%s::date[]) AS m",
                        (staged.months,))
        if staged.call_rounds:
            first_calls.execute(_FIRST_CALLS, window)
        for n in range(1, staged.call_rounds):
            cur.execute(_UPSERT_CALL, {**window, "n": n})
        for a_leg in (True, False):
            for n in range(staged.switch_rounds):
                cur.execute(_UPSERT_SWITCH_CALL[a_leg], {**window, "n": n})
        if staged.leg_rounds:
            first_legs.execute(_FIRST_LEGS, window)
        for n in range(1, staged.leg_rounds):
            cur.execute(_UPSERT_LEG, {**window, "n": n})
        # A new call whose legs are all new, and whose record already says what they
        # say, needs no recompute: the statement would read its legs to change nothing.
        # The first-round statements name the calls that are not new or whose legs are
        # not (fetching waits for the results; every settled call was in a first round).
        unsettled = set()
        for done, rounds in ((first_calls, staged.call_rounds), (first_legs, staged.leg_rounds)):
            if rounds:
                unsettled.update(row[0] for row in done.fetchall())
        skip = staged.settled - unsettled
        recompute = [u for u in staged.touched if u not in skip]
        if recompute:
            cur.execute(RECOMPUTE_CALLS, {**window, "uuids": recompute})
        if staged.events:
            cur.execute(_INSERT_EVENTS)
        if staged.decisions:
            cur.execute(_INSERT_DECISIONS)
        if commit:
            cur.execute("COMMIT")
    return staged.calls
