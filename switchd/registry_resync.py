"""When events never come: resync from `show channels as json`, and the sweep.

Pure: parsing and grouping of FreeSWITCH's `show channels as json` / `show calls as json`
replies, and the reconciliation that `CallRegistry.resync` / `.sweep` delegate to (these
functions work on the registry's internals, as its own methods would; they live here to
keep registry.py readable). What the FreeSWITCH 1.10 captures in
tests/fixtures/freeswitch-1.10/esl-api.txt show, and the heuristics built on it:

- Empty: `{"row_count": 0}` with no "rows" key. All values are strings; `created_epoch`
  is whole seconds (so adopted legs have second resolution).
- Each row has `call_uuid`: the A-leg's UUID for both legs of a bridge, its own UUID for a
  lone originated leg. Rows group into calls by it. Should it be missing or empty (other
  versions, custom formats), `show calls as json` relates them: `uuid` is the A-leg,
  `b_uuid` the B-leg (`parse_show_calls_json` → {leg: call}); else a row is its own call.
- Leg state comes from `callstate` (DOWN, RINGING, EARLY, ACTIVE, HELD, HANGUP, ...);
  two ACTIVE legs of one call count as bridged. An adopted answered leg's answer time is
  its creation time (the earliest possible) until an event carries FreeSWITCH's own.
- A call the registry tracks whose channels FreeSWITCH no longer lists is closed: its legs
  get LegEnded(reconstructed, cause UNKNOWN_AFTER_RESYNC, end = the start of the ESL gap
  or now, billmsec unknown: billed provisionally, billing.rate_leg) and the call its
  CallEnded. Never a leg that may still be alive: created or heard from within
  RESYNC_LAG_US before the snapshot was requested (`show channels` lags new channels).
  Its real HANGUP_COMPLETE, should it come later, settles the leg (CallRegistry._settle). Rows of calls that already ended (stuck channels) are not
  re-adopted: they would end the same call twice. A row whose A-leg is gone is adopted
  under the A-leg's UUID with a completed stand-in A-leg, so it ends with its last leg.
- Rows say nothing of our channel variables, so tenant, route, max duration, rates are
  unknown (a `tenant_of(row)` hook may map e.g. `accountcode`). The gateway is known only
  when the channel name is `sofia/gateway/<gw>/...`; gateway legs are usually named
  `sofia/<profile>/<number>`, so adopted legs mostly have no carrier. Those fields fill
  in from the next events, which carry every variable.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from switchd.registry import Call, CallRegistry, Effect, Leg


class ResyncParseError(ValueError):
    """The reply is not a `show ... as json` answer we understand."""


@dataclass(frozen=True)
class ChannelRow:
    uuid: str
    direction: str = "inbound"
    created_us: int = 0
    name: str = ""
    state: str = ""                   # CS_EXECUTE, CS_EXCHANGE_MEDIA, ...
    callstate: str = ""               # DOWN, RINGING, EARLY, ACTIVE, HELD, HANGUP
    cid_num: str = ""
    dest: str = ""
    call_uuid: str | None = None      # the A-leg's UUID, when FreeSWITCH says
    accountcode: str = ""
    hostname: str = ""


_CALLSTATE_TO_LEG = {
    "DOWN": "created", "DIALING": "created",
    "RINGING": "ringing", "RING_WAIT": "ringing", "EARLY": "ringing",
    "ACTIVE": "answered", "HELD": "answered", "UNHELD": "answered",
    "HANGUP": "hungup",
}


def _rows(text: str) -> list[dict]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResyncParseError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or "row_count" not in data:
        raise ResyncParseError("no row_count: not a `show ... as json` reply")
    rows = data.get("rows", [])
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ResyncParseError("rows is not a list of objects")
    return rows


def parse_show_channels_json(text: str) -> list[ChannelRow]:
    out = []
    for i, r in enumerate(_rows(text)):
        uuid = r.get("uuid")
        if not uuid:
            raise ResyncParseError(f"row {i} has no uuid")
        try:
            created_us = int(r.get("created_epoch") or 0) * 1_000_000
        except ValueError:
            raise ResyncParseError(
                f"row {i}: bad created_epoch {r.get('created_epoch')!r}") from None
        out.append(ChannelRow(
            uuid=uuid, direction=r.get("direction") or "inbound", created_us=created_us,
            name=r.get("name", ""), state=r.get("state", ""), callstate=r.get("callstate", ""),
            cid_num=r.get("cid_num", ""), dest=r.get("dest", ""),
            call_uuid=r.get("call_uuid") or None, accountcode=r.get("accountcode", ""),
            hostname=r.get("hostname", "")))
    return out


def parse_show_calls_json(text: str) -> dict[str, str]:
    """{leg UUID: call (A-leg) UUID} for both legs of every bridged call."""
    links: dict[str, str] = {}
    for r in _rows(text):
        a = r.get("call_uuid") or r.get("uuid")
        if not a:
            continue
        links[r.get("uuid") or a] = a
        if r.get("b_uuid"):
            links[r["b_uuid"]] = a
    return links


def row_leg_state(row: ChannelRow) -> str:
    return _CALLSTATE_TO_LEG.get(row.callstate.upper(), "created")


def row_gateway(row: ChannelRow) -> str | None:
    parts = row.name.split("/")
    return parts[2] if len(parts) > 3 and parts[:2] == ["sofia", "gateway"] else None


def group_rows(rows: list[ChannelRow], links: dict[str, str]) -> dict[str, list[ChannelRow]]:
    """Rows by call UUID, the A-leg's row (UUID = call UUID) first when present."""
    groups: dict[str, list[ChannelRow]] = {}
    for row in rows:
        key = row.call_uuid or links.get(row.uuid) or row.uuid
        groups.setdefault(key, []).append(row)
    for key, group in groups.items():
        group.sort(key=lambda r: r.uuid != key)
    return groups


# --- reconciliation ---------------------------------------------------------------------
# `show channels` can lag a channel created a moment before (seen on FreeSWITCH 1.10.12),
# and switchd's and the switch's clocks may differ a little: a leg created, or heard from,
# within this margin before the snapshot was requested may be alive and is not closed.
RESYNC_LAG_US = 5_000_000


def may_be_alive(leg: Leg, requested_us: int, lag_us: int = RESYNC_LAG_US) -> bool:
    return (leg.created_us >= requested_us - lag_us
            or leg.last_event_us >= requested_us - lag_us)


def force_complete(reg: CallRegistry, call: Call, legs: list[Leg], now_us: int,
                   cause: str) -> list[Effect]:
    """Close legs whose HANGUP_COMPLETE will never come; the facts we had are kept."""
    from switchd.registry import LegEnded
    for leg in legs:
        leg.state, leg.reconstructed = "complete", True
        leg.hangup_us = leg.hangup_us or now_us
        leg.hangup_cause = leg.hangup_cause or cause
        call.reconstructed = True
    reg._refresh(call)
    # A leg we never heard of by itself (placeholder) gets no CDR row: nothing to say.
    return [LegEnded(l.snapshot(), call.snapshot()) for l in legs if not l.placeholder]


def sweep(reg: CallRegistry, now_us: int, grace_us: int) -> list[Effect]:
    from switchd.registry import CAUSE_SWEPT
    effects: list[Effect] = []
    for call in list(reg._calls.values()):
        a = call.a_leg
        if (a is None or a.state not in ("hungup", "complete") or not a.hangup_us
                or a.hangup_us + grace_us >= now_us or call.call_uuid in reg._awaiting):
            continue
        reg.counters["swept"] += 1
        open_legs = [l for l in call.legs if l.state != "complete"]
        effects += force_complete(reg, call, open_legs, now_us, CAUSE_SWEPT)
        effects += reg._maybe_end(call)
    return effects


def resync(reg: CallRegistry, rows: list[ChannelRow], now_us: int, links: dict[str, str],
           tenant_of: Callable[[ChannelRow], str | None] | None, *,
           requested_us: int | None = None, ended_us: int | None = None) -> list[Effect]:
    from switchd.registry import CAUSE_RESYNC
    present = {r.uuid for r in rows}
    requested = requested_us if requested_us is not None else now_us
    effects: list[Effect] = []
    for call in list(reg._calls.values()):
        missing = [l for l in call.legs if l.uuid not in present and l.state != "complete"]
        gone = [l for l in missing if not may_be_alive(l, requested)]
        if len(gone) < len(missing):
            # Not in the snapshot but possibly alive: left to its events or the next resync.
            reg.counters["resync_spared"] += len(missing) - len(gone)
        if gone:
            effects += force_complete(reg, call, gone, ended_us or now_us, CAUSE_RESYNC)
        if len(gone) == len(missing) and not any(l.uuid in present for l in call.legs):
            reg._awaiting.discard(call.call_uuid)    # nothing left for the job to report
        effects += reg._maybe_end(call)
    for key, group in group_rows(rows, links).items():
        effects += _adopt(reg, key, group, tenant_of)
    return effects


def _adopt(reg: CallRegistry, key: str, rows: list[ChannelRow],
           tenant_of: Callable[[ChannelRow], str | None] | None) -> list[Effect]:
    from switchd.registry import Call, CallAdopted, Leg
    found = reg._lookup(key)
    if found and found[1]:
        # FreeSWITCH still lists channels of a call we saw end: stuck channels, not calls.
        reg.counters["resync_stale_rows"] += len(rows)
        return []
    call = found[0] if found else Call(call_uuid=key, reconstructed=True)
    if found is None:
        reg._calls[key] = call
        if rows[0].uuid != key:
            # Its A-leg is gone already: a completed stand-in lets the call end with the rest.
            reg._add_leg(call, Leg(uuid=key, call_uuid=key, state="complete",
                                   placeholder=True, reconstructed=True), False)
        if tenant_of is not None:
            call.tenant = tenant_of(rows[0])
    bridged = sum(row_leg_state(r) == "answered" for r in rows) >= 2
    for row in rows:
        leg = reg._legs.get(row.uuid)
        if leg is None:
            if reg._lookup(row.uuid):
                continue              # a leg of an ended call
            leg = Leg(uuid=row.uuid, call_uuid=key)
            reg._add_leg(call, leg, False)
        elif not leg.placeholder:
            continue                  # known and followed by events: FreeSWITCH agrees
        state = row_leg_state(row)
        leg.placeholder, leg.reconstructed = False, True
        leg.state = "bridged" if bridged and state == "answered" else state
        leg.direction, leg.created_us = row.direction, row.created_us
        leg.gateway = leg.carrier = row_gateway(row)
        leg.caller, leg.destination = row.cid_num, row.dest
        # The earliest the answer can have been; FreeSWITCH's own time replaces it.
        leg.answered_us = row.created_us if leg.state in ("answered", "bridged") else 0
        reg.counters["resync_adopted_legs"] += 1
    reg._refresh(call)
    if call.state == "setup" and any(l.state in ("answered", "bridged") for l in call.legs):
        reg._call_step(call, "answer")
    if found is not None:
        return []
    a = call.a_leg
    if a is not None and a.state == "complete":
        reg._call_step(call, "a_leg_done")
    return [CallAdopted(call.snapshot())]
