"""The HTTP face of the daemon (gevent WSGI): mod_xml_curl, health, metrics, JSON API.

Routes:
  POST /fs/dialplan   mod_xml_curl dialplan lookups (form body) -> XML (503 while starting)
  POST /fs/cdr        mod_json_cdr: FreeSWITCH's CDR of a leg (switchd/accounting/cdrs/http.py; 503 while starting)
  GET  /healthz       200 while the process serves, from the first second of `switchd run`
  GET  /readyz        200 only when started, ESL is up and CDRs can be stored or spooled
  GET  /metrics       Prometheus exposition
  GET  /v1/calls      live calls from the registry (what `switchd calls` shows)
  POST /v1/calls      originate a call (JSON), answered once FreeSWITCH has a result

Timeouts, the connection bound and clients that go away are the connection layer's
(switchd/adapters/http/connections.py); this module sees only complete requests.
"""
from __future__ import annotations

import hmac
import json
import logging
import re
from itertools import repeat
from typing import Callable
from urllib.parse import unquote

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from switchd import metrics
from switchd.adapters.http.connections import HttpLimits, Server

log = logging.getLogger(__name__)

MAX_FORM_BYTES = 256 * 1024   # a real lookup is ~5 KB; anything near this is hostile
XML_HEADERS = [("Content-Type", "text/xml")]
NOT_FOUND_XML = (b'<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n'
                 b'<document type="freeswitch/xml">\n  <section name="result">\n'
                 b'    <result status="not found"/>\n  </section>\n</document>\n')


_REASONS = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 409: "Conflict",
            502: "Bad Gateway", 503: "Service Unavailable"}


class BadRequest(ValueError):
    pass


class NotReady(Exception):
    """Raised by a collaborator that cannot serve yet (the daemon is still starting)."""


def parse_form(body: bytes) -> dict[str, str]:
    """mod_xml_curl's body: `k=v&k=v`, values %-encoded, spaces as %20 and a literal '+'
    meaning '+' (E.164), so urllib's plus-as-space parsing would corrupt numbers."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = body.decode("latin-1")
    form = _parse_form_fast(text)
    return form if form is not None else _parse_form_exact(text)


def _parse_form_exact(text: str) -> dict[str, str]:
    form = {}
    for pair in text.split("&"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep:
            raise BadRequest(f"form field without '=': {pair[:40]!r}")
        # The first occurrence wins: FreeSWITCH never repeats a field, an attacker might.
        form.setdefault(unquote(key), unquote(value))
    return form


_HIGH_ESCAPE = re.compile("%[89A-Fa-f]")


def _parse_form_fast(text: str) -> dict[str, str] | None:
    """What _parse_form_exact returns, for the shape every real lookup has (ASCII, each
    field once, one '=' at least, no empty field, plain keys, escapes of ASCII bytes only),
    with the per-field work in C; None for anything else, which the exact parser handles.

    The %-escaped values (~20 of ~140) are decoded in one batch: joined with '&' (a raw
    value has none), '%XX' turned into '\\xXX' for the unicode_escape codec (backslashes
    doubled first), split back on the '\\xff' that the literal '&'s became — no escape
    can produce U+00FF because escapes of bytes >= 0x80 were ruled out. An escape that
    urllib would leave as it is ('%zz', a trailing '%') makes the codec fail: exact path."""
    if not text.isascii():
        return None
    pairs = text.split("&")
    try:
        form = dict(map(str.split, pairs, repeat("="), repeat(1)))
    except ValueError:          # a field without '=' or an empty one
        return None
    if len(form) != len(pairs) or "%" in "".join(form):
        return None             # a repeated field (the first must win) or an escaped key
    escaped = [k for k, v in form.items() if "%" in v]
    if escaped:
        raw = "&".join([form[k] for k in escaped])
        if _HIGH_ESCAPE.search(raw) is not None:
            return None         # UTF-8 sequences: urllib's decoding, errors included
        try:
            decoded = (raw.replace("\\", "\\\\").replace("%", "\\x").replace("&", "\\xff")
                       .encode("ascii").decode("unicode_escape").split("\xff"))
        except UnicodeDecodeError:
            return None
        form.update(zip(escaped, decoded))
    return form


class HttpApp:
    """WSGI callable. Collaborators are plain callables so tests can wire just what they need."""

    def __init__(self, route_lookup: Callable[[dict], str] | None = None,
                 readiness: Callable[[], dict] | None = None,
                 live_calls: Callable[[], list] | None = None,
                 originate: Callable[[dict], dict] | None = None, api_token: str | None = None,
                 cdr_ingest=None, cdr_credentials: str | None = None, api=None):
        self.route_lookup = route_lookup
        self.readiness = readiness or (lambda: {})
        self.live_calls = live_calls or (lambda: [])
        self.originate = originate
        self.api_token = api_token
        self.cdr_ingest = cdr_ingest
        self.cdr_credentials = cdr_credentials
        self.api = api      # the /v1 WSGI app (switchd/api); None: the two built-in endpoints

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            if path in ("/fs/dialplan", "/dialplan"):
                if method != "POST":
                    return self._plain(start_response, "405 Method Not Allowed", "POST only\n")
                return self._dialplan(environ, start_response)
            if path == "/fs/cdr":
                if self.cdr_ingest is None:        # starting: FreeSWITCH retries, or keeps it on disk
                    return self._plain(start_response, "503 Service Unavailable",
                                       "starting: the CDR store is not open yet\n")
                from switchd.accounting.cdrs import http as cdr_http
                return cdr_http.handle(environ, start_response, self.cdr_ingest,
                                       self.cdr_credentials)
            if path == "/healthz":
                return self._json(start_response, "200 OK", {"status": "ok"})
            if path == "/readyz":
                problems = self.readiness()
                if problems:
                    return self._json(start_response, "503 Service Unavailable",
                                      {"status": "not ready", "problems": problems})
                return self._json(start_response, "200 OK", {"status": "ready"})
            if path == "/metrics":
                output = generate_latest(metrics.REGISTRY)
                start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
                return [output]
            if path.startswith("/v1/") and self.api is not None:
                return self.api(environ, start_response)
            if path.startswith("/v1/") and not self._authorised(environ):
                return self._json(start_response, "401 Unauthorized",
                                  {"error": "missing or wrong bearer token (http.api_token)"})
            if path == "/v1/calls" and method == "GET":
                return self._json(start_response, "200 OK", {"calls": self.live_calls()})
            if path == "/v1/calls" and method == "POST" and self.originate is not None:
                return self._originate(environ, start_response)
            return self._plain(start_response, "404 Not Found", "no such endpoint\n")
        except NotReady as exc:
            # mod_xml_curl takes a non-200 as a failed lookup: the static fallback refuses.
            return self._plain(start_response, "503 Service Unavailable", f"not ready: {exc}\n")
        except Exception:   # greenlet boundary: one bad request never takes the server down
            log.exception("HTTP handler failed for %s %s", method, path)
            return self._plain(start_response, "500 Internal Server Error", "internal error\n")

    def _dialplan(self, environ, start_response):
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_FORM_BYTES:
            metrics.DIALPLAN_REQUESTS.labels("bad_request").inc()
            return self._plain(start_response, "400 Bad Request", "bad Content-Length\n")
        body = environ["wsgi.input"].read(length)
        try:
            form = parse_form(body)
        except BadRequest as exc:
            metrics.DIALPLAN_REQUESTS.labels("bad_request").inc()
            return self._plain(start_response, "400 Bad Request", f"{exc}\n")
        if form.get("section", "dialplan") != "dialplan" or self.route_lookup is None:
            # Not ours: let FreeSWITCH fall through to its next binding / static XML.
            start_response("200 OK", XML_HEADERS)
            return [NOT_FOUND_XML]
        xml = self.route_lookup(form)
        start_response("200 OK", XML_HEADERS)
        return [xml.encode("utf-8")]

    def _authorised(self, environ) -> bool:
        if not self.api_token:
            return True
        given = environ.get("HTTP_AUTHORIZATION", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.api_token}".encode())

    def _originate(self, environ, start_response):
        from switchd.calls.originate import OriginateError
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            if not 0 < length <= 16 * 1024:
                raise OriginateError("a JSON body of at most 16 KiB is required")
            try:
                payload = json.loads(environ["wsgi.input"].read(length))
            except ValueError as exc:
                raise OriginateError(f"body is not JSON: {exc}") from None
            result = self.originate(payload)
        except OriginateError as exc:
            body = {"error": str(exc)}
            if exc.sip_code:
                body["sip_code"] = exc.sip_code
            return self._json(start_response, f"{exc.status} {_REASONS.get(exc.status, 'Error')}", body)
        except ValueError as exc:
            return self._json(start_response, "400 Bad Request", {"error": str(exc)})
        return self._json(start_response, "200 OK", result)

    @staticmethod
    def _json(start_response, status, payload):
        start_response(status, [("Content-Type", "application/json")])
        return [json.dumps(payload, default=str).encode() + b"\n"]

    @staticmethod
    def _plain(start_response, status, text):
        start_response(status, [("Content-Type", "text/plain")])
        return [text.encode()]


def serve(app: HttpApp, host: str, port: int, limits: HttpLimits = HttpLimits(),
          refuse_lookups: Callable[[], str | None] | None = None) -> Server:
    """Start serving in the background; the caller stops it with `.stop()`.
    `refuse_lookups`: connections.InFlight."""
    server = Server((host, port), app, limits, refuse_lookups)
    server.start()
    log.info("HTTP listening on %s:%s (read timeout %gs, idle timeout %gs, at most %d "
             "connections)", host, server.server_port, limits.read_timeout,
             limits.idle_timeout, limits.max_connections)
    return server
