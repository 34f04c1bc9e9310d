"""ESLSupervisor: reconnect forever, backoff, heartbeat watchdog, resync hook."""
from __future__ import annotations

import logging
import time

import gevent
import gevent.queue
import pytest
from gevent.event import Event

from switchd.adapters.esl.connection import ESLNotConnected, ESLTimeout
from switchd.adapters.esl.events import SUBSCRIBED_EVENTS, ChannelEvent, JobEvent
from switchd.adapters.esl.supervisor import ESLSupervisor, backoff_delay
from switchd.metrics import ESL_CONNECTED, ESL_RECONNECTS
from test_esl_connection import FakeFS, plain_event, servers  # noqa: F401  (fixture)

EXPECTED_SUBSCRIPTION = (
    "event plain CHANNEL_CREATE CHANNEL_PROGRESS CHANNEL_PROGRESS_MEDIA CHANNEL_ANSWER "
    "CHANNEL_BRIDGE CHANNEL_HANGUP "
    "CHANNEL_HANGUP_COMPLETE CHANNEL_UUID BACKGROUND_JOB HEARTBEAT "
    "CUSTOM sofia::gateway_state sofia::gateway_add sofia::gateway_delete")


@pytest.fixture
def supervisors():
    started: list[ESLSupervisor] = []

    def make(port, **kwargs) -> ESLSupervisor:
        kwargs.setdefault("backoff_initial", 0.01)
        kwargs.setdefault("backoff_max", 0.05)
        kwargs.setdefault("command_timeout", 1)
        sup = ESLSupervisor("127.0.0.1", port, kwargs.pop("password", "ClueCon"), **kwargs)
        started.append(sup)
        return sup.start()
    yield make
    for sup in started:
        sup.stop()


def test_backoff_grows_jittered_and_capped():
    assert [backoff_delay(n, 0.5, 30, 1.0) for n in range(8)] == [
        0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff_delay(3, 0.5, 30, 0.0) == 2.0          # jitter never below half
    assert backoff_delay(10_000, 0.5, 30, 0.5) == 22.5    # no overflow on long outages


def test_connects_subscribes_resyncs_and_delivers_events(servers, supervisors):
    def script(peer):
        if not server.greet_and_auth(peer):
            return
        cmd = peer.read_command()
        server.answer(peer, cmd)
        peer.send(plain_event({"Event-Name": "CHANNEL_CREATE", "Unique-ID": "u1"}))
        while (cmd := peer.read_command()) is not None:
            server.answer(peer, cmd)
    server = servers(script, api={"show channels as json": b'{"row_count": 0}\n'})
    events = gevent.queue.Queue()
    resyncs = gevent.queue.Queue()
    sup = supervisors(server.port, on_event=events.put,
                      on_connected=lambda conn: resyncs.put(conn.api("show channels as json")))
    assert resyncs.get(timeout=2) == '{"row_count": 0}\n'
    assert sup.wait_connected(2) and sup.connected
    assert ESL_CONNECTED._value.get() == 1
    assert events.get(timeout=2) == ChannelEvent(name="CHANNEL_CREATE", uuid="u1", call_uuid="u1")
    peer = server.peers.get(timeout=1)
    assert peer.commands[:2] == ["auth ClueCon", EXPECTED_SUBSCRIPTION]
    assert sup.api("show channels as json") == '{"row_count": 0}\n'


def test_reconnects_after_drop_and_resyncs_again(servers, supervisors):
    server = servers()
    connected = gevent.queue.Queue()
    dropped = gevent.queue.Queue()
    before = ESL_RECONNECTS.labels("ok")._value.get()
    sup = supervisors(server.port, on_connected=connected.put, on_disconnected=dropped.put)
    first = connected.get(timeout=2)
    server.peers.get(timeout=1).close()                 # FreeSWITCH restarts
    assert "EOF" in dropped.get(timeout=2)
    second = connected.get(timeout=2)
    assert second is not first and sup.connected
    assert ESL_RECONNECTS.labels("ok")._value.get() == before + 2


def test_commands_fail_fast_while_down_and_it_never_gives_up(servers, supervisors):
    server = servers()
    port = server.port
    server.stop()                                       # nothing listens yet
    sup = supervisors(port)
    with pytest.raises(ESLNotConnected):
        sup.api("status", timeout=30)
    with pytest.raises(ESLNotConnected):
        sup.bgapi("status", timeout=30)
    assert not sup.wait_connected(0.3)
    assert sup.attempts >= 2 and "cannot connect" in sup.last_error
    revived = FakeFS(port=port)                         # FreeSWITCH comes back on that port
    try:
        assert sup.wait_connected(3)
    finally:
        sup.stop()
        revived.stop()


def test_wrong_password_is_logged_and_retried_at_capped_backoff(servers, supervisors, caplog):
    server = servers(password="RightOne")
    caplog.set_level(logging.ERROR, logger="switchd.adapters.esl.supervisor")
    before = ESL_RECONNECTS.labels("auth_failed")._value.get()
    sup = supervisors(server.port, password="Wrong", backoff_initial=0.001, backoff_max=0.3)
    arrivals = []
    for _ in range(3):
        server.peers.get(timeout=3)
        arrivals.append(time.monotonic())
    # A wrong password waits the longest delay (0.3 s, jittered into 0.15–0.3 s), not the
    # initial 1 ms: a tight loop would flood FreeSWITCH's log.
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:])]
    assert all(gap >= 0.14 for gap in gaps), gaps
    assert ESL_RECONNECTS.labels("auth_failed")._value.get() - before >= 2
    assert not sup.connected
    assert any("authentication" in r.message and "password" in r.message for r in caplog.records)
    assert "Wrong" not in caplog.text


def test_silent_connection_is_recycled_by_heartbeat_watchdog(servers, supervisors):
    hold = Event()

    def script(peer):
        if server.greet_and_auth(peer):
            server.answer(peer, peer.read_command())    # subscription, then silence
            hold.wait(10)
    server = servers(script)
    dropped = gevent.queue.Queue()
    supervisors(server.port, heartbeat_timeout=0.3, on_disconnected=dropped.put)
    server.peers.get(timeout=2)
    assert "heartbeat timeout" in dropped.get(timeout=3)
    server.peers.get(timeout=2)                          # and it connected again
    hold.set()


def test_heartbeats_keep_the_connection(servers, supervisors):
    stop = Event()

    def script(peer):
        if server.greet_and_auth(peer):
            server.answer(peer, peer.read_command())
            while not stop.wait(0.05):
                peer.send(plain_event({"Event-Name": "HEARTBEAT"}))
    server = servers(script)
    dropped = gevent.queue.Queue()
    sup = supervisors(server.port, heartbeat_timeout=0.3, on_disconnected=dropped.put)
    assert sup.wait_connected(2)
    with pytest.raises(gevent.queue.Empty):
        dropped.get(timeout=0.8)
    stop.set()


def test_silent_but_answering_switch_is_probed_not_dropped(servers, supervisors):
    # No HEARTBEAT at all (e.g. event-heartbeat-interval off), but commands are answered:
    # the probe's reply counts as life, so the connection is kept.
    server = servers(api={"status": b"UP 0 years, 0 days\n"})
    dropped = gevent.queue.Queue()
    sup = supervisors(server.port, heartbeat_timeout=0.4, on_disconnected=dropped.put)
    assert sup.wait_connected(2)
    with pytest.raises(gevent.queue.Empty):
        dropped.get(timeout=1.0)
    peer = server.peers.get(timeout=1)
    assert peer.commands.count("api status") >= 2
    assert server.accepted == 1


def test_stalled_switch_is_detected_by_probe_before_heartbeat_timeout(servers, supervisors):
    hold = Event()

    def script(peer):
        if server.greet_and_auth(peer):
            server.answer(peer, peer.read_command())
            hold.wait(10)                                # reads nothing, answers nothing
    server = servers(script)
    dropped = gevent.queue.Queue()
    started = time.monotonic()
    supervisors(server.port, heartbeat_timeout=30, probe_after=0.2, command_timeout=0.2,
                on_disconnected=dropped.put)
    reason = dropped.get(timeout=3)
    assert "liveness probe" in reason and time.monotonic() - started < 2
    hold.set()


def test_late_reply_recycles_and_later_commands_fail_fast(servers, supervisors):
    hold = Event()
    sessions = []

    def script(peer):
        sessions.append(peer)
        if not server.greet_and_auth(peer):
            return
        server.answer(peer, peer.read_command())
        if len(sessions) == 1:
            hold.wait(10)                                # the first session wedges
        else:
            while (cmd := peer.read_command()) is not None:
                server.answer(peer, cmd)
    server = servers(script, api={"status": b"UP\n"})
    dropped = gevent.queue.Queue()
    sup = supervisors(server.port, heartbeat_timeout=30, backoff_initial=0.3,
                      backoff_max=0.3, on_disconnected=dropped.put)
    assert sup.wait_connected(2)
    waiting = gevent.spawn(sup.api, "status", 5)         # queued behind the late one
    gevent.sleep(0)
    with pytest.raises(ESLTimeout):
        sup.api("uuid_kill x", timeout=0.2)
    assert "late" in dropped.get(timeout=1)
    with pytest.raises(ESLNotConnected):                  # the other waiter is freed at once
        waiting.get(timeout=0.5)
    began = time.monotonic()
    with pytest.raises(ESLNotConnected):                  # and new commands fail fast
        sup.api("uuid_kill x", timeout=30)
    assert time.monotonic() - began < 0.1
    assert sup.wait_connected(3)                          # then it is back
    assert sup.api("status") == "UP\n"
    hold.set()


def test_failed_resync_recycles_the_connection_and_retries(servers, supervisors):
    server = servers()
    calls = []

    def on_connected(conn):
        calls.append(conn)
        if len(calls) == 1:
            raise ESLTimeout("no reply to 'api' within 5s")
    dropped = gevent.queue.Queue()
    sup = supervisors(server.port, on_connected=on_connected, on_disconnected=dropped.put)
    assert "on_connected failed" in dropped.get(timeout=2)
    assert sup.wait_connected(2) and len(calls) == 2 and calls[0].closed.is_set()


def test_stop_while_the_greeting_never_comes_returns_at_once(servers, supervisors):
    hold = Event()
    server = servers(lambda peer: hold.wait(10))          # accepts, never says auth/request
    sup = supervisors(server.port, command_timeout=30)
    server.peers.get(timeout=2)
    began = time.monotonic()
    sup.stop()
    assert time.monotonic() - began < 0.5 and not sup.connected
    hold.set()


def test_bgapi_waits_for_the_job_result(servers, supervisors):
    sup = supervisors(servers().port)
    assert sup.wait_connected(2)
    result = sup.bgapi("originate sofia/gateway/carrier_a/2001 &park()", timeout=2)
    assert isinstance(result, JobEvent) and result.ok and result.body == "+OK done\n"


def test_bgapi_times_out_without_result(servers, supervisors):
    def script(peer):
        if server.greet_and_auth(peer):
            while (cmd := peer.read_command()) is not None:
                if cmd.startswith("bgapi"):
                    job = cmd.split("Job-UUID: ")[1]
                    peer.send(f"Content-Type: command/reply\nReply-Text: +OK Job-UUID: {job}"
                              f"\nJob-UUID: {job}\n\n".encode())
                else:
                    server.answer(peer, cmd)
    server = servers(script)
    sup = supervisors(server.port)
    assert sup.wait_connected(2)
    with pytest.raises(ESLTimeout):
        sup.bgapi("status", timeout=0.1)
    assert len(sup.jobs) == 0


def test_stop_ends_everything(servers, supervisors):
    server = servers()
    sup = supervisors(server.port)
    assert sup.wait_connected(2)
    sup.stop()
    assert not sup.connected
    assert ESL_CONNECTED._value.get() == 0
    with pytest.raises(ESLNotConnected):
        sup.api("status")
    assert server.peers.get(timeout=1).commands[-1] == "exit"


def test_subscribed_events_are_exactly_what_the_daemon_uses():
    assert set(SUBSCRIBED_EVENTS) == set(EXPECTED_SUBSCRIPTION.split()[2:])
