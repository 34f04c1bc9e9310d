"""The records the CDR writer stores: one dataclass per row kind (calls, call_legs, the
switch's view of a call, call_events). Routing decisions travel as plain dicts
(store.DECISION_COLUMNS)."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any


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


# The kind names the spool and write_batch's (kind, record) pairs use for each record type.
KINDS = {"call": CallRecord, "leg": LegRecord, "event": EventRecord,
         "switch_call": SwitchCallRecord}
# A record's kind from its type (a routing decision is a dict): the writer's queue holds
# records bare, so queueing one allocates nothing.
KIND_OF: dict[type, str] = {cls: kind for kind, cls in KINDS.items()} | {dict: "decision"}
