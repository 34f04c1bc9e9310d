"""Byte-level formats of FreeSWITCH 1.10 as captured in tests/fixtures/freeswitch-1.10.

Everything here is pure (no sockets, no clock): frame builders for mod_event_socket replies,
FreeSWITCH's own URL encoding, and the rendering of event templates extracted from the
captures (switchd/sim/data/templates.json, built by switchd/sim/make_templates.py).
"""
from __future__ import annotations

import json
import re
import time
from functools import lru_cache
from pathlib import Path

TEMPLATES_PATH = Path(__file__).parent / "data" / "templates.json"

# switch_url_encode() in switch_utils.c escapes exactly these, plus every byte outside
# printable ASCII; ',', '/', '(' and ')' stay literal (checked against every captured event
# by tests/test_sim_wire.py).
_UNSAFE = set(b"\r\n \"#%&+:;<=>?@[\\]^`{|}")
_ENC = [("%%%02X" % b) if (b in _UNSAFE or b < 32 or b > 126) else chr(b) for b in range(256)]

AUTH_REQUEST = b"Content-Type: auth/request\n\n"
DISCONNECT_GOODBYE = b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
DISCONNECT_SHUTDOWN = b"The system is being shut down.\n"
VERSION = ("FreeSWITCH Version 1.10.12-release+git~20240802T210227Z~a88d069d6f~64bit "
           "(git a88d069 2024-08-02 21:02:27Z 64bit)\n")

PLACEHOLDER = re.compile(r"\{\{([A-Z_0-9]+)\}\}")


def fs_url_encode(value: str) -> str:
    if value.isalnum():
        return value                      # the common case (numbers, words) needs no work
    return "".join(_ENC[b] for b in value.encode("utf-8"))


def command_reply(text: str, extra: str = "") -> bytes:
    return f"Content-Type: command/reply\nReply-Text: {text}\n{extra}\n".encode()


def api_response(body: str | bytes) -> bytes:
    raw = body.encode() if isinstance(body, str) else body
    return b"Content-Type: api/response\nContent-Length: %d\n\n%s" % (len(raw), raw)


def disconnect_notice(body: bytes = DISCONNECT_GOODBYE) -> bytes:
    return b"Content-Type: text/disconnect-notice\nContent-Length: %d\n\n%s" % (len(body), body)


def event_frame(body: bytes) -> bytes:
    return b"Content-Length: %d\nContent-Type: text/event-plain\n\n%s" % (len(body), body)


def serialize_event(headers: list[tuple[str, str]], body: str | None = None) -> bytes:
    """switch_event_serialize(): `Name: urlencoded\\n` lines, then the body or a blank line."""
    out = "".join(f"{name}: {fs_url_encode(value)}\n" for name, value in headers)
    if body is None:
        return (out + "\n").encode()
    raw = body.encode()
    return out.encode() + b"Content-Length: %d\n\n%s" % (len(raw), raw)


def date_headers(ts_us: int) -> dict[str, str]:
    """Event-Date-* for a timestamp in microseconds; 'local' time is UTC, as on the capture host."""
    t = time.gmtime(ts_us // 1_000_000)
    return {
        "Event-Date-Local": time.strftime("%Y-%m-%d %H:%M:%S", t),
        "Event-Date-GMT": time.strftime("%a, %d %b %Y %H:%M:%S GMT", t),
        "Event-Date-Timestamp": str(ts_us),
    }


def stamp(ts_us: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts_us // 1_000_000))


@lru_cache(maxsize=1)
def templates() -> dict:
    return json.loads(TEMPLATES_PATH.read_text())


def render(key: str, subs: dict[str, str], overrides: dict[str, str | None] | None = None,
           inserts: dict[str, list[tuple[str, str]]] | None = None,
           tail: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """Headers of template `key` with {{PLACEHOLDERS}} filled and values overridden by name.

    `inserts[name]` lists headers added right after header `name` (or at a `@@MARKER@@`
    pseudo-header, which is itself never emitted); an override of None drops a header;
    `tail` is appended at the end (FreeSWITCH appends variables set late in the call).
    """
    overrides = overrides or {}
    inserts = inserts or {}
    out: list[tuple[str, str]] = []
    for name, value in templates()["events"][key]:
        if not name.startswith("@@"):
            if name in overrides:
                value = overrides[name]
                if value is None:
                    continue
            elif "{{" in value:
                value = PLACEHOLDER.sub(lambda m: subs.get(m.group(1), m.group(0)), value)
            out.append((name, value))
        extra = inserts.get(name)
        if extra:
            out.extend(extra)
    if tail:
        out.extend(tail)
    return out
