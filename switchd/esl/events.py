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
