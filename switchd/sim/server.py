"""mod_event_socket (inbound mode) as the simulator serves it, byte for byte as captured.

One reader and one writer greenlet per connection: the reader parses commands and answers
them, the writer drains a bounded queue. Like FreeSWITCH, events for a listener that does
not read are queued, then dropped, and after MAX_MISSED drops the listener is closed.
"""
from __future__ import annotations

import logging
import time

import gevent
import gevent.event
import gevent.queue
from gevent.server import StreamServer

from switchd.sim import wire

log = logging.getLogger(__name__)

MAX_MISSED = 500            # mod_event_socket.c: listeners that lose this many are dropped
MAX_COMMAND_BYTES = 1 << 20


class EslConnection:
    def __init__(self, server: "EslServer", sock, addr, queue_size: int) -> None:
        self.server, self.sock, self.addr = server, sock, addr
        self.authed = False
        self.events: set[str] = set()          # Event-Names, 'ALL', or CUSTOM subclasses
        self.queue: gevent.queue.Queue = gevent.queue.Queue(maxsize=queue_size)
        self.missed = 0
        self.closed = gevent.event.Event()
        self.writer = gevent.spawn(self._write_loop)

    # -- output -----------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Replies are never dropped (FreeSWITCH writes them inline)."""
        if not self.closed.is_set():
            self.queue.put(data)

    def offer_event(self, name: str, subclass: str | None, frame: bytes) -> None:
        if not self.authed or self.closed.is_set():
            return
        if not ("ALL" in self.events or name in self.events
                or (subclass is not None and subclass in self.events)):
            return
        try:
            self.queue.put_nowait(frame)
        except gevent.queue.Full:
            self.missed += 1
            if self.missed >= MAX_MISSED:
                log.warning("sim: listener %s lost %d events, closing", self.addr, self.missed)
                self.abort()

    def _write_loop(self) -> None:
        try:
            while True:
                data = self.queue.get()
                if data is None:
                    break
                self.server.running.wait()          # stall(): stop writing
                self.sock.sendall(data)
        except OSError:
            pass
        finally:
            self.abort()

    def close_after(self, data: bytes) -> None:
        """Send `data`, then close (exit, wrong password, shutdown)."""
        self.send(data)
        self.queue.put(None)

    def abort(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        try:
            self.sock.close()
        except OSError:
            pass
        self.server.forget(self)

    # -- input ------------------------------------------------------------------------
    def serve(self) -> None:
        self.send(wire.AUTH_REQUEST)
        buf = b""
        try:
            while not self.closed.is_set():
                chunk = self.sock.recv(65536)
                self.server.running.wait()          # stall(): stop reading
                if not chunk:
                    break
                buf += chunk
                while b"\n\n" in buf:
                    raw, buf = buf.split(b"\n\n", 1)
                    self.handle(raw.decode("utf-8", "replace").lstrip("\n"))
                if len(buf) > MAX_COMMAND_BYTES:
                    break
        except OSError:
            pass
        finally:
            if not self.closed.is_set():
                self.queue.put(None)               # flush what is queued, then close
                self.writer.join(timeout=1)
                self.abort()

    def handle(self, raw: str) -> None:
        lines = raw.replace("\r", "").split("\n")
        cmd = lines[0].strip()
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        word, _, rest = cmd.partition(" ")
        if not self.authed:
            if word == "auth":
                if rest == self.server.password:
                    self.authed = True
                    self.send(wire.command_reply("+OK accepted"))
                    self.server._signal()
                else:
                    self.close_after(wire.command_reply("-ERR invalid") + wire.disconnect_notice())
            else:
                self.send(wire.command_reply("-ERR command not found"))
            return
        if word == "event":
            fmt, _, names = rest.partition(" ")
            if fmt != "plain":
                self.send(wire.command_reply("-ERR invalid format (simulator speaks plain)"))
                return
            self.events.update(names.split())
            self.send(wire.command_reply("+OK event listener enabled plain"))
            self.server._signal()
        elif word == "noevents":
            self.events.clear()
            self.send(wire.command_reply("+OK no longer listening for events"))
        elif word == "exit":
            self.close_after(wire.command_reply("+OK bye") + wire.disconnect_notice())
        elif word == "api":
            self.send(wire.api_response(self.server.sim.api(rest)))
        elif word == "bgapi":
            job = headers.get("Job-UUID") or self.server.sim.new_job_uuid()
            self.send(wire.command_reply(f"+OK Job-UUID: {job}", f"Job-UUID: {job}\n"))
            self.server.sim.bgapi(rest, job)
        else:
            self.send(wire.command_reply("-ERR command not found"))


class EslServer:
    def __init__(self, sim, password: str, host: str = "127.0.0.1", port: int = 0,
                 queue_size: int = 100_000) -> None:
        self.sim, self.password, self.queue_size = sim, password, queue_size
        self.host, self.port = host, port
        self.connections: set[EslConnection] = set()
        self.running = gevent.event.Event()
        self.running.set()
        self._waiters: list[gevent.event.Event] = []   # woken when a connection comes or goes
        self._server: StreamServer | None = None

    def start(self) -> tuple[str, int]:
        self._server = StreamServer((self.host, self.port), self._handle)
        self._server.init_socket()
        self._server.start()
        self.port = self._server.server_port      # keep the port across restarts
        return self.host, self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def _handle(self, sock, addr) -> None:
        conn = EslConnection(self, sock, addr, self.queue_size)
        self.connections.add(conn)
        self._signal()
        conn.serve()

    def forget(self, conn: EslConnection) -> None:
        self.connections.discard(conn)
        self._signal()

    def _signal(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.set()

    def wait_for(self, predicate, timeout: float) -> bool:
        """Block until predicate(self.connections) holds (checked on every change)."""
        deadline = time.monotonic() + timeout
        while not predicate(self.connections):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            waiter = gevent.event.Event()
            self._waiters.append(waiter)
            waiter.wait(left)
        return True

    def broadcast_event(self, name: str, subclass: str | None, frame: bytes) -> None:
        for conn in list(self.connections):
            conn.offer_event(name, subclass, frame)

    def drop_all(self, notice: bytes | None = None) -> None:
        for conn in list(self.connections):
            if notice is None:
                conn.abort()
            else:
                conn.close_after(wire.disconnect_notice(notice))
