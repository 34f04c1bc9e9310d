"""Turn finished legs into rated CDR records: from ESL (the registry) or from FreeSWITCH's
own CDR (switchd.accounting.cdrs). Both rate through `rate_vars`, so the same facts give the same cost.

A carrier leg carries its own tariff as channel variables set by the router
(`switchd_rate`, `switchd_connect_fee`, `switchd_increments`, `switchd_prefix`,
docs/internals.md), so rating needs nothing but the leg, even after a daemon restart.
Billed seconds follow FreeSWITCH's billsec unless the carrier's agreement says
`ceil_ms` (dialplan.rating). A leg the carrier answered but FreeSWITCH refused at once
(its 2xx ACKed, then a BYE, never marked answered: rating.answered_by_carrier_only) is
rated as an answer of a moment, priced at its hangup time. A leg that cannot be rated is
flagged `unrated` with cost None and counted (metric), never silently 0. A leg closed
without its hangup (resync, sweep) is `provisional`: billed from what is known (answer
time to the estimated end) until FreeSWITCH's CDR for it settles the money.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Callable, Mapping

from dialplan import rating, validate
from switchd import metrics
from dialplan.causes import call_disposition, disposition
from switchd.adapters.db.cdr_writer import CallRecord, LegRecord

log = logging.getLogger(__name__)

# (carrier, prefix, answered_at) -> the deck's Tariff in force then, or None.
Repricer = Callable[[str, str, datetime], "rating.Tariff | None"]


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _at(us: int | None) -> datetime | None:
    """A µs epoch as a time, exactly (no float); 0 is "never". The ESL edge refuses times
    outside 0..validate.MAX_UEPOCH; one that reaches here anyway is just unknown."""
    if not us or not 0 < us <= validate.MAX_UEPOCH:
        return None
    return _EPOCH + timedelta(microseconds=us)


def route_tariff(vars_: dict, what: str = "leg") -> rating.Tariff | None:
    """The tariff the router chose, from the leg's switchd_* variables; None when absent
    or unreadable (logged: that leg will be unrated)."""
    if not vars_.get("switchd_rate"):
        return None
    try:
        # What a deck row can hold (numeric(12,6)), as the leg row stores it.
        rate = validate.RATE(vars_["switchd_rate"])
        fee = validate.RATE(vars_.get("switchd_connect_fee") or "0")
        initial, subsequent = rating.parse_increments(vars_.get("switchd_increments") or "60/60")
    except (InvalidOperation, ValueError) as exc:
        log.error("%s carries an unreadable tariff %r: %s; left unrated", what,
                  {k: v for k, v in vars_.items() if k.startswith("switchd_")}, exc)
        return None
    return rating.Tariff(rate, fee, initial, subsequent)


def rate_vars(vars_: dict, *, answered_at: datetime | None, billsec: int | None,
              billmsec: int | None, rounding: str = rating.BILLSEC, precision: int = 6,
              reprice: Repricer | None = None, what: str = "leg",
              hangup_disposition: str | None = None, ended_at: datetime | None = None,
              unreadable: frozenset[str] = frozenset()
              ) -> tuple[rating.Rated, rating.Tariff | None]:
    """Rate a carrier leg: the route's tariff, or the deck's rate for the same prefix in
    force at the answer time when that differs (an effective-date change between routing
    and answer). A leg the carrier answered and FreeSWITCH never marked answered (its
    `hangup_disposition`, rating.answered_by_carrier_only) is an answer of a moment,
    priced as of the leg's end, `ended_at`. `unreadable`: the figures the switch sent
    that could not be read (rating.rate)."""
    answered = answered_at is not None
    refused_answer = rating.answered_by_carrier_only(answered, hangup_disposition)
    priced_at = ended_at if refused_answer else answered_at
    tariffs = []
    base = route_tariff(vars_, what)
    if base is not None:
        tariffs.append(base)
    carrier, prefix = vars_.get("switchd_carrier"), vars_.get("switchd_prefix")
    if reprice is not None and priced_at is not None and carrier and prefix:
        at_answer = reprice(carrier, prefix, priced_at)
        if at_answer is not None:
            # In force at the answer time by construction: it outranks the route's.
            tariffs.append(rating.Tariff(at_answer.rate_per_min, at_answer.connect_fee,
                                         at_answer.initial, at_answer.subsequent,
                                         effective_from=priced_at))
    rated = rating.rate(answered=answered, billsec=billsec, billmsec=billmsec,
                        tariffs=tariffs, answered_at=priced_at, rounding=rounding,
                        places=precision, refused_answer=refused_answer,
                        unreadable=unreadable)
    return rated, rating.tariff_at(tariffs, priced_at)


def deck_repricer(decks: Callable[[], Mapping]) -> Repricer:
    """A Repricer over the live decks (carrier → RateDeck): the carrier's dated row for the
    prefix in force at the answer time, when the deck has one (a price change by effective
    date between routing and answer). Undated rows are what the router already chose from;
    a whole deck swapped in at its start between routing and answer is not seen here
    (docs/rates.md)."""
    def reprice(carrier: str, prefix: str, answered_at: datetime) -> rating.Tariff | None:
        deck = decks().get(carrier)
        if deck is None or not prefix.isdigit():
            return None
        try:
            row = deck.lookup(prefix, answered_at)
        except ValueError:
            return None
        if row is None or row.effective_from is None:
            return None
        return rating.Tariff(row.rate_per_min, row.connect_fee, row.initial_increment,
                             row.subsequent_increment, row.effective_from)
    return reprice


def fs_billsec(answered_us: int, hangup_us: int) -> int:
    """FreeSWITCH's billsec from the two times: end_epoch - answer_epoch (whole seconds
    of the wall clock, truncated each): what the switch itself reports."""
    return max(hangup_us // 1_000_000 - answered_us // 1_000_000, 0)


# Leg fields (calls.model.MONEY_HEADERS) → the figure names rating.rate knows.
_UNREADABLE = {"answered_us": "answer", "billsec": "billsec", "billmsec": "billmsec"}


def rate_leg(leg, precision: int = 6, rounding_of: Callable[[str | None], str] | None = None,
             reprice: Repricer | None = None) -> LegRecord:
    """A registry leg (its HANGUP_COMPLETE seen, or closed by resync/sweep) → LegRecord."""
    provisional = bool(leg.reconstructed)
    billsec, billmsec = leg.billsec, leg.billmsec
    # Figures FreeSWITCH sent that the ESL edge refused, and no event gave since.
    unknown = {"answered_us": not leg.answered_us, "billsec": billsec is None,
               "billmsec": billmsec is None}
    unreadable = frozenset(_UNREADABLE[f] for f in leg.refused if unknown[f])
    if leg.answered_us and billsec is None and leg.hangup_us and not unreadable:
        # FreeSWITCH's own formula on FreeSWITCH's times (the event lacked billsec).
        billsec = fs_billsec(leg.answered_us, leg.hangup_us)
        if billmsec is None:
            # Closed without its hangup: answer to the estimated end (docs/storage.md).
            billmsec = max((leg.hangup_us - leg.answered_us) // 1000, 0)
            provisional = True
    is_carrier = bool(leg.carrier or leg.gateway)
    answered_at = _at(leg.answered_us)
    rated, tariff = rating.Rated(0, Decimal(0).quantize(Decimal(1).scaleb(-precision))), None
    if is_carrier:
        rounding = rounding_of(leg.carrier) if rounding_of else rating.BILLSEC
        rated, tariff = rate_vars(
            leg.vars or {}, answered_at=answered_at, billsec=billsec, billmsec=billmsec,
            rounding=rounding, precision=precision, reprice=reprice, what=f"leg {leg.uuid}",
            hangup_disposition=leg.hangup_disposition, ended_at=_at(leg.hangup_us),
            unreadable=unreadable)
    return LegRecord(
        leg_uuid=leg.uuid, call_uuid=leg.call_uuid, direction=leg.direction,
        carrier=leg.carrier, gateway=leg.gateway, started_at=_at(leg.created_us),
        answered_at=answered_at, ended_at=_at(leg.hangup_us),
        hangup_cause=leg.hangup_cause, sip_status=leg.sip_status, billmsec=billmsec or 0,
        billed_seconds=rated.billed_seconds,
        rate_per_min=tariff.rate_per_min if tariff else None,
        connect_fee=tariff.connect_fee if tariff else None,
        increments=f"{tariff.initial}/{tariff.subsequent}" if tariff else None,
        cost=rated.cost, billsec=billsec, cdr_source="esl", provisional=provisional,
        unrated=rated.cost is None,
        progress_at=_at(getattr(leg, "progress_us", 0)),
        pdd_ms=pdd_ms(leg),
        disposition=disposition(leg.hangup_cause, leg.sip_status, answered_at is not None))


def count_unrated(source: str, reason: str | None, leg_uuid: str, call_uuid: str | None) -> None:
    metrics.UNRATED_LEGS.labels(source).inc()
    log.error("carrier leg %s unrated (%s); flagged, cost left empty", leg_uuid, reason,
              extra={"call_uuid": call_uuid})


def pdd_ms(leg) -> int | None:
    """Post-dial delay: the leg's start to its first ringing or early media (CHANNEL_PROGRESS
    / _MEDIA), or to its answer when it answered without either; None for a leg that never
    showed a sign of life (or whose start is unknown)."""
    return pdd_between(leg.created_us, getattr(leg, "progress_us", 0), leg.answered_us)


def pdd_between(start_us: int, progress_us: int, answered_us: int) -> int | None:
    """pdd_ms from the three times (µs epochs, 0 = none); the switch's CDR uses it too."""
    first = progress_us or answered_us
    if not start_us or not first or first < start_us:
        return None
    pdd_ms = (first - start_us) // 1000
    # pdd_ms is an integer column; weeks of "dialling" are no PDD
    return pdd_ms if pdd_ms <= validate.INT32_MAX else None


def call_record(call, legs: list[LegRecord], ended_us: int | None = None) -> CallRecord:
    carrier_legs = [leg for leg in legs if leg.carrier or leg.gateway]
    answered = next((leg for leg in carrier_legs if leg.answered_at), None)
    last = answered or (carrier_legs[-1] if carrier_legs else None)
    a_leg = next((leg for leg in call.legs if leg.uuid == call.call_uuid), None)
    ended = max((leg.ended_at for leg in legs if leg.ended_at), default=None) or _at(ended_us)
    return CallRecord(
        call_uuid=call.call_uuid,
        direction=call.direction or "outbound",
        tenant=call.tenant,
        route_id=call.route_id,
        caller=getattr(call, "caller", None),
        destination=getattr(call, "destination", None),
        started_at=_at(call.started_us),
        answered_at=answered.answered_at if answered else _at(call.answered_us),
        ended_at=ended,
        hangup_cause=(call.hangup_cause if getattr(call, "originated", False) and call.hangup_cause
                      else a_leg.hangup_cause if a_leg and a_leg.hangup_cause
                      else last.hangup_cause if last else None),
        carrier=last.carrier if last else None,
        gateway=last.gateway if last else None,
        first_choice_carrier=call.first_choice_carrier,
        attempts=len(carrier_legs),
        billed_seconds=sum(leg.billed_seconds for leg in carrier_legs),
        # Unrated legs add nothing here; the row's `unrated` flag (recomputed from the
        # legs by the writer) says the sum is incomplete.
        cost=sum((leg.cost for leg in carrier_legs if leg.cost is not None), Decimal(0)),
        reconstructed=bool(call.reconstructed) or any(leg.provisional for leg in legs),
        pdd_ms=last.pdd_ms if last else None,
        disposition=call_disposition(last.disposition if last else None, bool(last),
                                     a_leg.hangup_cause if a_leg else None))
