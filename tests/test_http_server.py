"""The HTTP server on real sockets: slow clients, idle clients, clients that abort
mid-body, and the connection bound. The server is switchd's own (switchd.adapters.http.server.serve
with HttpApp); the clients are gevent sockets in this process, so the server's greenlets
run while a client waits. Waits are on socket events (a recv that returns when the server
answers or closes) or polls of the metrics, with deadlines, never fixed sleeps."""
from __future__ import annotations

import logging
import time

import gevent
import pytest
from gevent import socket

from switchd import metrics
from switchd.adapters.http.connections import HttpLimits
from switchd.adapters.http.server import HttpApp, NotReady, serve

XML = '<?xml version="1.0"?><document type="freeswitch/xml"></document>'


def sample(name: str, **labels) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def wait_for(predicate, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        gevent.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def server_at():
    started = []

    def start(read_timeout=0.5, idle_timeout=5.0, max_connections=1000, app=None):
        app = app or HttpApp(route_lookup=lambda form: XML)
        server = serve(app, "127.0.0.1", 0, HttpLimits(read_timeout, idle_timeout, max_connections))
        started.append(server)
        return server.server_port
    yield start
    for server in started:
        server.stop(timeout=1)


def connect(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def read_until_closed(sock, timeout=10.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def request(port, raw: bytes) -> bytes:
    sock = connect(port)
    try:
        sock.sendall(raw)
        return read_until_closed(sock)
    finally:
        sock.close()


HALF_REQUEST = b"POST /fs/dialplan HTTP/1.1\r\nHost: switchd\r\nContent-Length: 40\r\n"


def test_half_a_request_is_answered_408_and_closed_within_the_read_timeout(server_at):
    port = server_at(read_timeout=0.5)
    before = sample("switchd_http_client_errors_total", reason="read_timeout")
    sock = connect(port)
    sock.sendall(HALF_REQUEST)
    started = time.monotonic()
    answer = read_until_closed(sock)
    took = time.monotonic() - started
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert 0.4 <= took < 2.0, took
    assert sample("switchd_http_client_errors_total", reason="read_timeout") == before + 1


def test_a_client_trickling_bytes_is_still_cut_at_the_read_timeout(server_at):
    """The deadline covers the whole request, not each read: one byte every 0.05 s would
    keep a per-read timeout happy forever."""
    port = server_at(read_timeout=0.6)
    sock = connect(port)

    def trickle():
        for byte in HALF_REQUEST + b"X-Pad: " + b"a" * 1000:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                return
            gevent.sleep(0.05)     # the client's pace, not a synchronisation
    sender = gevent.spawn(trickle)
    started = time.monotonic()
    answer = read_until_closed(sock)
    took = time.monotonic() - started
    sender.kill()
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408 ") and took < 2.0, (answer, took)


def test_many_half_requests_do_not_block_a_normal_request(server_at):
    port = server_at(read_timeout=1.5)
    slow = [connect(port) for _ in range(200)]
    for sock in slow:
        sock.sendall(HALF_REQUEST)
    wait_for(lambda: sample("switchd_http_connections") >= 200, what="200 slow connections open")
    started = time.monotonic()
    answer = request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and time.monotonic() - started < 1.0, answer
    # ... and every slow one is closed by the server within its read timeout.
    results = [gevent.spawn(read_until_closed, sock) for sock in slow]
    gevent.joinall(results, timeout=5)
    assert all(r.ready() and r.value.startswith(b"HTTP/1.1 408 ") for r in results)
    for sock in slow:
        sock.close()
    wait_for(lambda: sample("switchd_http_connections") == 0, what="connections released")


def test_an_idle_connection_is_closed_after_the_idle_timeout(server_at):
    port = server_at(idle_timeout=0.5)
    before = sample("switchd_http_idle_timeouts_total")
    sock = connect(port)
    started = time.monotonic()
    assert read_until_closed(sock) == b""
    assert 0.4 <= time.monotonic() - started < 2.0
    sock.close()
    assert sample("switchd_http_idle_timeouts_total") == before + 1


def test_keep_alive_serves_several_requests_then_idles_out(server_at):
    port = server_at(idle_timeout=0.5)
    sock = connect(port)
    sock.settimeout(5)
    for _ in range(3):
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while b'"ok"' not in answer:
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert read_until_closed(sock) == b""
    sock.close()


def test_a_client_aborting_mid_body_is_counted_and_logged_in_one_line(server_at, caplog, capfd):
    port = server_at()
    before = sample("switchd_http_client_errors_total", reason="aborted")
    caplog.set_level(logging.DEBUG)
    sock = connect(port)
    sock.sendall(b"POST /fs/dialplan HTTP/1.1\r\nHost: x\r\nContent-Type: "
                 b"application/x-www-form-urlencoded\r\nContent-Length: 5000\r\n\r\n"
                 + b"section=dialplan&Caller-Destination-Number=1000&" + b"a" * 52)
    sock.close()                                   # what mod_xml_curl does on its timeout
    wait_for(lambda: sample("switchd_http_client_errors_total", reason="aborted") == before + 1,
             what="the abort counted")
    wait_for(lambda: sample("switchd_http_connections") == 0, what="connection released")
    lines = [r for r in caplog.records if r.name == "switchd.adapters.http"]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    record = lines[0]
    assert record.exc_info is None and "\n" not in record.getMessage()
    assert "aborted" in record.getMessage() and "100 of 5000" in record.getMessage()
    assert "Traceback" not in capfd.readouterr().err


def test_a_complete_post_is_routed(server_at):
    body = b"section=dialplan&Caller-Destination-Number=1000"
    answer = request(server_at(), b"POST /fs/dialplan HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(XML.encode()), answer


def test_a_client_expecting_100_continue_gets_it(server_at):
    port = server_at()
    body = b"section=dialplan&Caller-Destination-Number=1000"
    sock = connect(port)
    sock.settimeout(5)
    sock.sendall(b"POST /fs/dialplan HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                 b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
    assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue")
    sock.sendall(body)
    assert read_until_closed(sock).startswith(b"HTTP/1.1 200 ")
    sock.close()


@pytest.mark.parametrize("raw, status, reason", [
    (b"POST /fs/dialplan HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
     b"411", "length_required"),
    (b"POST /fs/dialplan HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", b"413", "too_large"),
    (b"NONSENSE\r\n\r\n", b"400", "bad_request"),
])
def test_bad_requests_get_one_line_and_a_status(server_at, caplog, raw, status, reason):
    before = sample("switchd_http_client_errors_total", reason=reason)
    caplog.set_level(logging.DEBUG)
    answer = request(server_at(), raw)
    assert answer.startswith(b"HTTP/1.1 " + status), answer
    assert sample("switchd_http_client_errors_total", reason=reason) == before + 1
    lines = [r for r in caplog.records if r.name == "switchd.adapters.http"]
    assert len(lines) == 1 and lines[0].exc_info is None, [r.getMessage() for r in lines]


def test_connections_beyond_the_bound_are_refused_fast_and_counted(server_at):
    port = server_at(max_connections=5, idle_timeout=30)
    before = sample("switchd_http_connections_refused_total")
    held = [connect(port) for _ in range(5)]
    wait_for(lambda: sample("switchd_http_connections") == 5, what="5 connections open")
    started = time.monotonic()
    answer = request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 503 ") and time.monotonic() - started < 1.0, answer
    assert sample("switchd_http_connections_refused_total") == before + 1
    assert sample("switchd_http_max_connections") == 5
    for sock in held:
        sock.close()
    wait_for(lambda: sample("switchd_http_connections") == 0, what="connections released")
    answer = request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")


def test_lookups_before_routing_is_up_get_503_naming_the_phase(server_at):
    def not_yet(form):
        raise NotReady("loading rate decks")
    port = server_at(app=HttpApp(route_lookup=not_yet,
                                 readiness=lambda: {"startup": "loading rate decks"}))
    body = b"section=dialplan&Caller-Destination-Number=1000"
    answer = request(port, b"POST /fs/dialplan HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert answer.startswith(b"HTTP/1.1 503 ") and b"loading rate decks" in answer
    assert request(port, b"GET /healthz HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 200 ")
    ready = request(port, b"GET /readyz HTTP/1.0\r\n\r\n")
    assert ready.startswith(b"HTTP/1.1 503 ") and b"loading rate decks" in ready


def test_an_access_line_is_written_only_for_a_server_given_a_log():
    import io

    from switchd.adapters.http.connections import Server
    lookup = (b"POST /fs/dialplan HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
              b"Content-Length: 16\r\n\r\nsection=dialplan")
    access = io.StringIO()
    logged = Server(("127.0.0.1", 0), HttpApp(route_lookup=lambda form: XML), HttpLimits(),
                    log=access)
    logged.start()
    try:
        assert b"200 OK" in request(logged.server_port, lookup)
        wait_for(lambda: access.getvalue(), what="the access line")
    finally:
        logged.stop(timeout=1)
    line = access.getvalue()
    assert line.count("\n") == 1 and f'"POST /fs/dialplan HTTP/1.1" 200 {len(XML)} ' in line


def _answers(data: bytes) -> list[bytes]:
    """The responses in `data`, each cut at its Content-Length."""
    answers = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        answers.append(head + b"\r\n\r\n" + rest[:length])
        data = rest[length:]
    return answers


def test_pipelined_requests_are_answered_in_order_and_close_is_honoured(server_at):
    """Three requests in one write: each answered in turn, the last asked to close."""
    body = b"section=dialplan&Caller-Destination-Number=1000"
    lookup = b"POST /fs/dialplan HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body), body)
    answers = _answers(request(server_at(), lookup + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                               + b"GET /nowhere HTTP/1.1\r\nConnection: close\r\n\r\n"))
    assert [a[:12] for a in answers] == [b"HTTP/1.1 200", b"HTTP/1.1 200", b"HTTP/1.1 404"]
    assert answers[0].endswith(XML.encode()) and b'"ok"' in answers[1]
    assert b"Connection: close" in answers[2] and b"Date: " in answers[2]


def test_http_1_0_is_closed_after_its_answer_and_head_gets_no_body(server_at):
    port = server_at()
    sock = connect(port)
    sock.sendall(b"HEAD /healthz HTTP/1.0\r\n\r\n")
    answer = read_until_closed(sock)              # returns: the server closed
    sock.close()
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in head and rest == b""
    assert int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0]) > 0


def _raises(environ, start_response):
    raise RuntimeError("the application fell over")


def _answers_text(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return ["text, not bytes"]


@pytest.mark.parametrize("app", [_raises, _answers_text])
def test_an_application_that_fails_gets_its_client_a_500_and_a_logged_traceback(
        server_at, caplog, app):
    """HttpApp answers its own errors; this is the connection layer's last resort."""
    port = server_at(app=app)
    caplog.set_level(logging.ERROR)
    answer = request(port, b"GET /v1/calls HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 500 ") and b"Connection: close" in answer, answer
    [record] = [r for r in caplog.records if r.name == "switchd.adapters.http"]
    assert "GET /v1/calls" in record.getMessage() and record.exc_info is not None


def test_header_names_with_underscores_never_pose_as_dashed_ones(server_at):
    """`X_Foo` and `X-Foo` have the same CGI name; only the dashed one is taken (an
    Authorization_ field sent past a proxy must not authenticate)."""
    seen = []

    def app(environ, start_response):
        seen.append(environ.get("HTTP_AUTHORIZATION"))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    port = server_at(app=app)
    request(port, b"GET /v1/calls HTTP/1.1\r\nAuthorization_: Bearer forged\r\n"
            b"Connection: close\r\n\r\n")
    request(port, b"GET /v1/calls HTTP/1.1\r\nAuthorization: Bearer real\r\n"
            b"Connection: close\r\n\r\n")
    assert seen == [None, "Bearer real"]
