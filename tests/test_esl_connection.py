"""ESLConnection against tiny FreeSWITCH fakes on real loopback sockets.

Each greenswitch edge named in the brief has a test here; waits are on events and queues,
never on sleeps.
"""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from urllib.parse import quote

import gevent
import gevent.queue
import gevent.socket
import pytest
from gevent.event import Event
from gevent.server import StreamServer

from switchd.adapters.esl.connection import (
    ESLAuthError, ESLConnection, ESLDisconnected, ESLNotConnected, ESLRejected, ESLTimeout,
)
from switchd.adapters.esl.events import ChannelEvent, HeartbeatEvent, JobEvent
from switchd.metrics import ESL_EVENTS_DROPPED, ESL_EVENTS_OVERFLOWED, ESL_HANDLER_ERRORS, ESL_PROTOCOL_ERRORS

AUTH_REQUEST = b"Content-Type: auth/request\n\n"
FIXTURES = Path(__file__).parent / "fixtures" / "freeswitch-1.10"


def reply(text: str, **extra: str) -> bytes:
    lines = ["Content-Type: command/reply", f"Reply-Text: {text}"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in extra.items()]
    return ("\n".join(lines) + "\n\n").encode()


def api_response(body: bytes) -> bytes:
    return b"Content-Type: api/response\nContent-Length: %d\n\n" % len(body) + body


def plain_event(headers: dict[str, str], body: bytes | None = None) -> bytes:
    """A text/event-plain frame encoded the way FreeSWITCH does (values URL-encoded)."""
    text = "".join(f"{k}: {quote(v, safe=',/')}\n" for k, v in headers.items())
    data = text.encode()
    if body is not None:
        data += b"Content-Length: %d\n\n" % len(body) + body
    else:
        data += b"\n"
    return b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(data) + data


class Peer:
    """The server side of one accepted connection."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.commands: list[str] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_command(self) -> str | None:
        while b"\n\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buf += data
        cmd, self.buf = self.buf.split(b"\n\n", 1)
        self.commands.append(cmd.decode())
        return cmd.decode()

    def close(self) -> None:
        self.sock.close()


class FakeFS:
    """A tiny ESL server on 127.0.0.1:0. ``script(peer)`` plays each connection;
    the default greets, authenticates (password ClueCon) and answers like FreeSWITCH."""

    def __init__(self, script=None, password: str = "ClueCon", api=None, port: int = 0):
        self.password = password
        self.api = api or {}
        self.script = script or self.standard
        self.peers: gevent.queue.Queue = gevent.queue.Queue()
        self.accepted = 0
        self.server = StreamServer(("127.0.0.1", port), self._handle)
        self.server.start()
        self.port = self.server.server_port

    def _handle(self, sock, _addr):
        self.accepted += 1
        peer = Peer(sock)
        self.peers.put(peer)
        try:
            self.script(peer)
        except OSError:
            pass

    def greet_and_auth(self, peer: Peer) -> bool:
        peer.send(AUTH_REQUEST)
        cmd = peer.read_command()
        if cmd != f"auth {self.password}":
            peer.send(reply("-ERR invalid") + b"Content-Type: text/disconnect-notice\n"
                      b"Content-Length: 67\n\nDisconnected, goodbye.\n"
                      b"See you at ClueCon! http://www.cluecon.com/\n")
            peer.close()
            return False
        peer.send(reply("+OK accepted"))
        return True

    def answer(self, peer: Peer, cmd: str) -> None:
        if cmd.startswith("api "):
            peer.send(api_response(self.api.get(cmd[4:], b"-ERR no such command\n")))
        elif cmd.startswith("bgapi "):
            job = cmd.split("Job-UUID: ", 1)[1] if "Job-UUID: " in cmd else "server-made"
            peer.send(reply(f"+OK Job-UUID: {job}", Job_UUID=job))
            peer.send(plain_event({"Event-Name": "BACKGROUND_JOB", "Job-UUID": job},
                                  body=b"+OK done\n"))
        elif cmd.startswith("event "):
            peer.send(reply("+OK event listener enabled plain"))
        elif cmd == "exit":
            peer.send(reply("+OK bye") + b"Content-Type: text/disconnect-notice\n"
                      b"Content-Length: 23\n\nDisconnected, goodbye.\n")
            peer.close()
        else:
            peer.send(reply("-ERR command not found"))

    def standard(self, peer: Peer) -> None:
        if not self.greet_and_auth(peer):
            return
        while (cmd := peer.read_command()) is not None:
            self.answer(peer, cmd)

    def stop(self):
        self.server.stop(timeout=0.1)


@pytest.fixture
def servers():
    started: list[FakeFS] = []

    def make(*args, **kwargs) -> FakeFS:
        server = FakeFS(*args, **kwargs)
        started.append(server)
        return server
    yield make
    for server in started:
        server.stop()


class Recorder:
    def __init__(self):
        self.events = gevent.queue.Queue()
        self.disconnected = gevent.event.AsyncResult()

    def on_event(self, event):
        self.events.put(event)

    def on_disconnect(self, conn, reason):
        self.disconnected.set(reason)


def connect(server: FakeFS, rec: Recorder | None = None, **kwargs) -> ESLConnection:
    rec = rec or Recorder()
    conn = ESLConnection("127.0.0.1", server.port, kwargs.pop("password", "ClueCon"),
                         on_event=rec.on_event, on_disconnect=rec.on_disconnect,
                         connect_timeout=2, command_timeout=2, **kwargs)
    conn.connect()
    return conn


def scripted(*frames: bytes, then_close: bool = True):
    """A connection script: authenticate, then send raw bytes after the first command."""
    def script(peer: Peer):
        fake = FakeFS.__new__(FakeFS)
        fake.password = "ClueCon"
        if not fake.greet_and_auth(peer):
            return
        peer.read_command()
        for frame in frames:
            peer.send(frame)
        if then_close:
            peer.close()
        else:
            while peer.read_command() is not None:
                pass
    return script


# --- the happy path -----------------------------------------------------------------------
def test_connect_auth_api_and_close(servers):
    server = servers(api={"version": b"FreeSWITCH Version 1.10.12-release\n"})
    rec = Recorder()
    conn = connect(server, rec)
    assert conn.connected
    assert conn.api("version") == "FreeSWITCH Version 1.10.12-release\n"
    assert conn.api("nonsense") == "-ERR no such command\n"
    conn.stop()
    assert not conn.connected
    assert rec.disconnected.get(timeout=2)
    peer = server.peers.get(timeout=1)
    assert peer.commands == ["auth ClueCon", "api version", "api nonsense", "exit"]


def test_replay_of_captured_api_session(servers):
    """Answer each command with the next captured S>C block of esl-api.txt."""
    from test_esl_framing import transcript_streams
    from switchd.adapters.esl.framing import FrameParser
    parser = FrameParser()
    parser.feed(transcript_streams(FIXTURES / "esl-api.txt")[("api", "S>C")])
    captured = list(parser.frames())
    responses = [f for f in captured if f.content_type == "api/response"]

    def script(peer):
        peer.send(AUTH_REQUEST)
        peer.read_command()
        peer.send(reply("+OK accepted"))
        for frame in responses:
            if peer.read_command() is None:
                return
            peer.send(api_response(frame.body))

    conn = connect(servers(script))
    assert conn.api("version").startswith("FreeSWITCH Version 1.10.12-release")
    assert conn.api("status").startswith("UP 0 years")
    assert conn.api("show channels as json") == '{"row_count": 0}\n'
    conn.close()


# --- authentication -----------------------------------------------------------------------
def test_wrong_password_raises_auth_error_and_fires_disconnect(servers):
    server = servers()
    rec = Recorder()
    with pytest.raises(ESLAuthError, match="-ERR invalid"):
        connect(server, rec, password="WrongPassword")
    assert rec.disconnected.get(timeout=2)      # the notice or our own close, whichever first


def test_rude_rejection_raises_rejected(servers):
    def script(peer):
        peer.send(b"Content-Type: text/rude-rejection\nContent-Length: 24\n\n"
                  b"Access Denied, go away.\n")
        peer.close()
    with pytest.raises(ESLRejected, match="Access Denied"):
        connect(servers(script))


def test_silent_server_times_out_auth(servers):
    hold = Event()
    with pytest.raises(ESLTimeout):
        conn = ESLConnection("127.0.0.1", servers(lambda peer: hold.wait(5)).port, "ClueCon",
                             connect_timeout=0.2)
        conn.connect()
    hold.set()


def test_connection_refused_is_not_connected():
    conn = ESLConnection("127.0.0.1", 1, "ClueCon", connect_timeout=1)
    with pytest.raises(ESLNotConnected, match="cannot connect"):
        conn.connect()


# --- greenswitch edges ----------------------------------------------------------------------
def _assert_recycled(conn: ESLConnection, rec: Recorder, pending, match: str):
    reason = rec.disconnected.get(timeout=2)
    assert match in reason
    assert not conn.connected
    with pytest.raises(ESLDisconnected):
        pending.get(timeout=2)
    with pytest.raises(ESLNotConnected):
        conn.api("status")


@pytest.mark.parametrize("frame, match", [
    (b"Content-Type: text/event-plain\n\nEvent-Name: HEARTBEAT\n\n", "without Content-Length"),
    (b"Content-Type: api/response\nContent-Length: lots\n\nxx", "not a non-negative integer"),
    (b"Content-Type: command/reply\nReply-Text: \xff\xfe\n\n", "not valid UTF-8"),
    (b"X-Header: " + b"a" * 100_000, "without an end"),     # a header line with no limit
])
def test_malformed_frame_ends_connection_cleanly(servers, frame, match):
    before = ESL_PROTOCOL_ERRORS._value.get()
    rec = Recorder()
    conn = connect(servers(scripted(frame, then_close=False)), rec)
    pending = gevent.spawn(conn.api, "status")
    _assert_recycled(conn, rec, pending, match)
    assert ESL_PROTOCOL_ERRORS._value.get() == before + 1


def test_short_body_then_close_ends_cleanly_and_process_stays_responsive(servers):
    """greenswitch's _read_socket loops forever on b'' here, starving every greenlet."""
    ticks = []

    def tick():
        while True:
            ticks.append(1)
            gevent.sleep(0.005)
    ticker = gevent.spawn(tick)
    rec = Recorder()
    conn = connect(servers(scripted(b"Content-Type: api/response\nContent-Length: 500\n\nshort")),
                   rec)
    before = len(ticks)
    pending = gevent.spawn(conn.api, "status")
    _assert_recycled(conn, rec, pending, "EOF")
    gevent.sleep(0.05)      # measuring liveness, not synchronising
    assert len(ticks) > before
    ticker.kill()


def test_invalid_utf8_in_event_body_is_delivered_not_fatal(servers):
    event = (b"Event-Name: CHANNEL_CREATE\nUnique-ID: u1\n"
             b"Caller-Caller-ID-Name: caf\xe9\n\n")
    frame = b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(event) + event
    rec = Recorder()
    conn = connect(servers(scripted(frame, api_response(b"+OK still here\n"), then_close=False)),
                   rec)
    assert conn.api("status") == "+OK still here\n"
    ev = rec.events.get(timeout=2)
    assert isinstance(ev, ChannelEvent) and ev.uuid == "u1"
    assert conn.connected
    conn.close()


def test_encoded_newline_in_caller_name_does_not_inject_a_header(servers):
    evil = plain_event({"Event-Name": "CHANNEL_CREATE", "Unique-ID": "real-uuid",
                        "Caller-Caller-ID-Number": "Evil\nUnique-ID: forged\n\n"})
    assert b"%0A" in evil
    rec = Recorder()
    conn = connect(servers(scripted(evil, reply("+OK"), then_close=False)), rec)
    conn.send("event plain CHANNEL_CREATE")
    ev = rec.events.get(timeout=2)
    assert ev.uuid == "real-uuid" and ev.caller_number == "Evil\nUnique-ID: forged\n\n"
    conn.close()


def test_send_to_stalled_server_times_out_and_fifo_survives(servers):
    release = Event()

    def script(peer):
        FakeFS.greet_and_auth(server, peer)
        peer.read_command()
        peer.read_command()
        release.wait(5)               # a late reply to the first, then the second
        peer.send(api_response(b"first\n") + api_response(b"second\n"))
        while (cmd := peer.read_command()) is not None:
            peer.send(api_response(cmd.encode() + b"\n"))
    server = servers(script)
    conn = connect(server)
    with pytest.raises(ESLTimeout):
        conn.api("one", timeout=0.2)
    second = gevent.spawn(conn.api, "two", timeout=5)
    gevent.sleep(0)
    release.set()
    assert second.get(timeout=2) == "second\n"
    assert conn.api("three") == "api three\n"
    conn.close()


def test_write_to_server_that_stops_reading_times_out(servers):
    hold = Event()

    def script(peer):
        peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        FakeFS.greet_and_auth(server, peer)
        hold.wait(10)                 # never reads again: the socket buffers fill up
    server = servers(script)
    rec = Recorder()
    conn = connect(server, rec)
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    with pytest.raises(ESLTimeout):
        conn.api("echo " + "x" * (4 * 1024 * 1024), timeout=0.3)
    assert "write timed out" in rec.disconnected.get(timeout=2)
    hold.set()


def test_pending_sends_fail_when_connection_drops(servers):
    got_three = Event()

    def script(peer):
        FakeFS.greet_and_auth(server, peer)
        for _ in range(3):
            peer.read_command()
        got_three.set()
        peer.close()
    server = servers(script)
    rec = Recorder()
    conn = connect(server, rec)
    calls = [gevent.spawn(conn.api, f"cmd{i}", timeout=30) for i in range(3)]
    assert got_three.wait(2)
    for call in calls:
        with pytest.raises(ESLDisconnected):
            call.get(timeout=2)
    assert "EOF" in rec.disconnected.get(timeout=1)
    with pytest.raises(ESLNotConnected):
        conn.send("api status")


def test_disconnect_notice_closes_but_linger_does_not(servers):
    linger = (b"Content-Type: text/disconnect-notice\nContent-Disposition: linger\n"
              b"Content-Length: 4\n\nbye\n")
    notice = (b"Content-Type: text/disconnect-notice\nContent-Length: 31\n\n"
              b"The system is being shut down.\n")
    rec = Recorder()
    conn = connect(servers(scripted(linger, api_response(b"ok\n"), notice, then_close=False)),
                   rec)
    assert conn.api("status") == "ok\n"
    assert "being shut down" in rec.disconnected.get(timeout=2)
    assert not conn.connected


# --- dispatch --------------------------------------------------------------------------------
def test_slow_handler_never_blocks_the_reader_and_full_queue_drops(servers):
    events = [plain_event({"Event-Name": "HEARTBEAT", "Event-Date-Timestamp": str(i)})
              for i in range(50)]
    unblock, entered = Event(), Event()

    def slow(event):
        entered.set()
        unblock.wait(5)

    def script(peer):
        FakeFS.greet_and_auth(server, peer)
        peer.read_command()
        peer.send(events[0])
        entered.wait(5)               # the handler now holds event 0 and is stuck
        peer.send(b"".join(events[1:]) + api_response(b"pong\n"))
        while peer.read_command() is not None:
            pass
    server = servers(script)
    before = ESL_EVENTS_DROPPED.labels("queue_full")._value.get()
    handler_errors = ESL_HANDLER_ERRORS.labels("queue_full")._value.get()
    conn = ESLConnection("127.0.0.1", server.port, "ClueCon", on_event=slow,
                         event_queue_size=10)
    conn.connect()
    assert conn.api("ping", timeout=2) == "pong\n"       # answered while the handler is stuck
    assert conn.dropped_events == 49 - 10
    assert ESL_EVENTS_DROPPED.labels("queue_full")._value.get() == before + 39
    # A drop is not a handler error: the two counters answer different questions.
    assert ESL_HANDLER_ERRORS.labels("queue_full")._value.get() == handler_errors
    unblock.set()
    conn.close()


def test_full_queue_never_drops_a_hangup_and_keeps_order(servers):
    """Issue 9: under a burst that overflows the queue, CREATEs may be dropped but every
    HANGUP_COMPLETE (and the resync marker posted behind them) reaches the handler, in
    wire order, and the reader never blocks."""
    first = plain_event({"Event-Name": "CHANNEL_CREATE", "Unique-ID": "first"})
    burst = []
    for i in range(40):
        burst.append(plain_event({"Event-Name": "CHANNEL_CREATE", "Unique-ID": f"c{i}"}))
        burst.append(plain_event({"Event-Name": "CHANNEL_HANGUP_COMPLETE",
                                  "Unique-ID": f"c{i}", "Hangup-Cause": "NORMAL_CLEARING"}))
    unblock, entered = Event(), Event()
    seen = []

    def slow(event):
        entered.set()
        unblock.wait(5)
        seen.append((getattr(event, "name", "marker"), getattr(event, "uuid", event)))

    def script(peer):
        FakeFS.greet_and_auth(server, peer)
        peer.read_command()
        peer.send(first)
        entered.wait(5)
        peer.send(b"".join(burst) + api_response(b"pong\n"))
        while peer.read_command() is not None:
            pass
    server = servers(script)
    before = ESL_EVENTS_OVERFLOWED._value.get()
    conn = ESLConnection("127.0.0.1", server.port, "ClueCon", on_event=slow,
                         event_queue_size=10)
    conn.connect()
    assert conn.api("ping", timeout=2) == "pong\n"        # the reader was never blocked
    conn.post("resync-marker")
    assert ESL_EVENTS_OVERFLOWED._value.get() > before
    unblock.set()
    deadline = time.monotonic() + 5
    while ("marker", "resync-marker") not in seen and time.monotonic() < deadline:
        gevent.sleep(0.01)
    hangups = [uuid for name, uuid in seen if name == "CHANNEL_HANGUP_COMPLETE"]
    assert hangups == [f"c{i}" for i in range(40)]
    assert seen[-1] == ("marker", "resync-marker")           # behind everything received
    assert conn.dropped_events > 0                           # only CREATEs were dropped
    conn.close()


def test_caught_up_is_reached_once_every_event_received_before_it_is_applied(servers):
    """A job's result is resolved as it is read, ahead of the channel events before it in
    the queue; caught_up() says when the handler has applied those (the originator asks
    whether an attempt ever had a channel). The marker never reaches the handler."""
    unblock = Event()
    applied = []

    def slow(event):
        unblock.wait(5)
        applied.append(getattr(event, "uuid", None) or getattr(event, "job_uuid", None))

    events = [plain_event({"Event-Name": "CHANNEL_CREATE", "Unique-ID": f"c{i}"})
              for i in range(3)]
    job = plain_event({"Event-Name": "BACKGROUND_JOB", "Job-UUID": "job-1"}, body=b"-ERR X\n")
    server = servers(scripted(*events, job, reply("+OK"), then_close=False))
    conn = ESLConnection("127.0.0.1", server.port, "ClueCon", on_event=slow)
    conn.connect()
    job_result = conn.jobs.expect("job-1")
    conn.send("event plain CHANNEL_CREATE BACKGROUND_JOB")    # its reply comes after the job
    assert job_result.get(timeout=5).body == "-ERR X\n"    # resolved while c0 is still held
    reached = conn.caught_up()
    assert not reached.wait(0.05) and applied == []
    unblock.set()
    assert reached.wait(5)
    assert applied == ["c0", "c1", "c2", "job-1"]             # all of them, and nothing else
    conn.close()


def test_handler_exception_is_counted_and_loop_continues(servers):
    frames = [plain_event({"Event-Name": "CHANNEL_CREATE", "Unique-ID": f"u{i}"}) for i in range(3)]
    delivered = gevent.queue.Queue()

    def handler(event):
        if event.uuid == "u0":
            raise RuntimeError("boom")
        delivered.put(event.uuid)
    before = ESL_HANDLER_ERRORS.labels("CHANNEL_CREATE")._value.get()
    conn = ESLConnection("127.0.0.1", servers(scripted(*frames, reply("+OK"),
                                                       then_close=False)).port,
                         "ClueCon", on_event=handler)
    conn.connect()
    conn.send("event plain CHANNEL_CREATE")
    assert [delivered.get(timeout=2), delivered.get(timeout=2)] == ["u1", "u2"]
    assert ESL_HANDLER_ERRORS.labels("CHANNEL_CREATE")._value.get() == before + 1
    conn.close()


def test_events_we_do_not_use_are_not_dispatched(servers):
    frames = [plain_event({"Event-Name": "CHANNEL_STATE", "Unique-ID": "u"}),
              plain_event({"Event-Name": "HEARTBEAT", "Event-Date-Timestamp": "7"})]
    rec = Recorder()
    conn = connect(servers(scripted(*frames, reply("+OK"), then_close=False)), rec)
    conn.send("event plain HEARTBEAT")
    assert rec.events.get(timeout=2) == HeartbeatEvent(timestamp_us=7)
    assert rec.events.empty()
    conn.close()


def test_unparseable_event_is_dropped_and_counted_not_fatal(servers):
    # The outer frame is sound, the event inside is not (nested Content-Length "x"):
    # only that event is lost; the connection and the next event carry on.
    bad = b"Event-Name: BACKGROUND_JOB\nJob-UUID: j1\nContent-Length: x\n\n+OK\n"
    bad_frame = b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(bad) + bad
    good = plain_event({"Event-Name": "HEARTBEAT", "Event-Date-Timestamp": "9"})
    before = ESL_EVENTS_DROPPED.labels("unparseable")._value.get()
    rec = Recorder()
    conn = connect(servers(scripted(bad_frame, good, reply("+OK"), then_close=False)), rec)
    conn.send("event plain BACKGROUND_JOB HEARTBEAT")
    assert rec.events.get(timeout=2) == HeartbeatEvent(timestamp_us=9)
    assert ESL_EVENTS_DROPPED.labels("unparseable")._value.get() == before + 1
    assert conn.connected
    conn.close()


def _exposed(name: str, **labels) -> float:
    """A sample as a scrape shows it (the text exposition of switchd's registry)."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from switchd.metrics import REGISTRY
    for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def test_events_received_are_counted_by_name_in_the_scrape(servers):
    """switchd_esl_events_total is counted without a lock on the reader's path and exposed
    as a counter at scrape time: what a scrape shows moves with the events read."""
    frames = [plain_event({"Event-Name": "CHANNEL_CREATE", "Unique-ID": f"c{i}"})
              for i in range(3)]
    frames.append(plain_event({"Event-Name": "CHANNEL_STATE", "Unique-ID": "s"}))
    frames.append(plain_event({"Event-Name": "HEARTBEAT", "Event-Date-Timestamp": "5"}))
    created = _exposed("switchd_esl_events_total", event="CHANNEL_CREATE")
    other = _exposed("switchd_esl_events_total", event="other")
    rec = Recorder()
    conn = connect(servers(scripted(*frames, reply("+OK"), then_close=False)), rec)
    conn.send("event plain CHANNEL_CREATE HEARTBEAT")
    assert [rec.events.get(timeout=2).uuid for _ in range(3)] == ["c0", "c1", "c2"]
    assert rec.events.get(timeout=2) == HeartbeatEvent(timestamp_us=5)
    assert _exposed("switchd_esl_events_total", event="CHANNEL_CREATE") == created + 3
    assert _exposed("switchd_esl_events_total", event="other") == other + 1
    from prometheus_client import generate_latest

    from switchd.metrics import REGISTRY
    assert "# TYPE switchd_esl_events_total counter" in generate_latest(REGISTRY).decode()
    conn.close()


# --- bgapi jobs ------------------------------------------------------------------------------
def test_bgapi_returns_job_uuid_and_tracker_resolves(servers):
    server = servers()
    rec = Recorder()
    conn = connect(server, rec)
    job = conn.bgapi("originate {origination_uuid=abc}sofia/gateway/carrier_a/2001 &park()")
    result = conn.wait_job(job, timeout=2)
    assert result == JobEvent(job_uuid=job, body="+OK done\n") and result.ok
    peer = server.peers.get(timeout=1)
    assert peer.commands[1] == ("bgapi originate {origination_uuid=abc}"
                                f"sofia/gateway/carrier_a/2001 &park()\nJob-UUID: {job}")
    assert len(conn.jobs) == 0
    conn.close()


def test_job_wait_times_out_and_jobs_fail_on_disconnect(servers):
    def script(peer):
        FakeFS.greet_and_auth(server, peer)
        cmd = peer.read_command()
        job = cmd.split("Job-UUID: ")[1]
        peer.send(reply(f"+OK Job-UUID: {job}"))
        cmd = peer.read_command()
        peer.send(reply(f"+OK Job-UUID: {cmd.split('Job-UUID: ')[1]}"))
        peer.read_command()
    server = servers(script)
    conn = connect(server)
    job = conn.bgapi("status")
    with pytest.raises(ESLTimeout, match=job):
        conn.wait_job(job, timeout=0.1)
    second = conn.bgapi("status")
    waiter = gevent.spawn(conn.wait_job, second, 30)
    gevent.sleep(0)
    conn.close()
    with pytest.raises(ESLDisconnected):
        waiter.get(timeout=2)


def test_commands_refuse_newlines_before_anything_is_sent(servers):
    server = servers()
    conn = connect(server)
    with pytest.raises(ValueError):
        conn.api("status\n\napi fsctl shutdown")
    assert conn.api("nothing") == "-ERR no such command\n"
    conn.close()


def test_a_backlog_of_events_lets_a_ready_socket_in_before_it_is_drained(servers):
    """A burst of 300 events with a handler costing 0.3 ms of CPU each: a socket that
    becomes ready while they are handled (a dialplan lookup's connection) is served long
    before the backlog is (turns.py)."""
    events = [plain_event({"Event-Name": "HEARTBEAT", "Event-Date-Timestamp": str(i)})
              for i in range(300)]
    ours, theirs = gevent.socket.socketpair()
    handled, seen, all_in = [0], [], Event()

    def handler(event):
        if handled[0] == 5:
            theirs.send(b"x")
        end = time.perf_counter() + 0.0003
        while time.perf_counter() < end:
            pass
        handled[0] += 1
        if handled[0] == len(events):
            all_in.set()

    def lookup():
        ours.recv(1)
        seen.append(handled[0])

    server = servers(scripted(b"".join(events), reply("+OK"), then_close=False))
    waiting = gevent.spawn(lookup)
    conn = ESLConnection("127.0.0.1", server.port, "ClueCon", on_event=handler,
                         connect_timeout=2, command_timeout=2)
    conn.connect()
    conn.send("event plain HEARTBEAT")
    assert all_in.wait(10), f"{handled[0]} of {len(events)} events handled"
    waiting.join(1)
    assert seen and seen[0] < 60, seen
    conn.close()
    ours.close()
    theirs.close()


def test_backlog_age_is_how_long_the_oldest_queued_channel_event_has_waited(servers):
    """What the daemon refuses new calls on (esl.max_event_lag): measured from when the event
    was read, not from when the dispatcher got to it; 0 once the queue is drained."""
    events = [plain_event({"Event-Name": "CHANNEL_CREATE", "Unique-ID": f"u-{i}",
                           "Event-Date-Timestamp": "1700000000000000"}) for i in range(3)]
    inside, release, all_in = Event(), Event(), Event()
    handled = []

    def handler(event):
        handled.append(event.uuid)
        if len(handled) == 1:
            inside.set()
            release.wait(10)              # the dispatcher is stuck on the first event
        if len(handled) == len(events):
            all_in.set()

    server = servers(scripted(b"".join(events), reply("+OK"), then_close=False))
    conn = ESLConnection("127.0.0.1", server.port, "ClueCon", on_event=handler,
                         connect_timeout=2, command_timeout=2)
    assert conn.backlog_age() == 0.0
    conn.connect()
    conn.send("event plain CHANNEL_CREATE")
    read_by = time.monotonic()            # the burst came before the command's reply
    assert inside.wait(5)
    first_age = conn.backlog_age()
    assert first_age > 0
    # It grows while the events wait: it is their age, not a count.
    waited_from = time.monotonic()
    gevent.sleep(0.05)
    assert conn.backlog_age() >= first_age + (time.monotonic() - waited_from) - 0.001
    assert conn.backlog_age() >= time.monotonic() - read_by
    release.set()
    assert all_in.wait(5)
    assert handled == ["u-0", "u-1", "u-2"]
    assert conn.backlog_age() == 0.0
    conn.close()


class ThreadedSwitch:
    """An ESL server in an OS thread that authenticates, then writes `events` with one
    blocking sendall: however busy the test's hub is, the switch's side keeps the socket
    full until every byte is taken (a greenlet sender waits for the hub to poll, and the
    socket runs dry whenever the hub is late)."""

    def __init__(self, events: bytes):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.events = events
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        sock, _ = self.listener.accept()
        with sock:
            sock.sendall(AUTH_REQUEST)
            buf = b""
            for answer in (reply("+OK accepted"), reply("+OK event listener enabled plain")):
                while b"\n\n" not in buf:
                    buf += sock.recv(65536)
                _, buf = buf.split(b"\n\n", 1)
                sock.sendall(answer)
            sock.sendall(self.events)      # then hangs up: the kernel still delivers it all

    def stop(self) -> None:
        self.listener.close()
        self.thread.join(5)


@pytest.mark.parametrize("receive_buffer", [None, 64 * 1024])
def test_backlog_age_counts_a_reader_that_cannot_drain_the_socket(receive_buffer):
    """Bytes left in the socket are events not even queued yet: while every read leaves
    some behind (the loop gives the reader a turn only every 5 ms here), backlog_age
    counts from the first such read, though the queue itself is short; once a read drains
    the socket, nothing waits. With a receive buffer smaller than a read, no read is ever
    full: the backlog waits in the switch's send buffer, and what says so is the bytes
    that flow in again right after each read."""
    count = 2000
    filler = "x" * 8000
    events = b"".join(plain_event({"Event-Name": "CHANNEL_CREATE", "Unique-ID": f"u-{i}",
                                   "X-Filler": filler}) for i in range(count))
    handled, all_in = [0], Event()

    def handler(event):
        handled[0] += 1
        if handled[0] == count:
            all_in.set()

    seen = []                             # (backlog_age, the queue's own age) each turn
    busy = [True]

    def other_work():                     # the rest of the daemon: 5 ms of CPU a turn
        while busy[0]:
            end = time.perf_counter() + 0.005
            while time.perf_counter() < end:
                pass
            seen.append((conn.backlog_age(), conn._queued_age()))
            gevent.sleep(0)

    switch = ThreadedSwitch(events)
    conn = ESLConnection("127.0.0.1", switch.port, "ClueCon", on_event=handler,
                         connect_timeout=2, command_timeout=2)
    conn.connect()
    if receive_buffer:
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    worker = gevent.spawn(other_work)
    conn.send("event plain CHANNEL_CREATE")
    assert all_in.wait(60), f"{handled[0]} of {count} events handled"
    busy[0] = False
    worker.join(5)
    behind = max(seen)
    # 16 MB in reads of at most 256 KB, each after a turn of >= 5 ms: the reader was behind
    # for >= 0.3 s (0.2 leaves room for the first and last reads), the queue never.
    assert behind[0] > 0.2, behind
    assert max(queued for _, queued in seen) < behind[0] / 2, behind
    assert conn.backlog_age() == 0.0
    conn.close()
    switch.stop()
