"""Test-only: turn a plain-event capture into ChannelEvents for the registry tests.

Deliberately minimal and independent of switchd.adapters.esl.framing/events, so registry tests do not
break while those are being written. Frames are split by Content-Length (bytes); each body
is split into lines first and only then is each header value URL-decoded (a `%0A` inside a
value must not create a header).
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

from switchd.adapters.esl.events import ChannelEvent
from switchd.sim.make_templates import read_transcript

FIXTURES = Path(__file__).parent / "fixtures" / "freeswitch-1.10"


def _frames(data: bytes):
    pos = 0
    while pos < len(data):
        end = data.index(b"\n\n", pos)
        head = dict(line.split(": ", 1) for line in data[pos:end].decode().split("\n") if line)
        pos = end + 2
        length = int(head.get("Content-Length", 0))
        yield head, data[pos:pos + length]
        pos += length


def _headers(body: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in body.decode("utf-8").split("\n"):
        if ": " not in line:
            continue                      # the blank terminator, or a nested body
        key, value = line.split(": ", 1)
        out.setdefault(key, unquote(value))   # first wins: BACKGROUND_JOB nests a body
    return out


def _int(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


def to_event(h: dict[str, str]) -> ChannelEvent:
    switchd_vars = {k[len("variable_"):]: v for k, v in h.items()
                    if k.startswith("variable_switchd_")}
    if "Old-Unique-ID" in h:              # CHANNEL_UUID: see switchd/calls/registry.py (renames)
        switchd_vars["old_unique_id"] = h["Old-Unique-ID"]
    return ChannelEvent(
        name=h["Event-Name"],
        uuid=h.get("Unique-ID", ""),
        call_uuid=h.get("Channel-Call-UUID", ""),
        other_leg_uuid=h.get("Other-Leg-Unique-ID") or None,
        direction=h.get("Call-Direction", "inbound"),
        timestamp_us=_int(h.get("Event-Date-Timestamp")) or 0,
        sequence=_int(h.get("Event-Sequence")) or 0,
        core_uuid=h.get("Core-UUID", ""),
        caller_number=h.get("Caller-Caller-ID-Number", ""),
        destination_number=h.get("Caller-Destination-Number", ""),
        gateway=h.get("variable_sip_gateway_name") or None,
        created_us=_int(h.get("Caller-Channel-Created-Time")) or 0,
        answered_us=_int(h.get("Caller-Channel-Answered-Time")) or 0,
        hangup_us=_int(h.get("Caller-Channel-Hangup-Time")) or 0,
        hangup_cause=h.get("Hangup-Cause") or None,
        sip_status=_int(h.get("variable_sip_term_status")),
        billmsec=_int(h.get("variable_billmsec")),
        origination_uuid=h.get("variable_origination_uuid") or None,
        vars=switchd_vars,
    )


def channel_events(letter: str) -> list[ChannelEvent]:
    """The CHANNEL_* events of events-plain-<letter>.txt, in wire order."""
    data = (FIXTURES / f"events-plain-{letter}.txt").read_bytes()
    events = []
    for head, body in _frames(data):
        if head.get("Content-Type") != "text/event-plain":
            continue
        h = _headers(body)
        if h.get("Event-Name", "").startswith("CHANNEL_"):
            events.append(to_event(h))
    return events


def api_reply(command: str, occurrence: int = 0) -> str:
    """The body of the `occurrence`-th api/response to `api <command>` in esl-api.txt."""
    blocks = [(f"dir={direction}", data)
              for _, direction, data in read_transcript(FIXTURES / "esl-api.txt")]
    hits = [i for i, (meta, data) in enumerate(blocks)
            if meta == "dir=C>S" and data.decode().strip() == f"api {command}"]
    reply = blocks[hits[occurrence] + 1][1]
    head, _, body = reply.partition(b"\n\n")
    return body.decode()
