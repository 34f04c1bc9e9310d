"""Typed events: the edge where raw ESL headers stop (STYLE.md §4).

Dataclasses are the contract (docs/internals.md); the parsing functions below build them.
"""
from __future__ import annotations

from dataclasses import dataclass, field


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
    hangup_us: int = 0
    hangup_cause: str | None = None
    sip_status: int | None = None
    billmsec: int | None = None
    origination_uuid: str | None = None
    vars: dict[str, str] = field(default_factory=dict)   # switchd_* channel variables


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
    "CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_BRIDGE", "CHANNEL_HANGUP",
    "CHANNEL_HANGUP_COMPLETE", "CHANNEL_UUID", "BACKGROUND_JOB", "HEARTBEAT",
    "CUSTOM", "sofia::gateway_state", "sofia::gateway_add", "sofia::gateway_delete",
)

CHANNEL_EVENTS = frozenset({"CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_BRIDGE",
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
    from switchd.esl.commands import event_subscription
    return event_subscription(events, fmt)


def event_label(headers: dict[str, str]) -> str:
    """A bounded metric label: the event's name if we subscribe to it, else 'other'."""
    name = headers.get("Event-Name", "")
    if name == "CUSTOM":
        name = headers.get("Event-Subclass", "")
    return name if name in _LABELS else "other"


_LABELS = frozenset(SUBSCRIBED_EVENTS)


def _int(value: str | None, default: int = 0) -> int:
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        return default


def _opt_int(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _channel(name: str, h: dict[str, str]) -> ChannelEvent:
    uuid = h.get("Unique-ID", "")
    switchd_vars = {k[9:]: v for k, v in h.items() if k.startswith("variable_switchd_")}
    if name == "CHANNEL_UUID" and h.get("Old-Unique-ID"):
        switchd_vars[OLD_UUID_VAR] = h["Old-Unique-ID"]
    return ChannelEvent(
        name=name,
        uuid=uuid,
        call_uuid=h.get("Channel-Call-UUID") or uuid,
        other_leg_uuid=h.get("Other-Leg-Unique-ID") or None,
        direction=h.get("Call-Direction") or "inbound",
        timestamp_us=_int(h.get("Event-Date-Timestamp")),
        sequence=_int(h.get("Event-Sequence")),
        core_uuid=h.get("Core-UUID", ""),
        caller_number=h.get("Caller-Caller-ID-Number", ""),
        destination_number=h.get("Caller-Destination-Number", ""),
        gateway=h.get("variable_sip_gateway_name") or None,
        created_us=_int(h.get("Caller-Channel-Created-Time")),
        answered_us=_int(h.get("Caller-Channel-Answered-Time")),
        hangup_us=_int(h.get("Caller-Channel-Hangup-Time")),
        hangup_cause=h.get("Hangup-Cause") or h.get("variable_hangup_cause") or None,
        sip_status=_opt_int(h.get("variable_sip_term_status")),
        billmsec=_opt_int(h.get("variable_billmsec")),
        origination_uuid=h.get("variable_origination_uuid") or None,
        vars=switchd_vars,
    )


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
        return HeartbeatEvent(timestamp_us=_int(headers.get("Event-Date-Timestamp")))
    if name == "CUSTOM":
        kind = _GATEWAY_KINDS.get(headers.get("Event-Subclass", ""))
        gateway = headers.get("Gateway")
        if kind is None or not gateway:
            return None
        return GatewayEvent(kind=kind, gateway=gateway, state=headers.get("State"),
                            ping_status=headers.get("Ping-Status"), status=headers.get("Status"))
    return None
