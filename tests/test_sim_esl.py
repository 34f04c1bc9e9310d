"""The simulator's mod_event_socket against the captured bytes of FreeSWITCH 1.10.12."""
from __future__ import annotations

import gevent
import pytest

from test_sim_helpers import RawClient, transcript
from switchd.sim import Simulator


@pytest.fixture
def sim():
    s = Simulator(seed=7, time_scale=1000, heartbeat_interval=None)
    s.start()
    yield s
    s.stop()


def _server_blocks(name: str, conn: str) -> list[bytes]:
    return [b for c, d, b in transcript(name) if c == conn and d == "S>C"]


def _replay(sim, name: str, conn: str) -> tuple[bytes, RawClient]:
    """Send the client's captured bytes one block at a time; return all bytes received."""
    client = RawClient(sim.address)
    expected = b""
    for c, d, data in transcript(name):
        if c != conn:
            continue
        if d == "C>S":
            client.send(data.decode())
        else:
            expected += data
            with gevent.Timeout(5):
                while len(client.raw) < len(expected) and not client.closed.is_set():
                    client.changed.clear()
                    client.changed.wait()
    return expected, client


def test_auth_events_noevents_exit_bytes_equal_capture(sim):
    expected, client = _replay(sim, "esl-auth.txt", "ok")
    assert client.closed.wait(5)               # exit closes the connection
    assert client.raw == expected


def test_wrong_password_transcript_and_close(sim):
    expected, client = _replay(sim, "esl-auth.txt", "badpw")
    assert client.closed.wait(5)
    assert client.raw == expected


def test_command_before_auth_is_refused_and_connection_stays(sim):
    expected, client = _replay(sim, "esl-auth.txt", "noauth")
    assert client.raw == expected
    assert not client.closed.is_set()
    client.close()


@pytest.mark.parametrize("command", ["api version", "api show channels as json",
                                     "api show calls as json", "api show channels",
                                     "api foobarbaz",
                                     "api uuid_kill 00000000-0000-0000-0000-000000000000"])
def test_idle_api_replies_equal_capture(sim, command):
    blocks = transcript("esl-api.txt")
    idx = next(i for i, (c, d, b) in enumerate(blocks) if d == "C>S" and b == (command + "\n\n").encode())
    client = RawClient(sim.address)
    client.login()
    head, body = client.command(command)
    reply = b"".join(f"{k}: {v}\n".encode() for k, v in head.items()) + b"\n" + body
    assert reply == blocks[idx + 1][2]
    client.close()


def test_bgapi_client_job_uuid_and_only_subscribers_get_the_job(sim):
    bg = RawClient(sim.address)
    bg.login(events="BACKGROUND_JOB")
    bg2 = RawClient(sim.address)
    bg2.login()
    job = "19d25de9-5f2b-4e98-ac96-6d6e792e957c"
    head, _ = bg.command(f"bgapi status\nJob-UUID: {job}")
    captured = [b for c, d, b in transcript("esl-bgapi.txt")
                if c == "bg" and d == "S>C" and job.encode() in b][0]
    assert captured.startswith(b"Content-Type: command/reply\nReply-Text: +OK Job-UUID: " + job.encode()
                               + b"\nJob-UUID: " + job.encode() + b"\n\n")
    assert head == {"Content-Type": "command/reply", "Reply-Text": f"+OK Job-UUID: {job}", "Job-UUID": job}
    head2, _ = bg2.command("bgapi version")
    own = head2["Job-UUID"]
    assert bg.wait_for(lambda evs: any(e.get("Job-UUID") == own for e in evs))
    assert bg.wait_for(lambda evs: any(e.get("Job-UUID") == job for e in evs))
    assert bg2.events == []                   # not subscribed: never sees its own job
    version_job = next(b for b, e in zip(bg.event_bodies, bg.events) if e["Job-UUID"] == own)
    assert version_job.endswith(b"Content-Length: 114\n\nFreeSWITCH Version 1.10.12-release+git~"
                                b"20240802T210227Z~a88d069d6f~64bit (git a88d069 2024-08-02 21:02:27Z 64bit)\n")
    bg.close()
    bg2.close()


def test_bgapi_unknown_command_job_body(sim):
    client = RawClient(sim.address)
    client.login(events="BACKGROUND_JOB")
    head, _ = client.command("bgapi foobarbaz")
    assert head["Reply-Text"].startswith("+OK Job-UUID: ")
    assert client.wait_for(lambda evs: len(evs) == 1)
    assert client.event_bodies[0].endswith(b"Content-Length: 34\n\n-ERR foobarbaz Command not found!\n")
    client.close()


def test_drop_connections_and_garbage(sim):
    client = RawClient(sim.address)
    client.login(events="ALL")
    assert sim.wait_for_listeners(1)
    sim.send_garbage()
    with gevent.Timeout(5):
        while b"garbage" not in client.raw:
            client.changed.clear()
            client.changed.wait()
    sim.drop_connections()
    assert client.closed.wait(5)
    assert sim.server.wait_for(lambda conns: not conns, 5)
