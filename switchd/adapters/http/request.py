"""An HTTP/1.x request head (RFC 9112): where it ends in what a connection has read, and
its request line and header fields, checked. Pure: no sockets (connections.py reads).

Strict where leniency has bitten servers: a bare CR, an obsolete folded line, a field
name that is not a token, whitespace before the colon, two different Content-Lengths —
each is a 400, never a guess. Lines may end in LF alone (RFC 9112 §2.2 lets a server
accept that).
"""
from __future__ import annotations

import re
from typing import NamedTuple

MAX_HEAD_BYTES = 64 * 1024        # the request line and every field; a real one is < 1 KB
MAX_FIELDS = 100

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_VERSION = re.compile(r"HTTP/1\.[01]\Z")


class MalformedRequest(ValueError):
    """The head is not HTTP/1.x as RFC 9112 writes it (answered 400)."""


class RequestHead(NamedTuple):
    method: str
    target: str
    version: str
    fields: dict[str, str]    # lower-case name -> value without surrounding blanks;
                              # a repeated field's values joined with ", "

    def get(self, name: str) -> str | None:
        """The field's value by its lower-case name."""
        return self.fields.get(name)


def head_end(buffer: bytes) -> tuple[int, int] | None:
    """(end of the head, start of the body) once `buffer` holds the blank line that ends
    the head; None while it does not."""
    crlf = buffer.find(b"\r\n\r\n")
    lf = buffer.find(b"\n\n")
    if lf != -1 and (crlf == -1 or lf < crlf):
        # a CRLF line, then a blank line ended by LF alone: the CR is the line's
        return (lf - 1 if lf and buffer[lf - 1] == 13 else lf), lf + 2
    if crlf != -1:
        return crlf, crlf + 4
    return None


def parse_head(head: bytes) -> RequestHead:
    """The request line and fields of a head (without its blank line)."""
    text = head.decode("latin-1")
    crlf = text.count("\r\n")
    if text.count("\r") != crlf or text.count("\n") != crlf:     # not CRLF throughout
        if "\r" in text.replace("\r\n", ""):
            raise MalformedRequest("bare CR in the request head")
        text = text.replace("\r\n", "\n")
        request_line, *lines = text.split("\n")
    else:
        request_line, *lines = text.split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or not parts[1]:
        raise MalformedRequest(f"not a request line: {request_line[:80]!r}")
    method, target, version = parts
    if not _VERSION.match(version):
        raise MalformedRequest(f"unsupported protocol {version[:20]!r}")
    if len(lines) > MAX_FIELDS:
        raise MalformedRequest(f"more than {MAX_FIELDS} header fields")
    fields: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.match(name):
            raise MalformedRequest(f"not a header field: {line[:80]!r}")
        name = name.lower()
        value = value.strip(" \t")
        fields[name] = f"{fields[name]}, {value}" if name in fields else value
    return RequestHead(method, target, version, fields)


def content_length(head: RequestHead) -> int:
    """The body's length (0 without the field); a value that is not one number, or
    several that differ, is malformed (a request smuggled behind another)."""
    value = head.get("content-length")
    if value is None:
        return 0
    lengths = {v.strip() for v in value.split(",")}
    if len(lengths) != 1:
        raise MalformedRequest(f"conflicting Content-Length {value[:40]!r}")
    length = lengths.pop()
    if not length.isdigit() or not length.isascii():
        raise MalformedRequest(f"Content-Length {length[:40]!r} is not a number")
    return int(length)


def keeps_alive(head: RequestHead) -> bool:
    """Whether the client may send another request on the connection after this one."""
    tokens = {t.strip().lower() for t in (head.get("connection") or "").split(",")}
    if head.version == "HTTP/1.1":
        return "close" not in tokens
    return "keep-alive" in tokens
