"""What switchd knows of a call: its legs, the call, and the effects the registry
returns (frozen snapshots, so a writer reading them later sees the values of that
moment). Data only; the state machines are in registry.py."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

CAUSE_SWEPT = "UNKNOWN_AFTER_SWEEP"      # A-leg ended long ago, this leg's end never came
CAUSE_RESYNC = "UNKNOWN_AFTER_RESYNC"    # FreeSWITCH no longer has the channel


# The ESL headers a carrier leg's money depends on, and the Leg field each one fills.
MONEY_HEADERS = {"Caller-Channel-Answered-Time": "answered_us", "variable_billsec": "billsec",
                 "variable_billmsec": "billmsec"}


@dataclass
class Leg:
    uuid: str
    call_uuid: str
    direction: str = "inbound"
    state: str = "created"
    gateway: str | None = None
    carrier: str | None = None        # vars switchd_carrier, else the gateway name
    created_us: int = 0
    answered_us: int = 0
    progress_us: int = 0              # first ringing / early media (PDD), 0 = none seen
    hangup_us: int = 0
    hangup_cause: str | None = None
    sip_status: int | None = None
    billmsec: int | None = None       # None: unknown (e.g. closed by resync)
    billsec: int | None = None        # FreeSWITCH's variable_billsec, when the event had it
    hangup_disposition: str | None = None   # variable_sip_hangup_disposition (send_bye ...)
    vars: dict[str, str] = field(default_factory=dict)
    caller: str = ""
    destination: str = ""
    reconstructed: bool = False       # some fields guessed (resync / sweep), not from FS
    placeholder: bool = False         # known only by reference, no event seen yet
    last_event_us: int = 0            # Event-Date-Timestamp of its latest event
    listed_us: int = 0                # when the last `show channels` listing it was asked
    # Money figures FreeSWITCH sent in a form refused at the ESL edge (ChannelEvent.refused):
    # Leg field names among MONEY_HEADERS' values; rating flags the leg unrated when one is
    # still unknown at its end.
    refused: frozenset[str] = frozenset()

    def snapshot(self) -> Leg:
        # Spelled out: several per event on the hot path, where dataclasses.replace costs
        # 5x this. tests/test_registry.py checks that every field is carried over.
        return Leg(uuid=self.uuid, call_uuid=self.call_uuid, direction=self.direction,
                   state=self.state, gateway=self.gateway, carrier=self.carrier,
                   created_us=self.created_us, answered_us=self.answered_us,
                   progress_us=self.progress_us, hangup_us=self.hangup_us,
                   hangup_cause=self.hangup_cause, sip_status=self.sip_status,
                   billmsec=self.billmsec, billsec=self.billsec,
                   hangup_disposition=self.hangup_disposition, vars=dict(self.vars),
                   caller=self.caller, destination=self.destination,
                   reconstructed=self.reconstructed, placeholder=self.placeholder,
                   last_event_us=self.last_event_us, listed_us=self.listed_us,
                   refused=self.refused)


@dataclass
class Call:
    call_uuid: str                    # the A-leg's (or single originated leg's) UUID
    tenant: str | None = None
    direction: str | None = None
    route_id: str | None = None
    max_duration: int | None = None   # seconds
    campaign: str | None = None
    legs: list[Leg] = field(default_factory=list)
    state: str = "setup"              # setup | answered | ending | ended
    started_us: int = 0
    answered_us: int = 0              # first answer of any leg
    ended_us: int = 0
    hangup_cause: str | None = None   # the A-leg's
    caller: str = ""
    destination: str = ""
    carrier: str | None = None        # of the first answered carrier leg
    gateway: str | None = None
    attempts: int = 0                 # carrier legs
    first_choice_carrier: str | None = None
    reconstructed: bool = False
    aliases: list[str] = field(default_factory=list)   # former UUIDs (CHANNEL_UUID)
    # Placed by our originate, one `bgapi originate` per carrier attempt, each attempt its
    # own leg UUID (the first one is the call UUID): no A-leg waits for the others.
    originated: bool = False
    # An originated call's id as POST /v1/calls answered it (the first attempt's UUID) and
    # this attempt's number: a retry is a switch call of its own.
    origin_call: str | None = None
    origin_attempt: int | None = None

    @property
    def a_leg(self) -> Leg | None:
        return self.leg(self.call_uuid)

    def leg(self, uuid: str) -> Leg | None:
        return next((l for l in self.legs if l.uuid == uuid), None)

    def snapshot(self) -> Call:
        # Spelled out, as Leg.snapshot.
        return Call(call_uuid=self.call_uuid, tenant=self.tenant, direction=self.direction,
                    route_id=self.route_id, max_duration=self.max_duration,
                    campaign=self.campaign, legs=[l.snapshot() for l in self.legs],
                    state=self.state, started_us=self.started_us,
                    answered_us=self.answered_us, ended_us=self.ended_us,
                    hangup_cause=self.hangup_cause, caller=self.caller,
                    destination=self.destination, carrier=self.carrier, gateway=self.gateway,
                    attempts=self.attempts, first_choice_carrier=self.first_choice_carrier,
                    reconstructed=self.reconstructed, aliases=list(self.aliases),
                    originated=self.originated, origin_call=self.origin_call,
                    origin_attempt=self.origin_attempt)


def origin_of(variables: dict[str, str]) -> tuple[str, int | None] | None:
    """An originate attempt's (call id POST /v1/calls answered, attempt number) from its
    `switchd_*` channel variables; None for a call switchd did not originate."""
    origin = variables.get("switchd_origin_call")
    if not origin:
        return None
    attempt = variables.get("switchd_origin_attempt") or ""
    return origin, int(attempt) if attempt.isdigit() else None


# --- effects: what the daemon acts on --------------------------------------------------
@dataclass(frozen=True)
class CallStarted:
    call: Call


@dataclass(frozen=True)
class CallAnswered:                   # the max-duration watchdog's cue
    call: Call
    leg: Leg


@dataclass(frozen=True)
class LegEnded:                       # rate the leg and write it (key: leg UUID)
    leg: Leg
    call: Call


@dataclass(frozen=True)
class CarrierOutcome:                 # moves carrier health; dialplan/causes.py judges it
    carrier: str
    leg: Leg
    answered: bool
    hangup_cause: str | None
    sip_status: int | None


@dataclass(frozen=True)
class CallEnded:                      # release slots, write the CDR
    call: Call


@dataclass(frozen=True)
class CallRenamed:                    # caps leases follow the new UUID
    old: str
    new: str


@dataclass(frozen=True)
class CallAdopted:                    # found by resync; caps re-acquire / refresh
    call: Call


Effect = Union[CallStarted, CallAnswered, LegEnded, CarrierOutcome, CallEnded, CallRenamed,
               CallAdopted]
