"""The connection layer of the HTTP server: how long a client may take, how many may be
connected, and what happens when one misbehaves.

gevent's pywsgi gives every connection a greenlet and waits on it as long as the client
likes: a client that sends half a request would hold a socket and a greenlet forever. Here:

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
from dataclasses import dataclass
from typing import Callable

import gevent
from gevent.pywsgi import Input, WSGIHandler, WSGIServer

from switchd import metrics
from switchd.adapters.http.headers import read_headers
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


class Handler(WSGIHandler):
    """One connection: pywsgi's keep-alive loop with deadlines and a pre-read body."""

    _timer: gevent.Timeout | None = None
    _phase = "the request line"
    _body = b""

    def handle(self):
        try:
            super().handle()
        finally:
            self._stop_timer()

    def read_requestline(self):
        limits = self.server.limits
        self.socket.settimeout(limits.idle_timeout)
        try:
            if not self.rfile.peek(1):
                return ""                 # the client closed between requests
        except socket.timeout:
            metrics.HTTP_IDLE_TIMEOUTS.inc()
            return ""
        except OSError:
            return ""                     # reset by the peer: nothing to answer
        # One deadline for the whole request, however the client trickles it: a timer
        # that interrupts whatever read is waiting when it fires (stopped in get_environ,
        # before the application runs, or wherever the request fails).
        self.socket.settimeout(limits.read_timeout)
        self._phase = "the request line"
        self._timer = gevent.Timeout.start_new(limits.read_timeout, ReadTimeout)
        try:
            return super().read_requestline()
        except ReadTimeout as exc:
            self._count_and_log(exc)
            try:
                self.socket.sendall(exc.response)
            except OSError:
                pass
            return ""                     # pywsgi closes the connection
        except BaseException:
            self._stop_timer()
            raise

    def log_request(self):
        """pywsgi formats an access-log line per request even for `log=None`, to write it
        nowhere: formatted only when there is a log."""
        if self.server.access_log:
            super().log_request()

    def MessageClass(self, fp, *args):
        """pywsgi's request headers, without the email parser when they are plain
        (headers.py: the same message, a test holds the two equal)."""
        return read_headers(fp)

    def read_request(self, raw_requestline):
        self._phase = "the headers"
        ok = super().read_request(raw_requestline)
        if not ok:
            self._stop_timer()
            return ok
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            raise LengthRequired("chunked request body; send Content-Length")
        length = self.content_length or 0
        if length > MAX_BODY_BYTES:
            raise BodyTooLarge(f"Content-Length {length} exceeds {MAX_BODY_BYTES}")
        if length:
            self._phase = f"the {length}-byte body"
            if self.headers.get("expect", "").lower() == "100-continue":
                self.socket.sendall(_CONTINUE)
            try:
                body = self.rfile.read(length)
            except socket.timeout:
                raise ReadTimeout() from None
            except OSError as exc:
                raise ClientAborted(f"connection lost in the body: {exc}") from None
            if len(body) < length:
                raise ClientAborted(f"closed the connection after {len(body)} of "
                                    f"{length} body bytes")
            self._body = body
        return ok

    def get_environ(self):
        self._stop_timer()                # the request is in: the application has no deadline
        environ = super().get_environ()
        # The body was read above, within the deadline: the application reads memory.
        self.wsgi_input = Input(io.BytesIO(self._body), len(self._body))
        environ["wsgi.input"] = self.wsgi_input
        self._body = b""
        return environ

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.close()
            self._timer = None

    def _handle_client_error(self, ex):
        """pywsgi's hook for a request that failed before the application ran."""
        self._stop_timer()
        if isinstance(ex, ClientProblem):
            self._count_and_log(ex)
            if ex.response is None:
                return None               # the client is gone: just close
            return ex.response[9:12].decode(), ex.response
        metrics.HTTP_CLIENT_ERRORS.labels("bad_request").inc()
        log.warning("HTTP bad request from %s: %s", _peer(self.client_address),
                    str(ex).splitlines()[0] if str(ex) else type(ex).__name__)
        return "400", _response("400 Bad Request")

    def _count_and_log(self, problem: ClientProblem) -> None:
        metrics.HTTP_CLIENT_ERRORS.labels(problem.outcome).inc()
        detail = str(problem) or (f"{self._phase} did not arrive within http.read_timeout "
                                  f"({self.server.limits.read_timeout:g}s)")
        log.warning("HTTP %s from %s: %s", _REQUEST_WORDS.get(problem.outcome, "request"),
                    _peer(self.client_address), detail)

    def handle_error(self, t, v, tb):
        """Unexpected errors after the application ran (the app catches its own)."""
        if isinstance(v, OSError):
            self.close_connection = True
            log.info("HTTP connection from %s ended while answering: %s",
                     _peer(self.client_address), v)
            return
        super().handle_error(t, v, tb)


_REQUEST_WORDS = {"read_timeout": "request timed out", "aborted": "request aborted by the client"}


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


class Server(WSGIServer):
    """WSGIServer with HttpLimits: a bounded number of connections, each with deadlines."""

    handler_class = Handler
    open_total = 0        # every Server of the process: switchd_http_connections reads it

    def __init__(self, listener, application, limits: HttpLimits,
                 refuse_lookups: Callable[[], str | None] | None = None, **kwargs):
        self.in_flight = InFlight(application, limits.max_in_flight, limits.max_cdr_in_flight,
                                  refuse_lookups)
        super().__init__(listener, self.in_flight, **kwargs)
        self.access_log = kwargs.get("log", "default") is not None
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
            super().handle(sock, address)
        except OSError as exc:            # e.g. the 408 could not be sent: the peer is gone
            log.info("HTTP connection from %s ended: %s", _peer(address), exc)
        finally:
            self.open_connections -= 1
            Server.open_total -= 1


# Read at scrape time: no lock taken per connection.
metrics.HTTP_CONNECTIONS.set_function(lambda: Server.open_total)
