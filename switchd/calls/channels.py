"""FreeSWITCH's `show channels as json` / `show calls as json` replies, parsed into
ChannelRow and grouped into calls (pure). What the captures show and the heuristics
built on it: reconcile.py."""
from __future__ import annotations

import json
from dataclasses import dataclass


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
