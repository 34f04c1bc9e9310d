"""The connection layer of the HTTP server: how long a client may take, how many may be
connected, and what happens when one misbehaves.

An HTTP/1.1 server of its own on gevent's StreamServer (a greenlet a connection), under a
WSGI application: a request is read whole (request.py parses its head), the application
runs on it, its answer goes out in one send; keep-alive and pipelined requests are
answered in turn. It does what switchd needs and no more (no chunked bodies either way:
every answer is built in memory). gevent's pywsgi, which it replaces, took ~40 % more CPU
a request on a new connection (docs/benchmarks.md). No client holds a connection longer
than these allow:

* idle timeout: a connection waiting for the first byte of its next request (a new one,
  or keep-alive between requests) is closed after `idle_timeout` seconds;
* read timeout: once a request's first byte arrived, the whole request (request line,
  headers, body) must arrive within `read_timeout` seconds, however the client trickles
  it; otherwise 408 and the connection is closed;
* the body is read here, before the application runs, so a client that goes away in the
  middle of its body (mod_xml_curl does when its own timeout fires) is one counted,
  one-line event instead of an exception inside a handler;
* at most `max_connections` connections at once: the next one gets an immediate 503 and
  is closed (counted), instead of queueing behind the others;
* at most `max_in_flight` requests of each kind (dialplan lookups, API requests, the
  rest; FreeSWITCH's CDR posts `max_cdr_in_flight`) handled at once (`InFlight`): a
  request beyond it gets
  an immediate 503 (counted in switchd_http_requests_shed_total), so an HTTP flood cannot
  take the turns of the ESL event reader and the CDR writer. Every admitted request
  yields once before it runs, which is what makes the bound work: the dialplan handler
  never waits on the network, so without that yield every ready connection would be
  served back to back in one turn of the loop, however many there are. `/healthz`,
  `/readyz` and `/metrics` are never shed;
* dialplan lookups are refused the same way, whatever is in flight, while the daemon says
  new calls must wait (`refuse_lookups`: its ESL events are too far behind).
"""
from __future__ import annotations

import io
import logging
import socket
import sys
import time
from dataclasses import dataclass
from email.utils import formatdate
from typing import Callable
from urllib.parse import unquote

import gevent
from gevent.server import StreamServer

from switchd import metrics
from switchd.adapters.http.request import (
    MAX_HEAD_BYTES, MalformedRequest, RequestHead, content_length, head_end, keeps_alive,
    parse_head,
)
from switchd.adapters.http.shed_log import ShedLog

log = logging.getLogger("switchd.adapters.http")

MAX_BODY_BYTES = 1024 * 1024      # the largest body any endpoint takes is 256 KiB


@dataclass(frozen=True)
class HttpLimits:
    read_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_connections: int = 1000
    max_in_flight: int = 64          # per kind of request
    max_cdr_in_flight: int = 512     # FreeSWITCH's CDR posts: they mostly wait on a commit


def _response(status: str) -> bytes:
    return (f"HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(status) + 1}\r\n\r\n{status}\n").encode()


_REFUSED = _response("503 Service Unavailable")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class ClientProblem(Exception):
    """The client, not the application, ended this request. `response` is what it gets
    (None: it is gone), `outcome` how it is counted."""
    response: bytes | None = None
    outcome = "bad_request"


class ReadTimeout(ClientProblem):
    response = _response("408 Request Timeout")
    outcome = "read_timeout"


class ClientAborted(ClientProblem):
    outcome = "aborted"


class BodyTooLarge(ClientProblem):
    response = _response("413 Payload Too Large")
    outcome = "too_large"


class LengthRequired(ClientProblem):
    response = _response("411 Length Required")
    outcome = "length_required"


class BadRequest(ClientProblem):
    response = _response("400 Bad Request")
    outcome = "bad_request"


class Connection:
    """One client connection: requests read within their deadlines, answered in turn
    (keep-alive, pipelining), until the client closes, idles out or misbehaves."""

    def __init__(self, server: "Server", sock, address) -> None:
        self.server = server
        self.sock = sock
        self.address = address
        self.buffer = b""
        self.phase = "the request"        # what is being read: for a timeout's log line

    def serve(self) -> None:
        limits = self.server.limits
        # Waiting for a request's first byte is bounded by the socket's own timeout; the
        # rest of the request, once it has begun, by one deadline (_read_request).
        self.sock.settimeout(limits.idle_timeout)
        while True:
            try:
                request = self._read_request(limits)
            except ClientProblem as problem:
                self._count_and_log(problem)
                if problem.response is not None:
                    self._send(problem.response)
                return
            if request is None:
                return
            if not self._answer(*request):
                return

    # --- reading --------------------------------------------------------------------------
    def _read_request(self, limits: HttpLimits):
        """(head, body) of the next request; None when the client closed or idled out
        before sending one."""
        self.buffer = self.buffer.lstrip(b"\r\n")   # RFC 9112 §2.2: blank lines before one
        if not self.buffer:
            try:
                data = self.sock.recv(_RECV_BYTES)
            except socket.timeout:
                metrics.HTTP_IDLE_TIMEOUTS.inc()
                return None
            except OSError:
                return None               # reset by the peer: nothing to answer
            if not data:
                return None               # closed between requests
            self.buffer = data.lstrip(b"\r\n")
        # Usually the whole request is in that read. When it is not, the rest has one
        # deadline, however the client trickles it: a timer, armed at the first wait,
        # that interrupts whichever read is waiting when it fires.
        timer = None
        try:
            while (found := head_end(self.buffer)) is None:
                if len(self.buffer) > MAX_HEAD_BYTES:
                    raise BadRequest(f"request head over {MAX_HEAD_BYTES} bytes")
                timer = timer if timer is not None else _deadline(limits)
                self._read_more("the request head")
            head = self._head(found)
            length = self._body_length(head)
            if len(self.buffer) < length:
                timer = timer if timer is not None else _deadline(limits)
                if (head.get("expect") or "").lower() == "100-continue":
                    self.sock.sendall(_CONTINUE)
                while len(self.buffer) < length:
                    self._read_more(f"the {length}-byte body", length)
            return self._take(head, length)
        finally:
            if timer is not None:
                timer.close()

    def _head(self, found: tuple[int, int]) -> RequestHead:
        end, body_start = found
        if end > MAX_HEAD_BYTES:
            raise BadRequest(f"request head over {MAX_HEAD_BYTES} bytes")
        try:
            head = parse_head(self.buffer[:end])
        except MalformedRequest as exc:
            raise BadRequest(str(exc)) from None
        self.buffer = self.buffer[body_start:]
        return head

    @staticmethod
    def _body_length(head: RequestHead) -> int:
        encoding = head.get("transfer-encoding")
        if encoding is not None:
            raise LengthRequired(f"Transfer-Encoding {encoding[:40]!r} request body; "
                                 "send Content-Length")
        try:
            length = content_length(head)
        except MalformedRequest as exc:
            raise BadRequest(str(exc)) from None
        if length > MAX_BODY_BYTES:
            raise BodyTooLarge(f"Content-Length {length} exceeds {MAX_BODY_BYTES}")
        return length

    def _read_more(self, what: str, body_length: int | None = None) -> None:
        self.phase = what
        try:
            data = self.sock.recv(_RECV_BYTES)
        except socket.timeout:
            raise ReadTimeout() from None     # the idle timeout, shorter than the read one
        except OSError as exc:
            raise ClientAborted(f"connection lost in {what}: {exc}") from None
        if not data:
            got = (f"{len(self.buffer)} of {body_length} body bytes" if body_length
                   else f"{len(self.buffer)} bytes of {what}")
            raise ClientAborted(f"closed the connection after {got}")
        self.buffer += data

    def _take(self, head: RequestHead, length: int) -> tuple[RequestHead, bytes]:
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return head, body

    # --- answering ------------------------------------------------------------------------
    def _answer(self, head: RequestHead, body: bytes) -> bool:
        """Run the application on the request and send its answer; whether the connection
        stays open for the next request."""
        started = time.perf_counter()
        environ = self._environ(head, body)
        response: list = []

        def start_response(status, headers, exc_info=None):
            if exc_info is not None and response:
                raise exc_info[1].with_traceback(exc_info[2])
            response[:] = [status, headers]
            return chunks.append              # WSGI's write(); no app here uses it

        chunks: list[bytes] = []
        keep_alive = keeps_alive(head)
        try:
            result = self.server.application(environ, start_response)
            try:
                chunks.extend(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
            status, headers = response
            payload = b"".join(chunks)
            sent = _response_head(head, status, headers, len(payload), keep_alive)
        except Exception:
            log.exception("HTTP %s %s failed", head.method, head.target[:200])
            status, payload, keep_alive = "500 Internal Server Error", b"", False
            sent = _response_head(head, status, _ERROR_HEADERS, 0, keep_alive)
        if head.method != "HEAD" and status[:3] not in ("204", "304"):
            sent += payload
        if not self._send(sent):
            return False
        if self.server.access_log is not None:
            self.server.access_log.write(
                f'{_peer(self.address)} "{head.method} {head.target} {head.version}" '
                f'{status[:3]} {len(payload)} {time.perf_counter() - started:.6f}\n')
        return keep_alive

    def _environ(self, head: RequestHead, body: bytes) -> dict:
        path, _, query = head.target.partition("?")
        if "%" in path:
            path = unquote(path, encoding="latin-1")
        environ = {
            "REQUEST_METHOD": head.method, "SCRIPT_NAME": "", "PATH_INFO": path,
            "QUERY_STRING": query, "SERVER_PROTOCOL": head.version,
            "SERVER_NAME": self.server.server_host, "SERVER_PORT": str(self.server.server_port),
            "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
            "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False,
        }
        if isinstance(self.address, tuple) and len(self.address) >= 2:
            environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = self.address[0], str(self.address[1])
        for name, value in head.fields.items():
            if "_" in name:
                continue                  # X_Y would pose as X-Y: the CGI names are the same
            key = name.upper().replace("-", "_")
            environ[key if key in _CGI_UNPREFIXED else "HTTP_" + key] = value
        return environ

    def _send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError as exc:
            log.info("HTTP connection from %s ended while answering: %s",
                     _peer(self.address), exc)
            return False

    def _count_and_log(self, problem: ClientProblem) -> None:
        metrics.HTTP_CLIENT_ERRORS.labels(problem.outcome).inc()
        detail = str(problem) or (f"{self.phase} did not arrive within http.read_timeout "
                                  f"({self.server.limits.read_timeout:g}s)")
        log.warning("HTTP %s from %s: %s", _REQUEST_WORDS.get(problem.outcome, "request"),
                    _peer(self.address), detail)


_RECV_BYTES = 64 * 1024
_CGI_UNPREFIXED = frozenset({"CONTENT_LENGTH", "CONTENT_TYPE"})
_ERROR_HEADERS = [("Content-Type", "text/plain")]
_date = (0, "")


def _deadline(limits: HttpLimits) -> gevent.Timeout:
    return gevent.Timeout.start_new(limits.read_timeout, ReadTimeout)


def _response_head(request: RequestHead, status: str, headers: list[tuple[str, str]],
                   length: int, keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {status}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in headers]
    if not any(name.lower() == "content-length" for name, _ in headers):
        lines.append(f"Content-Length: {length}\r\n")
    lines.append(f"Date: {_http_date()}\r\n")
    if not keep_alive:
        lines.append("Connection: close\r\n")
    elif request.version == "HTTP/1.0":
        lines.append("Connection: keep-alive\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


def _http_date() -> str:
    """The Date field (RFC 9110 §6.6.1), formatted once a second."""
    global _date
    now = int(time.time())
    if now != _date[0]:
        _date = (now, formatdate(now, usegmt=True))
    return _date[1]


_REQUEST_WORDS = {"read_timeout": "request timed out", "aborted": "request aborted by the client",
                  "bad_request": "bad request"}


def _peer(address) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address or "-")


# Answered whatever the load: a supervisor or a balancer must see the process alive and
# its readiness even while requests are being shed.
_NEVER_SHED = frozenset({"/healthz", "/readyz", "/metrics"})
_SHED_HEADERS = [("Content-Type", "text/plain"), ("Retry-After", "1")]


def request_kind(path: str) -> str:
    """What a request is, for its in-flight bound and the shed counter's label."""
    if path in ("/fs/dialplan", "/dialplan"):
        return "dialplan"
    if path == "/fs/cdr":
        return "cdr"
    return "api" if path.startswith("/v1/") else "other"


class InFlight:
    """WSGI middleware: at most `limit` requests of each kind (dialplan lookups, API
    requests, the rest; switch CDR posts `cdr_limit`) in the application at once, beyond it
    an immediate 503. Each kind has its own bound so that one cannot take another's turns:
    CDR posts waiting on PostgreSQL, or an API client's burst, never get a dialplan lookup
    shed. CDR posts get a higher bound: one waiting for its group commit costs no CPU.
    mod_xml_curl takes a non-200 as a failed lookup: it logs "Received HTTP error 503",
    returns no document, and FreeSWITCH falls through to the next binding and then to the
    static dialplan (freeswitch-conf/dialplan: refuse, never route unpoliced). mod_json_cdr
    retries a refused CDR, then keeps it in its error directory."""

    def __init__(self, application, limit: int, cdr_limit: int | None = None,
                 refuse_lookups: Callable[[], str | None] | None = None):
        self.application = application
        # Asked before each dialplan lookup is admitted: a reason to refuse new calls now
        # (the daemon's: ESL events too far behind), or None.
        self.refuse_lookups = refuse_lookups
        self.limits = {"dialplan": limit, "cdr": cdr_limit or limit, "api": limit,
                       "other": limit}
        self.in_flight = dict.fromkeys(self.limits, 0)
        self.shed_log = ShedLog()

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path in _NEVER_SHED:
            return self.application(environ, start_response)
        kind = request_kind(path)
        if self.in_flight[kind] >= self.limits[kind]:
            return self._shed(start_response, kind, "in_flight",
                              b"overloaded: too many requests in flight, try again\n")
        if kind == "dialplan" and self.refuse_lookups is not None:
            reason = self.refuse_lookups()
            if reason is not None:
                return self._shed(start_response, kind, reason,
                                  b"overloaded: handling the calls already up, try again\n")
        self.shed_log.admitted()
        self.in_flight[kind] += 1
        try:
            # The fair-queuing point: the request waits for its turn behind what is
            # already ready (the event reader, the writers, requests admitted before it).
            gevent.sleep(0)
            return self.application(environ, start_response)
        finally:
            self.in_flight[kind] -= 1

    def _shed(self, start_response, kind: str, reason: str, text: bytes) -> list[bytes]:
        metrics.HTTP_REQUESTS_SHED.labels(kind, reason).inc()
        self.shed_log.shed(kind, reason)
        start_response("503 Service Unavailable", _SHED_HEADERS)
        return [text]


class Server(StreamServer):
    """The HTTP/1.1 server: a bounded number of connections, each with deadlines
    (`Connection`), requests through the in-flight bounds to a WSGI application.
    `log`: a file to write an access line per request to (none by default)."""

    open_total = 0        # every Server of the process: switchd_http_connections reads it

    def __init__(self, listener, application, limits: HttpLimits,
                 refuse_lookups: Callable[[], str | None] | None = None, log=None):
        self.in_flight = InFlight(application, limits.max_in_flight, limits.max_cdr_in_flight,
                                  refuse_lookups)
        self.application = self.in_flight
        super().__init__(listener)
        self.access_log = log
        self.limits = limits
        self.open_connections = 0
        metrics.HTTP_MAX_CONNECTIONS.set(limits.max_connections)

    def handle(self, sock, address):
        if self.open_connections >= self.limits.max_connections:
            metrics.HTTP_CONNECTIONS_REFUSED.inc()
            try:
                sock.settimeout(1.0)
                sock.sendall(_REFUSED)
            except OSError:
                pass
            finally:
                sock.close()
            return
        self.open_connections += 1
        Server.open_total += 1
        try:
            Connection(self, sock, address).serve()
        except OSError as exc:            # e.g. the 100 Continue could not be sent
            log.info("HTTP connection from %s ended: %s", _peer(address), exc)
        finally:
            self.open_connections -= 1
            Server.open_total -= 1


# Read at scrape time: no lock taken per connection.
metrics.HTTP_CONNECTIONS.set_function(lambda: Server.open_total)
