"""FreeSWITCH's CDR of a leg → rated leg row + call row, made durable before we say so.

`CdrIngest.store(body)` is what `POST /fs/cdr` and `switchd cdr import` call. It returns
only once the record is durable: committed to PostgreSQL (the leg, the call, the call's
money recomputed from all its legs, cdr_batch.write_batch; one transaction for every CDR
waiting at that moment, see CdrIngest), or, when
PostgreSQL cannot be reached, appended and fsync'd to the writer's spool (replayed by the
CDR writer once the database is back). Anything else raises, so the HTTP answer is not
2xx and FreeSWITCH retries (then writes its error directory, which `switchd cdr import`
replays).

Merging with ESL is by leg UUID, in the database: the switch's leg row outranks ESL's
(cdr_batch._UPSERT_LEG), and the call's cost, billed seconds, provisional and unrated
flags are recomputed from its leg rows on every write (cdr_batch.RECOMPUTE_CALLS). So any
number of deliveries, in any order relative to ESL's hangup, give one call row and one row
per leg.
"""
from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Callable

import psycopg

from dialplan import rating
from dialplan.causes import disposition
from switchd.accounting import billing
from switchd import metrics
from switchd.accounting.cdrs.json_cdr import CdrFormatError, SwitchLeg, parse
from switchd.adapters.db import green
from switchd.adapters.db.cdr_writer import (LegRecord, SwitchCallRecord, _OUTAGE, _to_spool,
                                   write_batch)
from switchd.adapters.db.spool import Spool



log = logging.getLogger(__name__)

__all__ = ["CdrIngest", "CdrFormatError", "Stored", "to_records"]


@dataclass(frozen=True)
class Stored:
    leg_uuid: str
    call_uuid: str
    where: str          # 'database' | 'spool'
    cost: Decimal | None


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _at(us: int) -> datetime | None:
    """A µs epoch as a time (exact: no float); 0 is "never". json_cdr.parse has checked
    the range, so an answered leg always keeps its answer time."""
    return _EPOCH + timedelta(microseconds=us) if us else None


def to_records(leg: SwitchLeg, *, precision: int = 6,
               rounding_of: Callable[[str | None], str] | None = None,
               reprice: billing.Repricer | None = None
               ) -> tuple[LegRecord, SwitchCallRecord]:
    """Rate the leg from FreeSWITCH's own figures; pure apart from the metric."""
    carrier = leg.vars.get("switchd_carrier") or leg.gateway
    # A leg with switchd's tariff is a carrier leg, an originate attempt included (it has
    # no originator, so FreeSWITCH's CDR looks like an A-leg's).
    attempt = bool(leg.vars.get("switchd_carrier"))
    is_carrier = bool(carrier) and (attempt or not leg.is_a_leg)
    answered_at = _at(leg.answer_us)
    rated = rating.Rated(0, Decimal(0).quantize(Decimal(1).scaleb(-precision)))
    tariff = None
    if is_carrier:
        rounding = rounding_of(carrier) if rounding_of else rating.BILLSEC
        rated, tariff = billing.rate_vars(
            leg.vars, answered_at=answered_at, billsec=leg.billsec, billmsec=leg.billmsec,
            rounding=rounding, precision=precision, reprice=reprice, what=f"leg {leg.uuid}",
            hangup_disposition=leg.hangup_disposition, ended_at=_at(leg.end_us))
        if rated.cost is None:
            billing.count_unrated("switch", rated.unrated_reason, leg.uuid, leg.call_uuid)
    leg_rec = LegRecord(
        leg_uuid=leg.uuid, call_uuid=leg.call_uuid, direction=leg.direction,
        carrier=carrier if is_carrier else None, gateway=leg.gateway if is_carrier else None,
        started_at=_at(leg.start_us), answered_at=answered_at, ended_at=_at(leg.end_us),
        hangup_cause=leg.hangup_cause, sip_status=leg.sip_status,
        billmsec=leg.billmsec or 0, billed_seconds=rated.billed_seconds,
        rate_per_min=tariff.rate_per_min if tariff else None,
        connect_fee=tariff.connect_fee if tariff else None,
        increments=f"{tariff.initial}/{tariff.subsequent}" if tariff else None,
        cost=rated.cost, billsec=leg.billsec, cdr_source="switch", provisional=False,
        unrated=rated.cost is None,
        # the same PDD and disposition ESL would give, from the switch's own times
        progress_at=_at(leg.progress_us), pdd_ms=billing.pdd_between(leg.start_us, leg.progress_us, leg.answer_us),
        disposition=disposition(leg.hangup_cause, leg.sip_status, bool(leg.answer_us)))
    v = leg.vars
    call_rec = SwitchCallRecord(
        call_uuid=leg.call_uuid, from_a_leg=leg.is_a_leg and not attempt,
        # Without switchd's own label: a carrier leg or an originated A-leg → outbound.
        direction=v.get("switchd_direction") or (
            "inbound" if leg.is_a_leg and leg.direction == "inbound" else "outbound"),
        tenant=v.get("switchd_tenant"), route_id=_uuid_or_none(v.get("switchd_route_id")),
        caller=leg.caller if leg.is_a_leg and not attempt else None,
        destination=leg.destination if leg.is_a_leg and not attempt else None,
        started_at=_at(leg.start_us), answered_at=answered_at, ended_at=_at(leg.end_us),
        hangup_cause=leg.hangup_cause)
    return leg_rec, call_rec


def _uuid_or_none(text: str | None) -> str | None:
    try:
        return str(uuid.UUID(text)) if text else None
    except ValueError:
        return None


class _Pending:
    """One CDR's records waiting for the transaction that makes them durable."""
    __slots__ = ("items", "uuid", "where", "error")

    def __init__(self, items: list, uuid: str):
        self.items, self.uuid = items, uuid
        self.where: str | None = None          # 'database' | 'spool' once durable
        self.error: BaseException | None = None


class CdrIngest:
    """Durable intake of FreeSWITCH CDRs (thread- and greenlet-safe: one connection, locked).

    Group commit: FreeSWITCH posts each leg's CDR as the leg ends, so at a high call rate
    many posts wait at once. Whoever holds the lock writes every CDR that is waiting in one
    transaction and then tells each of them it is durable. A post that would be written
    alone first waits up to `gather` seconds for company (cdr.post_gather_ms): a bridged
    call's two legs end together and post within milliseconds of each other, so they
    share one transaction instead of paying one each (a transaction's statements, round
    trips and commit cost far more than its two rows); the wait ends as soon as a second
    post arrives. A batch PostgreSQL refuses as data is written again one CDR at a time,
    so a bad record fails its own post only."""

    def __init__(self, db_url: str, spool: Spool | None, *, precision: int = 6,
                 rounding_of: Callable[[str | None], str] | None = None,
                 reprice: billing.Repricer | None = None, encoded_values: bool = False,
                 connect_timeout: int = 3, commit_timeout: float = 0, gather: float = 0):
        self.db_url = db_url
        self.spool = spool
        self.precision = precision
        self.rounding_of = rounding_of
        self.reprice = reprice
        self.encoded_values = encoded_values
        self.connect_timeout = connect_timeout
        # A commit slower than this is cancelled and the group spooled instead: FreeSWITCH
        # holds each channel until its post is answered. Without a spool (`cdr import`) it
        # waits: the file stays where it is either way.
        self.commit_timeout = commit_timeout if spool is not None else 0
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()      # gevent-patched under the daemon
        self._waiting: deque[_Pending] = deque()   # append/popleft are atomic across threads
        # FreeSWITCH holds the leg's CHANNEL_HANGUP_COMPLETE until its post is answered, so
        # this is also how much later, at most, a lone leg's end reaches the registry.
        self.gather = gather
        self._company = threading.Event()           # set when a second post is waiting

    def store(self, body: bytes) -> Stored:
        """Parse, rate, make durable. CdrFormatError for a record we cannot read;
        SpoolError when neither PostgreSQL nor the spool took it."""
        leg = parse(body, self.encoded_values)
        leg_rec, call_rec = to_records(leg, precision=self.precision,
                                       rounding_of=self.rounding_of, reprice=self.reprice)
        pending = _Pending([("switch_call", call_rec), ("leg", leg_rec)], leg.uuid)
        self._waiting.append(pending)
        if len(self._waiting) > 1:
            self._company.set()
        with self._lock:
            if pending.where is None and pending.error is None:
                # Not written by the previous holder: write it with all that waits now.
                self._gather_company()
                group = []
                while self._waiting:
                    group.append(self._waiting.popleft())
                self._make_durable(group)
        if pending.error is not None:
            raise pending.error
        metrics.SWITCH_CDRS.labels("stored" if pending.where == "database" else "spooled").inc()
        return Stored(leg.uuid, leg.call_uuid, pending.where, leg_rec.cost)

    def _gather_company(self) -> None:
        """Under the lock: if the post in hand would be written alone, wait up to `gather`
        for a second one (the event is cleared before the queue is looked at, so a post
        that arrives in between is not missed)."""
        if self.gather <= 0:
            return
        self._company.clear()
        if len(self._waiting) == 1:
            self._company.wait(self.gather)

    def _make_durable(self, group: list[_Pending]) -> None:
        """Under the lock: every CDR of the group committed or spooled, or its error set."""
        try:
            write_batch(self._connection(), [item for p in group for item in p.items])
        except _OUTAGE as exc:
            self._close()
            metrics.DB_ERRORS.labels("switch_cdr").inc()
            log.warning("switch CDR %s: PostgreSQL unavailable or slower than "
                        "cdr.commit_timeout (%s); spooling",
                        ", ".join(p.uuid for p in group), str(exc).strip())
            self._spool(group, exc)
        except Exception as exc:
            if len(group) == 1:
                group[0].error = exc
                return
            for pending in group:       # find the one PostgreSQL refuses: each alone
                self._make_durable([pending])
        else:
            for pending in group:
                pending.where = "database"

    def _spool(self, group: list[_Pending], outage: Exception) -> None:
        if self.spool is None:          # `cdr import`: the source file stays instead
            for pending in group:
                pending.error = outage
            return
        try:
            self.spool.append([_to_spool(i) for p in group for i in p.items])  # fsync'd
        except Exception as exc:        # SpoolError: neither took it
            for pending in group:
                pending.error = exc
            return
        for pending in group:
            pending.where = "spool"

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            options = (f"-c statement_timeout={int(self.commit_timeout * 1000)}"
                       if self.commit_timeout else "")
            self._conn = green.connect(self.db_url, autocommit=True,
                                       connect_timeout=self.connect_timeout,
                                       application_name="switchd-cdr-ingest",
                                       options=options)
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass        # already broken
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self._close()
