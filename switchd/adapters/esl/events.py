"""Typed events: the edge where raw ESL headers stop (STYLE.md §4).

Dataclasses are the contract (docs/internals.md); the parsing functions below build them.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from dialplan import validate
from dialplan.failover import leg_sip_status
from switchd.adapters.esl.framing import _unquote_many

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChannelEvent:
    name: str
    uuid: str
    call_uuid: str
    other_leg_uuid: str | None = None
    direction: str = "inbound"
    timestamp_us: int = 0
    sequence: int = 0
    core_uuid: str = ""
    caller_number: str = ""
    destination_number: str = ""
    gateway: str | None = None
    created_us: int = 0
    answered_us: int = 0
    progress_us: int = 0       # first of Caller-Channel-Progress(-Media)-Time, 0 = none yet
    hangup_us: int = 0
    hangup_cause: str | None = None
    sip_status: int | None = None
    billmsec: int | None = None
    billsec: int | None = None         # variable_billsec: FreeSWITCH's own billed seconds
    # variable_sip_hangup_disposition: send_bye / recv_bye / send_cancel / recv_refuse ...
    # (send_bye on a leg never answered: the carrier's 2xx came, FreeSWITCH refused it)
    hangup_disposition: str | None = None
    origination_uuid: str | None = None
    vars: dict[str, str] = field(default_factory=dict)   # switchd_* channel variables
    # Integer headers the event carried but that were refused at this edge (not an integer,
    # or outside INT_HEADERS' range): each is logged and taken as absent here; the leg's
    # rating flags it unrated when its money depended on one (billing.rate_leg).
    refused: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobEvent:
    job_uuid: str
    body: str

    @property
    def ok(self) -> bool:
        return self.body.startswith("+OK")


@dataclass(frozen=True)
class GatewayEvent:
    kind: str                  # 'state' | 'add' | 'delete'
    gateway: str
    state: str | None = None
    ping_status: str | None = None
    status: str | None = None


@dataclass(frozen=True)
class HeartbeatEvent:
    timestamp_us: int = 0


# Exactly what the daemon consumes (DESIGN §11: FreeSWITCH drops slow listeners, so no ALL).
# CHANNEL_UUID follows uuid renames (e.g. an originate whose leg takes a new UUID).
SUBSCRIBED_EVENTS: tuple[str, ...] = (
    "CHANNEL_CREATE", "CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA", "CHANNEL_ANSWER",
    "CHANNEL_BRIDGE", "CHANNEL_HANGUP",
    "CHANNEL_HANGUP_COMPLETE", "CHANNEL_UUID", "BACKGROUND_JOB", "HEARTBEAT",
    "CUSTOM", "sofia::gateway_state", "sofia::gateway_add", "sofia::gateway_delete",
)

CHANNEL_EVENTS = frozenset({"CHANNEL_CREATE", "CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA",
                            "CHANNEL_ANSWER", "CHANNEL_BRIDGE",
                            "CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE", "CHANNEL_UUID"})
_GATEWAY_KINDS = {"sofia::gateway_state": "state", "sofia::gateway_add": "add",
                  "sofia::gateway_delete": "delete"}

# ChannelEvent has no field for the previous UUID of a CHANNEL_UUID rename; it travels in
# `vars` under this key, which cannot clash with a `switchd_*` variable.
OLD_UUID_VAR = "old_unique_id"

# Names (CUSTOM: subclasses) that to_typed turns into something; the rest are skipped.
TYPED_NAMES = CHANNEL_EVENTS | {"BACKGROUND_JOB", "HEARTBEAT"} | set(_GATEWAY_KINDS)

TypedEvent = ChannelEvent | JobEvent | GatewayEvent | HeartbeatEvent


def subscription_command(fmt: str = "plain", events: tuple[str, ...] = SUBSCRIBED_EVENTS) -> str:
    """The ``event plain ...`` line the supervisor sends after authenticating."""
    from switchd.adapters.esl.commands import event_subscription
    return event_subscription(events, fmt)


def event_label(headers: dict[str, str]) -> str:
    """A bounded metric label: the event's name if we subscribe to it, else 'other'."""
    name = headers.get("Event-Name", "")
    if name == "CUSTOM":
        name = headers.get("Event-Subclass", "")
    return name if name in _LABELS else "other"


_LABELS = frozenset(SUBSCRIBED_EVENTS)


# Every integer header a ChannelEvent reads, and what it may hold (validate.SWITCH_INTS,
# as for the switch's JSON CDR): a value PostgreSQL could not store would fail the CDR
# writer's whole batch, a time no datetime holds would lose an answered leg's answer.
INT_HEADERS = {
    "Event-Date-Timestamp": "uepoch", "Event-Sequence": "sequence",
    "Caller-Channel-Created-Time": "uepoch", "Caller-Channel-Answered-Time": "uepoch",
    "Caller-Channel-Progress-Time": "uepoch", "Caller-Channel-Progress-Media-Time": "uepoch",
    "Caller-Channel-Hangup-Time": "uepoch", "variable_sip_term_status": "sip_status",
    "variable_billmsec": "billmsec", "variable_billsec": "billsec",
}


_RANGES = {header: validate.SWITCH_INTS[kind] for header, kind in INT_HEADERS.items()}


def _checked(h: dict[str, str], header: str, refused: list[tuple[str, str]]) -> int | None:
    """The header's integer, None when absent; a value INT_HEADERS refuses is None too,
    (header, reason) added to `refused`."""
    value = h.get(header)
    if not value:
        return None
    if value.isdigit() and value.isascii() and len(value) < 19:
        # the hot path (ten headers an event): what validate.switch_int accepts, inline
        number = int(value)
        low, high = _RANGES[header]
        if low <= number <= high:
            return number
    try:
        return validate.switch_int(value, INT_HEADERS[header])
    except validate.Invalid as exc:
        refused.append((header, str(exc)))
        return None


def _first(a: int, b: int) -> int:
    """The earlier non-zero timestamp of two (0 when neither is set)."""
    return (a if a < b else b) if a and b else a or b


def _channel(name: str, h: dict[str, str],
             switchd_vars: dict[str, str] | None = None) -> ChannelEvent:
    """The typed event from decoded headers; `switchd_vars` (the `switchd_*` variables
    without their "variable_" prefix) when the caller has collected them, else read
    from `h`."""
    get = h.get
    uuid = get("Unique-ID", "")
    call_uuid = get("Channel-Call-UUID") or uuid
    if switchd_vars is None:
        switchd_vars = {k[9:]: v for k, v in h.items() if k.startswith("variable_switchd_")}
    if name == "CHANNEL_UUID" and get("Old-Unique-ID"):
        switchd_vars[OLD_UUID_VAR] = h["Old-Unique-ID"]
    refused: list[tuple[str, str]] = []
    event = ChannelEvent(
        name=name,
        uuid=uuid,
        call_uuid=call_uuid,
        other_leg_uuid=get("Other-Leg-Unique-ID") or None,
        direction=get("Call-Direction") or "inbound",
        timestamp_us=_checked(h, "Event-Date-Timestamp", refused) or 0,
        sequence=_checked(h, "Event-Sequence", refused) or 0,
        core_uuid=get("Core-UUID", ""),
        caller_number=get("Caller-Caller-ID-Number", ""),
        destination_number=get("Caller-Destination-Number", ""),
        gateway=get("variable_sip_gateway_name") or None,
        created_us=_checked(h, "Caller-Channel-Created-Time", refused) or 0,
        answered_us=_checked(h, "Caller-Channel-Answered-Time", refused) or 0,
        progress_us=_first(_checked(h, "Caller-Channel-Progress-Time", refused) or 0,
                           _checked(h, "Caller-Channel-Progress-Media-Time", refused) or 0),
        hangup_us=_checked(h, "Caller-Channel-Hangup-Time", refused) or 0,
        hangup_cause=get("Hangup-Cause") or get("variable_hangup_cause") or None,
        sip_status=leg_sip_status(_checked(h, "variable_sip_term_status", refused),
                                  get("variable_proto_specific_hangup_cause")),
        billmsec=_checked(h, "variable_billmsec", refused),
        billsec=_checked(h, "variable_billsec", refused),
        hangup_disposition=get("variable_sip_hangup_disposition") or None,
        origination_uuid=get("variable_origination_uuid") or None,
        vars=switchd_vars,
        refused=tuple(header for header, _ in refused),
    )
    for header, reason in refused:
        log.warning("%s of leg %s: %s %s; taken as absent", name, uuid, header, reason,
                    extra={"call_uuid": call_uuid})
    return event


# Every line _channel reads (the channel's own headers, the channel variables it reads and
# every `switchd_*` variable), all read in one regex pass over the event's lines that stops
# at the blank line ending the header block. A line's name ends at its first ": " (the
# lazy `.*?`), as in the full parse; `.` stops at the end of the line. sre tries the
# alternatives in turn at each of an event's ~200 lines, most of which are none of these:
# grouped by shared prefixes (the variables, ~3/4 of the lines, first), a line fails after
# a few characters. One `str.find` per header cost more: a call and a scan from the start
# each, and a scan of the whole event for each header an event lacks (Hangup-Cause until
# the hangup). Groups: the name, a `switchd_*` variable's name without "variable_", the
# raw value, and the blank line.
_LINE = re.compile(r"""\n(?:
    (   variable_(?:(switchd_.*?) | sip_gateway_name | sip_term_status | hangup_cause
                   | billmsec | billsec | origination_uuid | sip_hangup_disposition
                   | proto_specific_hangup_cause)
      | Caller-(?:Caller-ID-Number | Destination-Number
                 | Channel-(?:Created|Answered|Progress|Progress-Media|Hangup)-Time)
      | Event-(?:Name|Date-Timestamp|Sequence)
      | Unique-ID | Channel-Call-UUID | Call-Direction | Core-UUID | Other-Leg-Unique-ID
      | Hangup-Cause | Old-Unique-ID
    ):\ (.*)
  | (\n)
)""", re.VERBOSE)


def channel_event_from_plain(body: bytes) -> ChannelEvent | None:
    """``to_typed(parse_event_plain(body))`` for a plain CHANNEL_* event, reading only the
    ~25 headers a ChannelEvent needs of the ~200 the event carries (the reader's hot path).

    Exact, not a heuristic: lines are read as in the full parse (split at "\n", a name
    ends at its first ": ", the header block at the first blank line), the first of
    duplicate headers wins, as in the full parse, and the same URL-decoding applies. Tests
    hold the two equal on every captured event and on generated ones. Returns None for
    anything else (the caller then takes the full path). A nested body is not read:
    channel events have none.
    """
    # Each line, the first too, starts after a "\n". An empty first line needs none: then
    # "\n\n" at 0 is a blank line only if the body starts with one, as in the full parse.
    text = body.decode("utf-8", "replace")
    if not text.startswith("\n"):
        text = "\n" + text
    h: dict[str, str] = {}
    switchd_vars: dict[str, str] = {}
    for name, switchd, value, blank_line in _LINE.findall(text):
        if switchd:
            switchd_vars.setdefault(switchd, value)
        elif blank_line:
            break
        else:
            h.setdefault(name, value)
    name = h.get("Event-Name")
    if name not in CHANNEL_EVENTS or not h.get("Unique-ID"):
        return None
    encoded = [(h, n) for n, v in h.items() if "%" in v]
    encoded += [(switchd_vars, n) for n, v in switchd_vars.items() if "%" in v]
    if encoded:
        for (where, n), value in zip(encoded, _unquote_many([w[n] for w, n in encoded])):
            where[n] = value
        name = h["Event-Name"]
        if name not in CHANNEL_EVENTS or not h.get("Unique-ID"):
            return None
    return _channel(name, h, switchd_vars)


def to_typed(headers: dict[str, str]) -> TypedEvent | None:
    """The typed event for a parsed event's headers; None for events switchd does not use.

    Works for plain and JSON events alike (both give decoded string values).
    """
    name = headers.get("Event-Name")
    if name in CHANNEL_EVENTS:
        if not headers.get("Unique-ID"):
            return None
        return _channel(name, headers)
    if name == "BACKGROUND_JOB":
        job_uuid = headers.get("Job-UUID")
        return JobEvent(job_uuid=job_uuid, body=headers.get("_body", "")) if job_uuid else None
    if name == "HEARTBEAT":
        refused: list[tuple[str, str]] = []
        timestamp_us = _checked(headers, "Event-Date-Timestamp", refused) or 0
        for header, reason in refused:
            log.warning("HEARTBEAT: %s %s; taken as absent", header, reason)
        return HeartbeatEvent(timestamp_us=timestamp_us)
    if name == "CUSTOM":
        kind = _GATEWAY_KINDS.get(headers.get("Event-Subclass", ""))
        gateway = headers.get("Gateway")
        if kind is None or not gateway:
            return None
        return GatewayEvent(kind=kind, gateway=gateway, state=headers.get("State"),
                            ping_status=headers.get("Ping-Status"), status=headers.get("Status"))
    return None
