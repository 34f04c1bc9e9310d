"""Sans-I/O ESL framing: bytes in, frames out (STYLE.md §2, h11 style).

A frame is a header block ending in a blank line, then exactly ``Content-Length`` bytes of
body (none when the header is absent). ``Content-Length`` counts bytes, so the parser works
on bytes and decodes nothing before a frame is whole: a multibyte character split across
two TCP reads must not break anything.

After any protocol error the parser refuses further use: once framing is lost there is no
safe place to resynchronise, so the connection has to be recycled.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import unquote

DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_HEADER_BYTES = 64 * 1024

# Content types FreeSWITCH 1.10 sends on an inbound connection (see the fixtures README).
AUTH_REQUEST = "auth/request"
COMMAND_REPLY = "command/reply"
API_RESPONSE = "api/response"
EVENT_PLAIN = "text/event-plain"
EVENT_JSON = "text/event-json"
DISCONNECT_NOTICE = "text/disconnect-notice"
RUDE_REJECTION = "text/rude-rejection"
LOG_DATA = "log/data"

# Without Content-Length these would leave their body in the stream, to be misread as the
# next frame's headers (greenswitch dies on a KeyError there and hangs its callers).
_BODY_REQUIRED = frozenset({API_RESPONSE, EVENT_PLAIN, EVENT_JSON, LOG_DATA})


class ESLError(Exception):
    """Root of every error the ESL layer raises."""


class ESLProtocolError(ESLError):
    """The byte stream is not valid ESL; the connection must be recycled."""


class ESLEventError(ESLError, ValueError):
    """One event body could not be parsed; the frame boundary is intact."""


@dataclass(frozen=True)
class Frame:
    headers: dict[str, str]
    body: bytes = b""

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    @property
    def reply_text(self) -> str:
        return self.headers.get("Reply-Text", "")

    @property
    def text(self) -> str:
        # Bodies come from a remote process; bad UTF-8 must degrade, not raise.
        return self.body.decode("utf-8", "replace")


def _decode_value(value: str) -> str:
    # unquote() costs a regex pass; most values carry no escape at all.
    return unquote(value, errors="replace") if "%" in value else value


def _parse_content_length(raw: str, limit: int, where: str) -> int:
    if not (raw.isascii() and raw.isdigit()):
        raise ESLProtocolError(f"{where}: Content-Length {raw!r} is not a non-negative integer")
    length = int(raw)
    if length > limit:
        raise ESLProtocolError(f"{where}: Content-Length {length} exceeds the limit of {limit} bytes")
    return length


def _parse_header_block(block: bytes) -> dict[str, str]:
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ESLProtocolError(f"frame header block is not valid UTF-8: {exc}") from None
    headers: dict[str, str] = {}
    for line in text.split("\n"):
        name, sep, value = line.partition(": ")
        if not sep or not name:
            raise ESLProtocolError(f"invalid ESL header line {line[:80]!r}")
        headers[name] = _decode_value(value)
    return headers


class FrameParser:
    """Feed bytes with :meth:`feed`, take complete frames with :meth:`next_frame`."""

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.max_header_bytes = max_header_bytes
        self._buf = bytearray()
        self._pos = 0                 # start of the unconsumed bytes in _buf
        self._scan = 0                # where the search for "\n\n" resumes
        self._headers: dict[str, str] | None = None   # header block seen, body pending
        self._length = 0
        self._error: ESLProtocolError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        self._check_usable()
        if self._pos:
            # Compact here, not per frame: after draining, only a partial frame remains,
            # so the copy is small.
            del self._buf[:self._pos]
            self._scan = max(0, self._scan - self._pos)
            self._pos = 0
        self._buf += data

    def next_frame(self) -> Frame | None:
        self._check_usable()
        try:
            return self._next_frame()
        except ESLProtocolError as exc:
            self._error = exc
            raise

    def frames(self) -> Iterator[Frame]:
        """Every complete frame buffered so far."""
        while (frame := self.next_frame()) is not None:
            yield frame

    def _check_usable(self) -> None:
        if self._error is not None:
            raise ESLProtocolError(f"parser unusable after an earlier error: {self._error}")

    def _next_frame(self) -> Frame | None:
        buf = self._buf
        if self._headers is None:
            # Tolerate stray blank lines between frames; FreeSWITCH sends none, but they
            # carry no meaning and must not look like an empty header line.
            while self._pos < len(buf) and buf[self._pos] == 0x0A:
                self._pos += 1
            start = self._pos
            end = buf.find(b"\n\n", max(start, self._scan))
            if end < 0:
                if len(buf) - start > self.max_header_bytes:
                    raise ESLProtocolError(
                        f"header block exceeds {self.max_header_bytes} bytes without an end")
                self._scan = max(start, len(buf) - 1)
                return None
            if end - start > self.max_header_bytes:
                raise ESLProtocolError(f"header block of {end - start} bytes exceeds "
                                       f"{self.max_header_bytes} bytes")
            headers = _parse_header_block(bytes(buf[start:end]))
            raw_length = headers.get("Content-Length")
            if raw_length is None:
                if headers.get("Content-Type") in _BODY_REQUIRED:
                    raise ESLProtocolError(
                        f"{headers['Content-Type']} frame without Content-Length")
                self._length = 0
            else:
                self._length = _parse_content_length(raw_length, self.max_frame_bytes, "frame")
            self._headers = headers
            self._pos = end + 2
            self._scan = self._pos
        if len(buf) - self._pos < self._length:
            return None
        body = bytes(buf[self._pos:self._pos + self._length])
        self._pos += self._length
        self._scan = self._pos
        headers, self._headers = self._headers, None
        return Frame(headers, body)


def _unescape(data: bytes) -> str:
    r"""``%XX`` → byte XX in one C-level pass (``\xXX`` for the unicode_escape codec); the
    bytes then decode as UTF-8 as ``unquote`` does. UnicodeDecodeError on a stray '%'."""
    latin = data.replace(b"\\", b"\\x5c").replace(b"%", b"\\x").decode("unicode_escape")
    return latin.encode("latin-1").decode("utf-8", "replace")


def _unquote_many(raw: list[str]) -> list[str]:
    r"""URL-decode several values, each exactly as ``unquote`` would on its own.

    The parser's hot spot. Values without an encoded newline are joined on '\n' (which no
    raw value contains) and decoded in one pass; values with ``%0A`` (SDP bodies) in one
    pass each; anything the codec rejects (a stray '%') goes through urllib.
    """
    out = list(raw)
    batch = [i for i, v in enumerate(raw) if "%0A" not in v and "%0a" not in v]
    if batch:
        try:
            decoded = _unescape("\n".join([raw[i] for i in batch]).encode(
                "utf-8", "surrogateescape")).split("\n")
        except UnicodeDecodeError:
            batch = []
        else:
            for i, value in zip(batch, decoded):
                out[i] = value
    if len(batch) < len(raw):
        done = set(batch)
        for i, value in enumerate(raw):
            if i not in done:
                try:
                    out[i] = _unescape(value.encode("utf-8", "surrogateescape"))
                except UnicodeDecodeError:
                    out[i] = unquote(value, errors="replace")
    return out


def parse_event_plain(body: bytes) -> dict[str, str]:
    """Headers of a ``text/event-plain`` body; a nested body goes under ``_body``.

    Lines are split before values are URL-decoded, so an encoded newline inside a value
    (``%0A`` in a caller name) stays inside that value. Of duplicate headers the first
    wins, as FreeSWITCH's own ``switch_event_get_header`` / ``esl_event_get_header`` read.
    """
    end = body.find(b"\n\n")
    head, rest = (body, b"") if end < 0 else (body[:end], body[end + 2:])
    headers: dict[str, str] = {}
    encoded: list[str] = []
    for line in head.decode("utf-8", "replace").split("\n"):
        name, sep, value = line.partition(": ")
        if sep and name and name not in headers:
            headers[name] = value
            if "%" in value:
                encoded.append(name)
    if encoded:
        for name, value in zip(encoded, _unquote_many([headers[n] for n in encoded])):
            headers[name] = value
    raw_length = headers.get("Content-Length")
    if raw_length is not None:
        if not (raw_length.isascii() and raw_length.isdigit()):
            raise ESLEventError(f"event body: bad nested Content-Length {raw_length!r}")
        headers["_body"] = rest[:int(raw_length)].decode("utf-8", "replace")
    return headers


def parse_event_json(body: bytes) -> dict[str, str]:
    """Headers of a ``text/event-json`` body (values are already plain strings)."""
    try:
        data = json.loads(body.decode("utf-8", "replace"))
    except ValueError as exc:
        raise ESLEventError(f"event body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ESLEventError("event body is JSON but not an object")
    return {str(k): v if isinstance(v, str) else str(v) for k, v in data.items()}


def parse_event(frame: Frame) -> dict[str, str] | None:
    """Event headers of an event frame, or None if the frame is not an event."""
    if frame.content_type == EVENT_PLAIN:
        return parse_event_plain(frame.body)
    if frame.content_type == EVENT_JSON:
        return parse_event_json(frame.body)
    return None


def peek_plain_event_name(body: bytes) -> str | None:
    """The event's name (a CUSTOM event's subclass) from the first lines of a plain body,
    or None when it is not where FreeSWITCH puts it. Lets the reader skip the full parse
    of events it has no use for."""
    if body.startswith(b"Event-Name: "):
        end = body.find(b"\n", 12)
        return body[12:end].decode("ascii", "replace") if end > 0 else None
    if body.startswith(b"Event-Subclass: "):
        end = body.find(b"\n", 16)
        if end > 0 and body.startswith(b"Event-Name: CUSTOM\n", end + 1):
            return unquote(body[16:end].decode("ascii", "replace"))
    return None
