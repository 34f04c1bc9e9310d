"""mod_xml_curl as the simulator plays it: the dialplan POST and the reading of its answer.

The POST is rendered from the captured request (same fields, order and escaping); the
client is a plain gevent socket, one request per connection, as libcurl does it. Any
error, timeout, non-200 or `<result status="not found"/>` falls back to the static
dialplan, exactly like mod_xml_curl: freeswitch-conf/dialplan/public.xml's refusal, plus the
operator's static extensions (Simulator(static_dialplan=...), sim.add_static_extension).
"""
from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import gevent
from gevent import socket as gsocket

from switchd.sim import wire
from switchd.sim.legs import SimLeg

# Mirrors freeswitch-conf/dialplan/public.xml: refuse, never route unpoliced.
STATIC_FALLBACK_XML = """<document type="freeswitch/xml"><section name="dialplan">
<context name="public"><extension name="switchd_unavailable"><condition>
<action application="set" data="route_source=static_fallback"/>
<action application="respond" data="503 Service Unavailable"/>
<action application="hangup" data="NORMAL_TEMPORARY_FAILURE"/>
</condition></extension></context></section></document>"""

# A static extension that answers like a local user: the switch answers the caller and
# keeps the call up until the caller hangs up (tests/realswitch/fsconfig.py, `extensions`).
LOCAL_USER_ACTIONS = (("set", "route_source=static_extension"), ("answer", ""), ("park", ""))
# The default static extensions: the `default` context (routing.extension_context's default)
# holds the 4-digit local users 1000-1999, which the demo world's DIDs name.
DEFAULT_STATIC_EXTENSIONS = (("default", r"^(1[0-9]{3})$"),)


def static_dialplan(extensions=DEFAULT_STATIC_EXTENSIONS) -> ET.Element:
    """The static XML dialplan: the `public` refusal, plus (context, expression[, actions])
    extensions on destination_number, each appended to its context in order."""
    root = ET.fromstring(STATIC_FALLBACK_XML)
    for spec in extensions:
        add_extension(root, *spec)
    return root


def add_extension(root: ET.Element, context: str, expression: str,
                  actions=LOCAL_USER_ACTIONS, name: str | None = None,
                  field: str = "destination_number") -> ET.Element:
    """Append one extension to `context` of the static dialplan (created if missing)."""
    section = next(s for s in root.iter("section") if s.get("name") == "dialplan")
    ctx = next((c for c in section.iter("context") if c.get("name") == context), None)
    if ctx is None:
        ctx = ET.SubElement(section, "context", name=context)
    ext = ET.SubElement(ctx, "extension", name=name or f"static_{len(ctx)}")
    cond = ET.SubElement(ext, "condition", field=field, expression=expression)
    for app, data in actions:
        ET.SubElement(cond, "action", application=app, data=data)
    return ext

MAX_RESPONSE_BYTES = 4 * 1024 * 1024


class LookupFailed(Exception):
    """The binding gave no usable answer; mod_xml_curl falls through to static XML."""


@dataclass
class DialLeg:
    target: str                                   # e.g. sofia/gateway/carrier_a/4420...
    vars: list[tuple[str, str]] = field(default_factory=list)

    @property
    def gateway(self) -> str | None:
        parts = self.target.split("/")
        return parts[2] if len(parts) >= 4 and parts[:2] == ["sofia", "gateway"] else None

    @property
    def number(self) -> str:
        return self.target.rsplit("/", 1)[-1].split("@", 1)[0]

    def var(self, name: str) -> str | None:
        return dict(self.vars).get(name)


@dataclass
class RouteAnswer:
    """What the dialplan did with a call, as the player executed it (the last lookup's
    `set`/`export`s, its first `bridge`, `respond`, `hangup`, `execute_on_answer`)."""
    set_vars: list[tuple[str, str]] = field(default_factory=list)
    exports: list[tuple[str, str]] = field(default_factory=list)
    bridge: str | None = None
    respond: tuple[int, str] | None = None
    hangup_cause: str | None = None
    sched_hangup: tuple[str, str] | None = None   # ('+5', 'ALLOTTED_TIMEOUT')

    def var(self, name: str) -> str | None:
        return dict(self.set_vars + self.exports).get(name)


def _split_top(text: str, sep: str) -> list[str]:
    """Split on `sep` outside [...] and {...}: commas inside them separate variables."""
    out, depth, cur = [], 0, []
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == sep and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def _vars(body: str) -> list[tuple[str, str]]:
    pairs = [p.split("=", 1) for p in body.split(",") if "=" in p]
    # FreeSWITCH strips the single quotes around a value with blanks: {a='b c'}
    return [(k.strip(), v[1:-1] if len(v) >= 2 and v[0] == v[-1] == "'" else v) for k, v in pairs]


def parse_dial_string(dial: str) -> tuple[list[tuple[str, str]], list[DialLeg]]:
    """`{g=1}[a=b]sofia/gateway/A/N|[..]sofia/gateway/B/N` → global vars, legs in order."""
    dial = dial.strip()
    global_vars: list[tuple[str, str]] = []
    if dial.startswith("{"):
        end = dial.index("}")
        global_vars, dial = _vars(dial[1:end]), dial[end + 1:]
    legs = []
    for part in _split_top(dial, "|"):
        part = part.strip()
        leg_vars: list[tuple[str, str]] = []
        while part.startswith(("[", "{")):        # [..] per leg; {..} may repeat per leg
            end = part.index("]" if part[0] == "[" else "}")
            leg_vars += _vars(part[1:end])
            part = part[end + 1:]
        if part:
            legs.append(DialLeg(part, leg_vars))
    return global_vars, legs


def parse_answer(text: str):
    """The answer's document root; LookupFailed for `not found`, junk or no dialplan
    section, which mod_xml_curl treats alike: the static dialplan is used instead."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise LookupFailed(f"unparsable XML: {exc}") from exc
    result = root.find(".//result")
    if result is not None and result.get("status") == "not found":
        raise LookupFailed("not found")
    if not any(s.get("name") == "dialplan" for s in root.iter("section")):
        raise LookupFailed("no dialplan section")
    return root


def build_form(a: SimLeg, *, core_uuid: str, seq: int, ts_us: int,
               call_vars: list[tuple[str, str]], overrides: dict[str, str],
               destination: str | None = None, context: str = "public") -> bytes:
    """The lookup of `a`; after a transfer, `destination`/`context` are the new caller
    profile's (Caller-/Hunt-Destination-Number and -Context), the SIP variables stay."""
    subs = {"A": a.uuid, "DEST": a.number, "CALLER": a.caller}
    over = {"Core-UUID": core_uuid, "Event-Sequence": str(seq), **wire.date_headers(ts_us)}
    if destination is not None:
        for prefix in ("Caller", "Hunt"):
            over[f"{prefix}-Destination-Number"] = destination
            over[f"{prefix}-Context"] = context
    for prefix in ("Caller", "Hunt"):
        over[f"{prefix}-Profile-Created-Time"] = str(a.created_us)
        over[f"{prefix}-Channel-Created-Time"] = str(a.created_us)
    over["variable_sip_invite_stamp"] = str(a.created_us)
    over.update(overrides)
    names = {k for k, _ in wire.templates()["dialplan_request"]}
    inserts = [(k, v) for k, v in call_vars if k not in names]
    over.update((k, v) for k, v in call_vars if k in names)
    fields = []
    for name, value in wire.templates()["dialplan_request"]:
        if name.startswith("@@"):
            continue
        value = over.get(name, value)
        if "{{" in value:
            value = wire.PLACEHOLDER.sub(lambda m: subs.get(m.group(1), ""), value)
        fields.append((name, value))
        if name == "variable_sip_from_host":
            fields.extend(inserts)
    # mod_xml_curl escapes every field but the first five (hostname .. key_value).
    return "&".join(f"{k}={v}" if i < 5 else f"{k}={wire.fs_url_encode(v)}"
                    for i, (k, v) in enumerate(fields)).encode()


def post(url: str, body: bytes, timeout: float) -> tuple[int, bytes]:
    """One dialplan POST on a fresh connection; (status, body). Raises OSError/LookupFailed."""
    return send(url, wire.templates()["dialplan_request_head"].split("\r\n"), body, timeout)


def send(url: str, head: list[str], body: bytes, timeout: float) -> tuple[int, bytes]:
    """POST `body` with the header lines `head` (its request line, Host and Content-Length
    are set here) on a fresh connection, as libcurl does; (status, body)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    head = list(head)
    head[0] = f"POST {path} HTTP/1.1"
    head = [f"Host: {parts.netloc}" if h.startswith("Host:") else
            f"Content-Length: {len(body)}" if h.startswith("Content-Length:") else h for h in head]
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    with gevent.Timeout(timeout, LookupFailed(f"timeout after {timeout}s")):
        sock = gsocket.create_connection((host, port), timeout=timeout)
        try:
            sock.sendall(request)
            return _read_response(sock)
        finally:
            sock.close()


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise LookupFailed("connection closed before headers")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in
               (line.split(":", 1) for line in lines[1:] if ":" in line)}
    length = headers.get("content-length")
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    while True:
        if length is not None and len(rest) >= int(length):
            return status, rest[:int(length)]
        if chunked and rest.endswith(b"0\r\n\r\n"):
            return status, _dechunk(rest)
        if len(rest) > MAX_RESPONSE_BYTES:
            raise LookupFailed("response too large")
        chunk = sock.recv(65536)
        if not chunk:
            if length is None and not chunked:
                return status, rest           # close-delimited body
            raise LookupFailed("connection closed mid-body")
        rest += chunk


def _dechunk(data: bytes) -> bytes:
    out, pos = b"", 0
    while True:
        end = data.index(b"\r\n", pos)
        size = int(data[pos:end].split(b";")[0], 16)
        if size == 0:
            return out
        out += data[end + 2:end + 2 + size]
        pos = end + 2 + size + 2


def lookup(url: str | None, body: bytes, timeout: float, static: ET.Element | None = None):
    """(document root, route_source, reason): the binding's answer, or the static dialplan
    `static` (default: only the `public` refusal; a context it lacks has no route)."""
    if url:
        try:
            status, payload = post(url, body, timeout)
            if status != 200:
                raise LookupFailed(f"HTTP {status}")
            return parse_answer(payload.decode("utf-8", "replace")), "xml_curl", "ok"
        except (OSError, LookupFailed, ValueError) as exc:
            reason = str(exc) or type(exc).__name__
    else:
        reason = "no dialplan_url"
    if static is None:
        static = parse_answer(STATIC_FALLBACK_XML)
    return static, "static_fallback", reason
