"""Turn finished legs and calls from the registry into rated CDR records.

A carrier leg carries its own tariff as channel variables set by the router
(`switchd_rate`, `switchd_connect_fee`, `switchd_increments`, docs/internals.md), so rating
needs nothing but the event, even after a daemon restart. The call's cost is the sum of its
legs' costs, rounded once per leg at the stated precision (DESIGN.md §4).
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation

from dialplan import rating
from dialplan.causes import disposition
from switchd.db.cdr_writer import CallRecord, LegRecord

log = logging.getLogger(__name__)


def _at(us: int | None) -> datetime | None:
    if not us:
        return None
    try:
        return datetime.fromtimestamp(us / 1_000_000, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None     # a corrupt timestamp must not cost the CDR; the time is just unknown


def _tariff(leg) -> tuple[Decimal, Decimal, int, int] | None:
    vars_ = leg.vars or {}
    if "switchd_rate" not in vars_:
        return None
    try:
        rate = Decimal(vars_["switchd_rate"])
        fee = Decimal(vars_.get("switchd_connect_fee") or "0")
        initial, subsequent = rating.parse_increments(vars_.get("switchd_increments") or "60/60")
    except (InvalidOperation, ValueError) as exc:
        log.error("leg %s carries an unreadable tariff %r: %s; rated at zero",
                  leg.uuid, {k: v for k, v in vars_.items() if k.startswith("switchd_")}, exc,
                  extra={"call_uuid": leg.call_uuid})
        return None
    return rate, fee, initial, subsequent


def rate_leg(leg, precision: int = 6) -> LegRecord:
    tariff = _tariff(leg)
    billmsec = leg.billmsec or 0
    answered = bool(leg.answered_us)
    billed, cost = 0, Decimal(0)
    if tariff is not None and answered:
        rate, fee, initial, subsequent = tariff
        billed, cost = rating.leg_cost(billmsec, rate, fee, initial, subsequent, places=precision)
    return LegRecord(
        leg_uuid=leg.uuid, call_uuid=leg.call_uuid, direction=leg.direction,
        carrier=leg.carrier, gateway=leg.gateway, started_at=_at(leg.created_us),
        answered_at=_at(leg.answered_us), ended_at=_at(leg.hangup_us),
        hangup_cause=leg.hangup_cause, sip_status=leg.sip_status, billmsec=billmsec,
        billed_seconds=billed,
        rate_per_min=tariff[0] if tariff else None,
        connect_fee=tariff[1] if tariff else None,
        increments=f"{tariff[2]}/{tariff[3]}" if tariff else None,
        cost=cost,
        progress_at=_at(getattr(leg, "progress_us", 0)),
        pdd_ms=pdd_ms(leg),
        disposition=disposition(leg.hangup_cause, leg.sip_status, answered))


def pdd_ms(leg) -> int | None:
    """Post-dial delay: the leg's start to its first ringing or early media (CHANNEL_PROGRESS
    / _MEDIA), or to its answer when it answered without either; None for a leg that never
    showed a sign of life (or whose start is unknown)."""
    start = leg.created_us
    first = getattr(leg, "progress_us", 0) or leg.answered_us
    if not start or not first or first < start:
        return None
    return (first - start) // 1000


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
        cost=sum((leg.cost for leg in carrier_legs), Decimal(0)),
        reconstructed=bool(call.reconstructed),
        pdd_ms=last.pdd_ms if last else None,
        disposition=last.disposition if last else None)
