"""ESL framing on captured FreeSWITCH 1.10 bytes, whole and split anywhere (STYLE.md §12)."""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from switchd.adapters.esl.framing import (
    ESLProtocolError, Frame, FrameParser, parse_event, parse_event_json, parse_event_plain,
)

FIXTURES = Path(__file__).parent / "fixtures" / "freeswitch-1.10"
# The whole-session captures (events-plain-a … events-json-g) start with the auth
# exchange; single-event captures (events-plain-gateway-…) do not.
EVENT_FILES = sorted(p for p in FIXTURES.glob("events-*.txt")
                     if re.fullmatch(r"events-(plain|json)-[a-z]\.txt", p.name))
TRANSCRIPTS = sorted(FIXTURES.glob("esl-*.txt"))
_BLOCK = re.compile(rb"@@ conn=(\S+) dir=(S>C|C>S) len=(\d+) [^\n]*\n")


def transcript_streams(path: Path) -> dict[tuple[str, str], bytes]:
    """(connection, direction) → the bytes sent, per the fixtures README format."""
    data = path.read_bytes()
    streams: dict[tuple[str, str], bytearray] = defaultdict(bytearray)
    pos = 0
    while pos < len(data):
        if data.startswith(b"@@ note ", pos):
            pos = data.index(b"\n", pos) + 1
            continue
        m = _BLOCK.match(data, pos)
        assert m, f"{path.name}: unexpected bytes at {pos}: {data[pos:pos + 40]!r}"
        n = int(m.group(3))
        start = m.end()
        streams[(m.group(1).decode(), m.group(2).decode())] += data[start:start + n]
        assert data[start + n:start + n + 1] == b"\n"
        pos = start + n + 1
    return {k: bytes(v) for k, v in streams.items()}


def parse_all(data: bytes, chunks=None) -> list[Frame]:
    parser = FrameParser()
    frames: list[Frame] = []
    for chunk in (chunks if chunks is not None else [data]):
        parser.feed(chunk)
        frames.extend(parser.frames())
    assert parser.buffered == 0
    return frames


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0] + sorted(set(cuts)) + [len(data)]
    return [data[a:b] for a, b in zip(points, points[1:])]


@pytest.mark.parametrize("path", EVENT_FILES, ids=lambda p: p.name)
def test_event_files_parse_into_every_outer_frame(path):
    data = path.read_bytes()
    frames = parse_all(data)
    # In these files only outer frames start a line with "Content-Type:" (plain event
    # values are URL-encoded, JSON bodies are one line).
    assert len(frames) == len(re.findall(rb"^Content-Type: ", data, re.M))
    kinds = [f.content_type for f in frames]
    assert kinds[:3] == ["auth/request", "command/reply", "command/reply"]
    expected = "text/event-json" if "-json-" in path.name else "text/event-plain"
    assert set(kinds[3:]) == {expected}
    for frame in frames[3:]:
        headers = parse_event(frame)
        assert headers["Event-Name"]
        assert headers["Core-UUID"] == "cc0c3998-b7f7-49a3-a230-4230c011bf41"


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.name)
def test_transcripts_parse_per_connection(path):
    streams = transcript_streams(path)
    server_side = {conn: data for (conn, d), data in streams.items() if d == "S>C"}
    assert server_side
    for conn, data in server_side.items():
        frames = parse_all(data)
        assert frames[0].content_type == "auth/request", conn
        if path.name != "esl-api.txt":     # api bodies (`sofia status` …) are free text
            assert len(frames) == len(re.findall(rb"^Content-Type: ", data, re.M)), conn


def test_transcript_auth_frames_match_the_capture():
    streams = transcript_streams(FIXTURES / "esl-auth.txt")
    ok = parse_all(streams[("ok", "S>C")])
    assert [f.content_type for f in ok] == ["auth/request"] + ["command/reply"] * 4 + [
        "text/disconnect-notice"]
    assert [f.reply_text for f in ok[1:5]] == [
        "+OK accepted", "+OK event listener enabled plain",
        "+OK no longer listening for events", "+OK bye"]
    assert ok[5].body.startswith(b"Disconnected, goodbye.\n")
    badpw = parse_all(streams[("badpw", "S>C")])
    assert badpw[1].reply_text == "-ERR invalid"
    assert badpw[2].content_type == "text/disconnect-notice"


def test_transcript_api_bodies_are_exact_bytes():
    frames = parse_all(transcript_streams(FIXTURES / "esl-api.txt")[("api", "S>C")])
    bodies = [f.body for f in frames if f.content_type == "api/response"]
    assert bodies[0].startswith(b"FreeSWITCH Version 1.10.12-release")
    assert b'{"row_count": 0}\n' in bodies
    assert any(b.startswith(b"\n") for b in bodies)          # plain `show channels`
    assert b"true" in bodies                                   # uuid_exists: no newline


def test_bgapi_transcript_reply_carries_job_uuid():
    frames = parse_all(transcript_streams(FIXTURES / "esl-bgapi.txt")[("bg", "S>C")])
    replies = [f for f in frames if f.content_type == "command/reply"]
    supplied = [f for f in replies if f.headers.get("Job-UUID") ==
                "19d25de9-5f2b-4e98-ac96-6d6e792e957c"]
    assert supplied and supplied[0].reply_text == "+OK Job-UUID: 19d25de9-5f2b-4e98-ac96-6d6e792e957c"
    jobs = [parse_event(f) for f in frames if f.content_type == "text/event-plain"]
    bodies = {h["Job-UUID"]: h["_body"] for h in jobs}
    assert bodies["7b72d502-f41e-46a7-a781-ef3f4bb42122"] == \
        "+OK 8f74583b-42d4-4ee6-bbb0-548d0e499fae\n"
    assert "-ERR USER_BUSY\n" in bodies.values()


_STREAM = (FIXTURES / "events-plain-d.txt").read_bytes() + \
    (FIXTURES / "events-json-d.txt").read_bytes()[28:]   # drop the second auth/request
_WHOLE = parse_all(_STREAM)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=1, max_value=len(_STREAM) - 1), max_size=300))
def test_random_splits_give_identical_frames(cuts):
    assert parse_all(_STREAM, split_at(_STREAM, cuts)) == _WHOLE


def test_one_byte_at_a_time():
    data = (FIXTURES / "events-plain-g.txt").read_bytes()
    chunks = [data[i:i + 1] for i in range(len(data))]
    assert parse_all(data, chunks) == parse_all(data)


def test_decoded_values():
    frames = parse_all((FIXTURES / "events-plain-g.txt").read_bytes())
    events = [parse_event_plain(f.body) for f in frames[3:]]
    first = events[0]
    assert first["FreeSWITCH-IPv6"] == "fd00::2"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", first["Event-Date-Local"])
    custom = [e for e in events if e["Event-Name"] == "CUSTOM"]
    assert custom and all(e["Event-Subclass"].startswith("sofia::gateway_") for e in custom)
    json_events = [parse_event_json(f.body) for f in
                   parse_all((FIXTURES / "events-json-g.txt").read_bytes())[3:]]
    assert [e["Event-Name"] for e in json_events] == [e["Event-Name"] for e in events]
    assert json_events[0]["FreeSWITCH-IPv6"] == "fd00::2"


def test_content_length_counts_bytes_not_characters():
    body = "Event-Name: CUSTOM\nCaller-Caller-ID-Name: Zoë 電話\n\n".encode()
    data = b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(body) + body
    data += b"Content-Type: command/reply\nReply-Text: +OK\n\n"
    for cut in range(1, len(data)):
        frames = parse_all(data, [data[:cut], data[cut:]])
        assert parse_event_plain(frames[0].body)["Caller-Caller-ID-Name"] == "Zoë 電話"
        assert frames[1].reply_text == "+OK"


def test_missing_content_length_means_no_body_for_replies():
    frames = parse_all(b"Content-Type: auth/request\n\nContent-Type: command/reply\n"
                       b"Reply-Text: +OK accepted\n\n")
    assert [f.body for f in frames] == [b"", b""]


def test_outer_header_values_are_url_decoded_reply_text_kept():
    frame = parse_all(b"Content-Type: command/reply\nReply-Text: +OK Job-UUID: abc\n"
                      b"X-Thing: a%20b\n\n")[0]
    assert frame.reply_text == "+OK Job-UUID: abc" and frame.headers["X-Thing"] == "a b"


@pytest.mark.parametrize("data, message", [
    (b"Content-Length: 12x\nContent-Type: api/response\n\n", "not a non-negative integer"),
    (b"Content-Length: -5\nContent-Type: api/response\n\n", "not a non-negative integer"),
    (b"Content-Length: 99999999\nContent-Type: api/response\n\n", "exceeds the limit"),
    (b"Content-Type: text/event-plain\n\nEvent-Name: HEARTBEAT\n\n", "without Content-Length"),
    (b"Content-Type: command/reply\nthis is not a header\n\n", "invalid ESL header line"),
    (b"Content-Type: command/reply\nReply-Text: \xff\xfe\n\n", "not valid UTF-8"),
    (b"X-Long: " + b"a" * 70_000, "without an end"),
    (b"X-Long: " + b"a" * 70_000 + b"\n\n", "exceeds"),
])
def test_protocol_errors_are_clear_and_final(data, message):
    parser = FrameParser()
    parser.feed(data)
    with pytest.raises(ESLProtocolError, match=message):
        parser.next_frame()
    with pytest.raises(ESLProtocolError, match="unusable"):
        parser.feed(b"Content-Type: auth/request\n\n")


def test_frame_size_limits_are_configurable():
    parser = FrameParser(max_frame_bytes=10, max_header_bytes=100)
    parser.feed(b"Content-Length: 11\nContent-Type: api/response\n\n")
    with pytest.raises(ESLProtocolError, match="exceeds the limit of 10"):
        parser.next_frame()


def test_encoded_newline_does_not_inject_a_header():
    body = (b"Event-Name: CHANNEL_CREATE\nUnique-ID: real\n"
            b"Caller-Caller-ID-Name: Evil%0AUnique-ID: forged%0A%0AX\n\n")
    headers = parse_event_plain(body)
    assert headers["Unique-ID"] == "real"
    assert headers["Caller-Caller-ID-Name"] == "Evil\nUnique-ID: forged\n\nX"


def test_invalid_utf8_degrades_instead_of_raising():
    headers = parse_event_plain(b"Event-Name: CUSTOM\nName: caf\xe9 %C3%28\n\n")
    assert headers["Name"] == "caf\ufffd \ufffd("
    assert parse_event_json(b'{"Event-Name": "X", "N": "\xff"}')["N"] == "\ufffd"


def test_nested_body_counts_bytes():
    nested = "+OK é\n".encode()
    body = b"Event-Name: BACKGROUND_JOB\nJob-UUID: j\nContent-Length: %d\n\n" % len(nested) + nested
    assert parse_event_plain(body)["_body"] == "+OK é\n"


def test_disconnect_notice_with_and_without_linger():
    frames = parse_all(b"Content-Type: text/disconnect-notice\nContent-Disposition: linger\n"
                       b"Content-Length: 3\n\nbye"
                       b"Content-Type: text/disconnect-notice\nContent-Length: 31\n\n"
                       b"The system is being shut down.\n"
                       b"Content-Type: text/rude-rejection\nContent-Length: 24\n\n"
                       b"Access Denied, go away.\n"
                       b"Content-Type: log/data\nContent-Length: 2\nLog-Level: 7\n\nhi")
    assert [f.content_type for f in frames] == ["text/disconnect-notice"] * 2 + [
        "text/rude-rejection", "log/data"]
    assert frames[0].headers["Content-Disposition"] == "linger"
    assert frames[1].text == "The system is being shut down.\n"
    assert frames[3].body == b"hi"
