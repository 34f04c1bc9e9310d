"""switchd.adapters.http.request: the head of a request as FreeSWITCH's mod_xml_curl
sends it (the capture of a real 1.10.12), and what is refused rather than guessed."""
from __future__ import annotations

from pathlib import Path

import pytest

from switchd.adapters.http.request import (
    MAX_FIELDS, MalformedRequest, content_length, head_end, keeps_alive, parse_head,
)

CAPTURE = Path(__file__).parent / "fixtures/freeswitch-1.10/xml-curl-dialplan-request.txt"


def captured_lookup() -> bytes:
    """The first request mod_xml_curl sent in the capture, as it came off the wire."""
    data = CAPTURE.read_bytes()
    marker, _, rest = data.partition(b"\n")
    length = int(marker.split(b"len=")[1].split()[0])
    return rest[:length]


def test_the_captured_mod_xml_curl_request_is_read_as_sent():
    raw = captured_lookup()
    end, body_start = head_end(raw)
    head = parse_head(raw[:end])
    assert (head.method, head.target, head.version) == ("POST", "/dialplan", "HTTP/1.1")
    assert head.get("user-agent") == "freeswitch-xml/1.0"
    assert head.get("content-type") == "application/x-www-form-urlencoded"
    assert content_length(head) == len(raw) - body_start == 4787
    assert keeps_alive(head)
    assert raw[body_start:].startswith(b"hostname=")


def test_the_head_ends_at_the_first_blank_line_whatever_the_line_ends():
    assert head_end(b"GET / HTTP/1.1\r\nHost: x\r\n") is None
    assert head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody") == (23, 27)
    assert head_end(b"GET / HTTP/1.1\nHost: x\n\nbody") == (22, 24)
    assert head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\nbody") == (23, 26)
    head = parse_head(b"GET / HTTP/1.1\nHost: x\r\nAccept:  */*  \r\naccept: text/xml")
    assert head.fields == {"host": "x", "accept": "*/*, text/xml"}


@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.1\r\nHost: x\rEvil: 1",              # a bare CR
    b"GET / HTTP/1.1\r\nHost: x\r\n continued",         # obsolete line folding
    b"GET / HTTP/1.1\r\nHost : x",                      # blank before the colon
    b"GET / HTTP/1.1\r\nno colon here",
    b"GET  / HTTP/1.1",                                 # not three parts
    b"G(T / HTTP/1.1",                                  # the method is not a token
    b"GET / HTTP/2.0",
    b"GET /",
    b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * (MAX_FIELDS + 1),
])
def test_what_is_not_http_1_as_written_is_malformed(head):
    with pytest.raises(MalformedRequest):
        parse_head(head.rstrip(b"\r\n"))


@pytest.mark.parametrize("fields, expected", [
    (b"", 0),
    (b"\r\nContent-Length: 12", 12),
    (b"\r\nContent-Length: 12\r\nContent-Length: 12", 12),
    (b"\r\nContent-Length: 12, 12", 12),
    (b"\r\nContent-Length: 12\r\nContent-Length: 13", MalformedRequest),
    (b"\r\nContent-Length: +12", MalformedRequest),
    (b"\r\nContent-Length: 1e3", MalformedRequest),
    (b"\r\nContent-Length: \xd9\xa1", MalformedRequest),   # a non-ASCII digit
])
def test_content_length_is_one_number_or_malformed(fields, expected):
    head = parse_head(b"POST / HTTP/1.1" + fields)
    if expected is MalformedRequest:
        with pytest.raises(MalformedRequest):
            content_length(head)
    else:
        assert content_length(head) == expected


@pytest.mark.parametrize("head, alive", [
    (b"GET / HTTP/1.1", True),
    (b"GET / HTTP/1.1\r\nConnection: Close", False),
    (b"GET / HTTP/1.1\r\nConnection: TE, close", False),
    (b"GET / HTTP/1.0", False),
    (b"GET / HTTP/1.0\r\nConnection: keep-alive", True),
])
def test_keep_alive_follows_the_version_and_the_connection_field(head, alive):
    assert keeps_alive(parse_head(head)) is alive
