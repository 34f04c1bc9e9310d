"""Keeps one ESL connection alive forever (DESIGN §5, §11; STYLE.md §9).

connect → authenticate → subscribe → ``on_connected(conn)`` (the daemon resyncs from
``show channels as json`` there) → watch. The watch ends when the connection drops, when no
frame at all arrived for ``heartbeat_timeout`` (FreeSWITCH sends HEARTBEAT every 20 s, so
silence means a dead peer or a wedged path), when a command's reply is late (ESL answers in
order, so a late reply holds up every later one: the switch or the path is wedged), or on
:meth:`stop`. Silence for ``probe_after`` (half the heartbeat timeout) sends a cheap
``api status``: a reply proves the peer alive, none within ``command_timeout`` ends the
connection early. Then it backs off with jitter and starts again; it never gives up.
"""
from __future__ import annotations

import logging
import random
import time
from typing import Callable, Iterable

import gevent
from gevent.event import Event

from switchd.adapters.esl.connection import (
    ESLAuthError, ESLConnection, ESLError, ESLNotConnected, ESLTimeout, JobResult, JobTracker,
)
from switchd.adapters.esl.events import SUBSCRIBED_EVENTS, TypedEvent
from switchd.adapters.esl import commands
from switchd.metrics import ESL_CONNECTED, ESL_RECONNECTS

log = logging.getLogger(__name__)


def backoff_delay(attempt: int, initial: float, maximum: float, rand: float) -> float:
    """Exponential delay capped at ``maximum``, jittered into [50 %, 100 %] of it.

    The floor of 50 % keeps a fleet of daemons from reconnecting in lockstep without
    ever collapsing to a zero delay (a tight loop against a dead switch).
    """
    base = min(maximum, initial * (2 ** min(attempt, 32)))
    return base * (0.5 + 0.5 * rand)


class ESLSupervisor:
    def __init__(self, host: str, port: int, password: str,
                 on_event: Callable[[TypedEvent], None] | None = None,
                 on_connected: Callable[[ESLConnection], None] | None = None,
                 on_disconnected: Callable[[str], None] | None = None,
                 subscribed_events: Iterable[str] = SUBSCRIBED_EVENTS,
                 backoff_initial: float = 0.5, backoff_max: float = 30.0,
                 heartbeat_timeout: float = 60.0, command_timeout: float = 5.0,
                 *, connect_timeout: float | None = None,
                 probe_after: float | None = None,
                 rand: Callable[[], float] = random.random,
                 event_queue_size: int = 10_000) -> None:
        self.host, self.port, self._password = host, port, password
        self.on_event = on_event
        self.on_connected = on_connected
        self.on_disconnected = on_disconnected
        self.subscribed_events = tuple(subscribed_events)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.heartbeat_timeout = heartbeat_timeout
        self.command_timeout = command_timeout
        self.connect_timeout = command_timeout if connect_timeout is None else connect_timeout
        # Half the heartbeat timeout: at the defaults (60 s) a HEARTBEAT is 10 s overdue, so
        # a live switch is never probed while it keeps its 20 s rhythm.
        self.probe_after = heartbeat_timeout / 2 if probe_after is None else probe_after
        self._random = rand
        self._event_queue_size = event_queue_size
        self.jobs = JobTracker()        # outlives connections: results may arrive after a reconnect
        self._conn: ESLConnection | None = None
        self._attempt: ESLConnection | None = None      # connecting, not yet handed out
        self._up = Event()
        self._stopping = Event()
        self._greenlet: gevent.Greenlet | None = None
        self.attempts = 0               # consecutive failed attempts (drives the backoff)
        self.last_error: str | None = None

    # --- public ---------------------------------------------------------------------------
    def start(self) -> "ESLSupervisor":
        if self._greenlet is None or self._greenlet.dead:
            self._stopping.clear()
            self._greenlet = gevent.spawn(self._run)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        attempt = self._attempt
        if attempt is not None:
            attempt.close("stopped by switchd")      # e.g. waiting for a stalled greeting
        conn = self._conn
        if conn is not None:
            conn.stop()
        if self._greenlet is not None:
            self._greenlet.join(timeout)
            if not self._greenlet.dead:
                self._greenlet.kill(block=False)
        self._set_down()

    @property
    def connected(self) -> bool:
        conn = self._conn
        return conn is not None and conn.connected

    @property
    def connection(self) -> ESLConnection | None:
        return self._conn if self.connected else None

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self._up.wait(timeout) and self.connected

    def api(self, cmd: str, timeout: float | None = None) -> str:
        conn = self._require()
        try:
            return conn.api(cmd, self.command_timeout if timeout is None else timeout)
        except ESLTimeout as exc:
            self._recycle(conn, exc)
            raise

    def bgapi(self, cmd: str, timeout: float) -> JobResult:
        """Run ``cmd`` as a background job and wait up to ``timeout`` s for its result.

        Returns the job result whatever it says (``-ERR USER_BUSY`` is an answer, not an
        error); raises ESLNotConnected / ESLTimeout / ESLCommandError otherwise.
        """
        job_uuid = self.bgapi_nowait(cmd)
        return self.jobs.wait(job_uuid, timeout)

    def events_applied(self, timeout: float) -> bool:
        """Wait until the event handler has applied every event received so far; False
        when there is no connection, it closes first, or `timeout` passes."""
        conn = self.connection
        return conn is not None and conn.caught_up().wait(timeout)

    def bgapi_nowait(self, cmd: str) -> str:
        """Start a background job; return its Job-UUID (wait with ``jobs.wait``)."""
        conn = self._require()
        try:
            return conn.bgapi(cmd, self.command_timeout)
        except ESLTimeout as exc:
            self._recycle(conn, exc)
            raise

    def _recycle(self, conn: ESLConnection, exc: ESLError) -> None:
        """A reply is late: every later reply queues behind it, so the connection is of no
        use any more. Closing it fails the other waiters at once; the watch reconnects."""
        if conn.connected:
            log.error("ESL to %s:%s: %s; recycling the connection", self.host, self.port, exc)
            conn.close(f"command reply late: {exc}")

    # --- loop -----------------------------------------------------------------------------
    def _require(self) -> ESLConnection:
        conn = self._conn
        if conn is None or not conn.connected:
            raise ESLNotConnected(f"ESL to {self.host}:{self.port} is down"
                                  + (f" ({self.last_error})" if self.last_error else ""))
        return conn

    def _run(self) -> None:
        while not self._stopping.is_set():
            delay = self._session()
            if self._stopping.wait(delay):
                break

    def _session(self) -> float:
        """One connection's life; returns how long to wait before the next attempt."""
        conn = ESLConnection(self.host, self.port, self._password, on_event=self.on_event,
                             connect_timeout=self.connect_timeout,
                             command_timeout=self.command_timeout, jobs=self.jobs,
                             event_queue_size=self._event_queue_size)
        self._attempt = conn
        try:
            if self._stopping.is_set():
                raise ESLNotConnected("stopping")
            conn.connect()
            conn.command(commands.event_subscription(self.subscribed_events),
                         self.command_timeout)
        except ESLAuthError as exc:
            conn.close("authentication failed")
            ESL_RECONNECTS.labels("auth_failed").inc()
            self.last_error = str(exc)
            self.attempts += 1
            # Retrying a wrong password fast only floods FreeSWITCH's log; an operator
            # has to fix the config, so wait the longest delay.
            delay = backoff_delay(0, self.backoff_max, self.backoff_max, self._random())
            log.error("ESL authentication to %s:%s failed: %s; check [esl] password / "
                      "SWITCHD_ESL_PASSWORD. Retrying in %.1fs", self.host, self.port, exc,
                      delay)
            return delay
        except (ESLError, OSError) as exc:
            conn.close(f"setup failed: {exc}")
            ESL_RECONNECTS.labels("failed").inc()
            self.last_error = str(exc)
            delay = backoff_delay(self.attempts, self.backoff_initial, self.backoff_max,
                                  self._random())
            self.attempts += 1
            log.warning("ESL connect to %s:%s failed (attempt %d): %s; retrying in %.1fs",
                        self.host, self.port, self.attempts, exc, delay)
            return delay
        finally:
            self._attempt = None

        started = time.monotonic()
        ESL_RECONNECTS.labels("ok").inc()
        self.last_error = None
        self._conn = conn
        ESL_CONNECTED.set(1)
        self._up.set()
        log.info("ESL connected to %s:%s", self.host, self.port)
        reason = None
        if self.on_connected is not None:
            try:
                self.on_connected(conn)
            except Exception as exc:
                # The daemon is ready only once resynced: a connection whose resync failed
                # would stay not-ready for good. Recycle it; the next attempt resyncs again.
                if isinstance(exc, ESLError):
                    log.error("ESL resync (on_connected) failed: %s", exc)
                else:
                    log.exception("ESL on_connected hook failed")
                reason = f"on_connected failed: {exc}"
        reason = reason or self._watch(conn)
        if self._stopping.is_set():
            # stop() is saying goodbye (`exit`) on this connection; let it finish.
            conn.closed.wait(self.command_timeout)
        conn.close(reason)
        self._set_down()
        self.last_error = conn.close_reason or reason
        # Our own goodbye at shutdown is not an incident; anything else is.
        log.log(logging.INFO if self._stopping.is_set() else logging.WARNING,
                "ESL connection to %s:%s %s: %s", self.host, self.port,
                "closed" if self._stopping.is_set() else "lost", self.last_error)
        if self.on_disconnected is not None:
            try:
                self.on_disconnected(self.last_error)
            except Exception:
                log.exception("ESL on_disconnected hook failed")
        # A connection that held for a while resets the backoff; one that flaps keeps
        # growing it, so a switch that accepts and drops us is not hammered.
        if time.monotonic() - started >= self.backoff_max:
            self.attempts = 0
        delay = backoff_delay(self.attempts, self.backoff_initial, self.backoff_max,
                              self._random())
        self.attempts += 1
        return 0.0 if self._stopping.is_set() else delay

    def _watch(self, conn: ESLConnection) -> str:
        while True:
            silent_for = time.monotonic() - conn.last_frame_at
            remaining = self.heartbeat_timeout - silent_for
            if remaining <= 0:
                log.error("no ESL frame from %s:%s for %.1fs (HEARTBEAT expected every 20s);"
                          " recycling the connection", self.host, self.port, silent_for)
                return f"heartbeat timeout after {silent_for:.1f}s of silence"
            if silent_for >= self.probe_after:
                reason = self._probe(conn, silent_for)
                if reason is not None:
                    return reason
                continue
            gevent.wait([conn.closed, self._stopping],
                        timeout=min(remaining, self.probe_after - silent_for), count=1)
            if self._stopping.is_set():
                return "stopped by switchd"
            if conn.closed.is_set() or not conn.connected:
                return conn.close_reason or "connection closed"

    def _probe(self, conn: ESLConnection, silent_for: float) -> str | None:
        """``api status`` on a silent connection; any reply (a frame) proves it alive."""
        # Never past the heartbeat deadline: the probe can only make detection earlier.
        timeout = max(0.001, min(self.command_timeout, self.heartbeat_timeout - silent_for))
        try:
            conn.api("status", timeout)
        except ESLTimeout:
            log.error("no ESL frame from %s:%s for %.1fs and no reply to a probe within %.1fs;"
                      " recycling the connection", self.host, self.port, silent_for, timeout)
            return (f"heartbeat timeout: {silent_for:.1f}s of silence, then no reply to a "
                    f"liveness probe within {timeout:.1f}s")
        except ESLError:
            pass                      # closed meanwhile: the caller's checks say why
        if self._stopping.is_set():
            return "stopped by switchd"
        if conn.closed.is_set() or not conn.connected:
            return conn.close_reason or "connection closed"
        return None

    def _set_down(self) -> None:
        self._up.clear()
        ESL_CONNECTED.set(0)
