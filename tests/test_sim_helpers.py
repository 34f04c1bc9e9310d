"""Test helpers for the simulator tests: a raw ESL client, a capture reader and a tiny
dialplan HTTP server (gevent.pywsgi). Deliberately independent of switchd.adapters.esl.*, so the
simulator is checked against the captures, not against our own parser."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

import gevent
import gevent.event
import gevent.queue
from gevent import socket
from gevent.pywsgi import WSGIServer

from switchd.sim.make_templates import read_transcript

FIXTURES = Path(__file__).parent / "fixtures" / "freeswitch-1.10"


def transcript(name: str) -> list[tuple[str, str, bytes]]:
    return read_transcript(FIXTURES / name)


def split_frames(data: bytes) -> tuple[list[tuple[dict, bytes]], bytes]:
    """Complete frames (headers, body) by Content-Length in bytes, and the remainder."""
    frames, pos = [], 0
    while True:
        end = data.find(b"\n\n", pos)
        if end < 0:
            return frames, data[pos:]
        head = dict(line.split(": ", 1) for line in data[pos:end].decode().split("\n") if line)
        n = int(head.get("Content-Length", 0))
        if len(data) < end + 2 + n:
            return frames, data[pos:]
        frames.append((head, data[end + 2:end + 2 + n]))
        pos = end + 2 + n


def event_headers(body: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in body.split(b"\n\n")[0].decode().split("\n"):
        k, v = line.split(": ", 1)
        out.setdefault(k, unquote(v))
    return out


def event_pairs(body: bytes) -> list[tuple[str, str]]:
    return [tuple(line.split(": ", 1)) for line in body.split(b"\n\n")[0].decode().split("\n")]


def capture_events(letter: str) -> list[dict[str, str]]:
    frames, _ = split_frames((FIXTURES / f"events-plain-{letter}.txt").read_bytes())
    return [event_headers(b) for h, b in frames if h.get("Content-Type") == "text/event-plain"]


class RawClient:
    """An ESL client on a bare socket that records every byte and frame it receives."""

    def __init__(self, address) -> None:
        self.sock = socket.create_connection(address, timeout=5)
        # Reads wait as long as it takes: every wait on the client has its own deadline
        # (wait_for, command), and a read timeout would take a busy stretch of the
        # simulator on a loaded machine for a closed connection.
        self.sock.settimeout(None)
        self.raw = b""
        self.frames: gevent.queue.Queue = gevent.queue.Queue()
        self.events: list[dict[str, str]] = []
        self.event_bodies: list[bytes] = []
        self.changed = gevent.event.Event()
        self.closed = gevent.event.Event()
        self._buf = b""
        self._reader = gevent.spawn(self._read)

    def _read(self) -> None:
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self.raw += chunk
                self.changed.set()
                self._buf += chunk
                frames, self._buf = split_frames(self._buf)
                for head, body in frames:
                    if head.get("Content-Type") == "text/event-plain":
                        self.events.append(event_headers(body))
                        self.event_bodies.append(body)
                        self.changed.set()
                    else:
                        self.frames.put((head, body))
        except OSError:
            pass
        finally:
            self.closed.set()
            self.changed.set()

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode())

    def command(self, text: str, timeout: float = 5) -> tuple[dict, bytes]:
        self.send(text + "\n\n")
        return self.frames.get(timeout=timeout)

    def login(self, password: str = "ClueCon", events: str | None = None) -> None:
        self.frames.get(timeout=5)                        # auth/request
        assert self.command(f"auth {password}")[0]["Reply-Text"] == "+OK accepted"
        if events:
            self.command(f"event plain {events}")

    def wait_for(self, predicate, timeout: float = 5) -> bool:
        with gevent.Timeout(timeout, False):
            while not predicate(self.events):
                self.changed.clear()
                if predicate(self.events) or self.closed.is_set():
                    break
                self.changed.wait()
            return predicate(self.events)
        return False

    def bgapi(self, line: str, timeout: float = 5) -> bytes:
        """`bgapi <line>`, then the whole BACKGROUND_JOB event that answers it."""
        job = self.command(f"bgapi {line}")[0]["Job-UUID"]
        assert self.wait_for(lambda evs: any(e.get("Job-UUID") == job for e in evs), timeout)
        return next(b for b, e in zip(self.event_bodies, self.events) if e.get("Job-UUID") == job)

    def close(self) -> None:
        self.sock.close()
        self._reader.kill()


class DialplanServer:
    """gevent.pywsgi app answering every POST with `xml` (or `status`), recording bodies."""

    def __init__(self, xml: str | None = None, status: str = "200 OK") -> None:
        self.xml, self.status = xml, status
        self.requests: list[tuple[dict, bytes]] = []
        self.server = WSGIServer(("127.0.0.1", 0), self.app, log=None, error_log=None)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/fs/dialplan"

    def app(self, environ, start_response):
        body = environ["wsgi.input"].read()
        self.requests.append(({k: v for k, v in environ.items() if k.startswith(("HTTP_", "CONTENT_", "REQUEST_", "PATH"))}, body))
        xml = self.xml(body) if callable(self.xml) else self.xml
        payload = (xml or "").encode()
        start_response(self.status, [("Content-Type", "text/xml"), ("Content-Length", str(len(payload)))])
        return [payload]

    def stop(self) -> None:
        self.server.stop()


def captured_dialplan_xml(n: int = 1) -> str:
    """The XML body of capture http<n>'s response."""
    resp = [b for c, d, b in transcript("xml-curl-dialplan-request.txt") if c == f"http{n}" and d == "S>C"][0]
    return resp.split(b"\r\n\r\n", 1)[1].decode()


def captured_dialplan_fields() -> list[str]:
    req = [b for c, d, b in transcript("xml-curl-dialplan-request.txt") if c == "http1" and d == "C>S"][0]
    return [p.split(b"=", 1)[0].decode() for p in req.split(b"\r\n\r\n", 1)[1].split(b"&")]


def bridge_xml(dial: str, sched: int | None = 5, extra: str = "") -> str:
    sched_line = (f'<action application="set" data="execute_on_answer=sched_hangup +{sched} '
                  f'ALLOTTED_TIMEOUT"/>') if sched else ""
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<document type="freeswitch/xml"><section name="dialplan"><context name="public">
<extension name="r"><condition field="destination_number" expression="^.*$">
<action application="set" data="route_source=xml_curl"/>
<action application="set" data="continue_on_fail=true"/>
<action application="set" data="hangup_after_bridge=true"/>
<action application="set" data="switchd_tenant=acme"/>
{sched_line}{extra}
<action application="bridge" data="{dial}"/>
</condition></extension></context></section></document>"""
