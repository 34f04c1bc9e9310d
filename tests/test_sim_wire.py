"""The simulator's byte formats: FreeSWITCH's URL encoding and the shipped templates."""
from __future__ import annotations

import json
from urllib.parse import unquote

from test_sim_helpers import FIXTURES, split_frames
from switchd.sim import make_templates, wire


def test_url_encoding_round_trips_every_captured_header():
    checked = 0
    for path in sorted(FIXTURES.glob("events-plain-*.txt")):
        frames, rest = split_frames(path.read_bytes())
        assert rest == b""
        for head, body in frames:
            if head.get("Content-Type") != "text/event-plain":
                continue
            for line in body.split(b"\n\n")[0].decode().split("\n"):
                value = line.split(": ", 1)[1]
                assert wire.fs_url_encode(unquote(value)) == value, line
                checked += 1
    assert checked > 20_000


def test_shipped_templates_are_built_from_the_captures():
    assert make_templates.build(FIXTURES) == json.loads(wire.TEMPLATES_PATH.read_text())


def test_frame_builders_match_capture_bytes():
    assert wire.command_reply("+OK accepted") == b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n"
    assert wire.disconnect_notice() == (b"Content-Type: text/disconnect-notice\nContent-Length: 67\n\n"
                                        b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n")
