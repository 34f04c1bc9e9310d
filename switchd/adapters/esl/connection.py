"""One inbound ESL connection: the only module that imports greenswitch (STYLE.md §3).

greenswitch 0.0.19 gives the shape (InboundESL: host, port, password, ``connected``) but its
reader falls short for a daemon that must never hang: it trusts Content-Length, decodes each
TCP read on its own, URL-decodes whole frames before splitting lines, spins forever on a
short body, has no command timeout, leaves pending commands waiting when the socket drops,
and runs every handler in the reading path. This subclass keeps the class and replaces the
I/O: bytes from ``sock.recv`` go into our sans-I/O :class:`FrameParser`; replies are matched
FIFO to pending commands; events go through a bounded queue to a separate greenlet.
"""
from __future__ import annotations

import fcntl
import logging
import struct
import termios
import time
from collections import deque
from typing import Callable, NamedTuple

import gevent
import gevent.socket as gsocket
from gevent.event import AsyncResult, Event
from gevent.lock import Semaphore
from greenswitch.esl import InboundESL

from switchd.adapters.esl import commands
from switchd.adapters.esl.events import (
    CHANNEL_EVENTS, SUBSCRIBED_EVENTS, TYPED_NAMES, ChannelEvent, GatewayEvent, JobEvent,
    TypedEvent, channel_event_from_plain, event_label, to_typed,
)
from switchd.adapters.esl.framing import (
    API_RESPONSE, AUTH_REQUEST, COMMAND_REPLY, DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_MAX_HEADER_BYTES, DISCONNECT_NOTICE, EVENT_JSON, EVENT_PLAIN, LOG_DATA,
    RUDE_REJECTION, ESLError, ESLEventError, ESLProtocolError, Frame, FrameParser, parse_event,
    peek_plain_event_name,
)
from switchd.adapters.esl.turns import LATE_S, Turns
from switchd.lossless_queue import LosslessQueue
from switchd.metrics import (
    ESL_COMMAND_ERRORS, ESL_EVENTS, ESL_EVENTS_DROPPED, ESL_EVENTS_OVERFLOWED, ESL_HANDLER_ERRORS,
    ESL_PROTOCOL_ERRORS,
)

log = logging.getLogger(__name__)

__all__ = [
    "ESLConnection", "JobTracker", "JobResult", "ESLError", "ESLProtocolError",
    "ESLNotConnected", "ESLDisconnected", "ESLTimeout", "ESLAuthError", "ESLRejected",
    "ESLCommandError",
]


class ESLNotConnected(ESLError):
    """No usable connection: the command was not sent."""


class ESLDisconnected(ESLNotConnected):
    """The connection dropped while the command was waiting for its reply."""


class ESLTimeout(ESLError):
    """No reply (or no job result) within the timeout."""


class ESLAuthError(ESLError):
    """FreeSWITCH refused the password."""


class ESLRejected(ESLError):
    """FreeSWITCH refused the connection itself (``text/rude-rejection``: ACL)."""


class ESLCommandError(ESLError):
    """A command/reply that did not start with ``+OK``."""


JobResult = JobEvent

_STOP = object()
_LABEL_NAMES = frozenset(SUBSCRIBED_EVENTS)
_RECV_BYTES = 256 * 1024


class JobTracker:
    """Job-UUID → result of a bgapi job, resolved by BACKGROUND_JOB events.

    FreeSWITCH sends BACKGROUND_JOB to every subscribed connection, so a tracker can
    outlive one connection: the supervisor keeps one across reconnects.
    """

    def __init__(self) -> None:
        self._jobs: dict[str, AsyncResult] = {}

    def __len__(self) -> int:
        return len(self._jobs)

    def expect(self, job_uuid: str) -> AsyncResult:
        return self._jobs.setdefault(job_uuid, AsyncResult())

    def resolve(self, event: JobEvent) -> bool:
        """True if someone was waiting for this job (other clients' jobs are ignored)."""
        result = self._jobs.get(event.job_uuid)
        if result is None or result.ready():
            return False
        result.set(event)
        return True

    def wait(self, job_uuid: str, timeout: float) -> JobResult:
        result = self.expect(job_uuid)
        try:
            return result.get(timeout=timeout)
        except gevent.Timeout:
            ESL_COMMAND_ERRORS.labels("job_timeout").inc()
            raise ESLTimeout(f"no BACKGROUND_JOB for job {job_uuid} within {timeout}s") from None
        finally:
            self._jobs.pop(job_uuid, None)

    def discard(self, job_uuid: str) -> None:
        self._jobs.pop(job_uuid, None)

    def fail_all(self, exc: BaseException) -> None:
        for result in self._jobs.values():
            if not result.ready():
                result.set_exception(exc)
        self._jobs.clear()


class ESLConnection(InboundESL):
    """An authenticated inbound connection with bounded waits everywhere.

    ``on_event(event)`` receives typed events in a greenlet of its own; ``on_disconnect(
    conn, reason)`` fires exactly once when the connection ends, whatever ended it.
    """

    def __init__(self, host: str, port: int, password: str, *,
                 on_event: Callable[[TypedEvent], None] | None = None,
                 on_disconnect: Callable[["ESLConnection", str], None] | None = None,
                 connect_timeout: float = 5.0, command_timeout: float = 5.0,
                 jobs: JobTracker | None = None, event_queue_size: int = 10_000,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> None:
        super().__init__(host, port, password, timeout=connect_timeout)
        self.on_event = on_event
        self.on_disconnect = on_disconnect
        self.command_timeout = command_timeout
        self.jobs = jobs if jobs is not None else JobTracker()
        self._owns_jobs = jobs is None
        self._parser = FrameParser(max_frame_bytes, max_header_bytes)
        self._pending: deque[AsyncResult] = deque()
        self._write_lock = Semaphore()
        # Hangups, answers, renames and job results are kept even when the queue is full
        # (LosslessQueue's overflow); other events are dropped then, visibly.
        self._events = LosslessQueue(event_queue_size)
        self._greeting = AsyncResult()
        self._open = False
        self._torn_down = False
        self._dropped = 0
        self.sock = None
        self.last_frame_at = 0.0          # time.monotonic() of the last frame received
        # time.monotonic() since which every read has left bytes in the socket (the reader
        # cannot keep up: those events have not even been queued yet); None when drained.
        self._unread_since: float | None = None
        self.close_reason: str | None = None
        self.closed = Event()

    # --- lifecycle ------------------------------------------------------------------------
    def connect(self) -> None:
        """TCP connect, wait for ``auth/request``, authenticate; each step bounded."""
        if self._open or self._torn_down:
            raise ESLError("an ESLConnection connects once; make a new one to reconnect")
        try:
            sock = gsocket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise ESLNotConnected(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        sock.settimeout(None)
        sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
        sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_KEEPALIVE, 1)
        self.sock = sock
        self._open = True
        self.last_frame_at = time.monotonic()
        self._receive_events_greenlet = gevent.spawn(self.receive_events)
        self._process_events_greenlet = gevent.spawn(self.process_events)
        try:
            self._greeting.get(timeout=self.timeout)
        except gevent.Timeout:
            self.close("no auth/request from FreeSWITCH")
            raise ESLTimeout(f"no auth/request within {self.timeout}s") from None
        except ESLError:
            self.close("refused before authentication")
            raise
        self.authenticate()

    def authenticate(self) -> None:
        try:
            reply = self._send(commands.auth(self.password), self.timeout)
        except ESLError:
            self.close("authentication did not complete")
            raise
        if not reply.reply_text.startswith("+OK"):
            self.close("authentication refused")
            # The reply is FreeSWITCH's text ("-ERR invalid"); the password is never logged.
            raise ESLAuthError(f"FreeSWITCH refused the ESL password ({reply.reply_text})")
        self.connected = True

    def close(self, reason: str = "closed by switchd") -> None:
        """End the connection now; idempotent. Pending commands fail with ESLDisconnected."""
        if self._torn_down:
            return
        self._torn_down = True
        self._open = False
        self.connected = False
        self.close_reason = reason
        if self.sock is not None:
            self.sock.close()          # wakes the reader with an error; it finds us torn down
        error = ESLDisconnected(f"ESL connection lost: {reason}")
        while self._pending:
            result = self._pending.popleft()
            if not result.ready():
                result.set_exception(error)
        if not self._greeting.ready():
            self._greeting.set_exception(error)
        if self._owns_jobs:
            self.jobs.fail_all(error)
        self._events.put(_STOP, keep=True)
        self.closed.set()
        if self.on_disconnect is not None:
            try:
                self.on_disconnect(self, reason)
            except Exception:
                log.exception("ESL disconnect callback failed")

    def stop(self) -> None:
        """Polite close: ``exit`` if possible, then close (greenswitch's name)."""
        if self.connected:
            try:
                self._send("exit", min(self.command_timeout, 1.0))
            except ESLError:
                pass
        self.close("stopped by switchd")

    # --- commands -------------------------------------------------------------------------
    def send(self, data: str, timeout: float | None = None) -> Frame:
        """Send one command (text from :mod:`commands`) and return its reply frame."""
        if not self.connected:
            raise ESLNotConnected("ESL is not connected")
        return self._send(data, self.command_timeout if timeout is None else timeout)

    def command(self, data: str, timeout: float | None = None) -> str:
        """Send a command whose ``Reply-Text`` must be ``+OK ...``; return that text."""
        reply = self.send(data, timeout)
        if not reply.reply_text.startswith("+OK"):
            ESL_COMMAND_ERRORS.labels("refused").inc()
            raise ESLCommandError(f"{data.split(' ', 1)[0]} refused: {reply.reply_text}")
        return reply.reply_text

    def api(self, cmd: str, timeout: float | None = None) -> str:
        """``api <cmd>``; returns the response body (FreeSWITCH's text, ``-ERR`` included)."""
        return self.send(commands.api(cmd), timeout).text

    def bgapi(self, cmd: str, timeout: float | None = None, job_uuid: str | None = None) -> str:
        """Start a background job; return its Job-UUID at once (result via :meth:`wait_job`)."""
        job_uuid = job_uuid or commands.new_job_uuid()
        # Registered before sending: the result may come right behind the reply.
        self.jobs.expect(job_uuid)
        try:
            self.command(commands.bgapi(cmd, job_uuid=job_uuid), timeout)
        except BaseException:
            self.jobs.discard(job_uuid)
            raise
        return job_uuid

    def wait_job(self, job_uuid: str, timeout: float) -> JobResult:
        return self.jobs.wait(job_uuid, timeout)

    def _send(self, data: str, timeout: float) -> Frame:
        if not self._open:
            raise ESLNotConnected("ESL connection is not open")
        payload = (data + "\n\n").encode("utf-8")
        result = AsyncResult()
        stage = "queued"
        deadline = gevent.Timeout(timeout)
        deadline.start()
        try:
            # One writer at a time, and the reply slot is taken in write order, so FIFO
            # matching of replies holds with many greenlets sending at once.
            with self._write_lock:
                if not self._open:
                    raise ESLNotConnected("ESL connection is not open")
                self._pending.append(result)
                stage = "writing"
                try:
                    self.sock.sendall(payload)
                except OSError as exc:
                    self.close(f"write failed: {exc}")
                    raise ESLDisconnected(f"ESL write failed: {exc}") from exc
                stage = "waiting"
            return result.get()
        except gevent.Timeout as exc:
            if exc is not deadline:
                raise
            ESL_COMMAND_ERRORS.labels("timeout").inc()
            if stage == "writing":
                # Part of the command may be on the wire: the stream can't be trusted.
                self.close("command write timed out")
            # A late reply still lands in the slot we leave in _pending, keeping FIFO order.
            raise ESLTimeout(f"no reply to {data.split(' ', 1)[0]!r} within {timeout}s") from None
        except ESLDisconnected:
            ESL_COMMAND_ERRORS.labels("disconnected").inc()
            raise
        finally:
            deadline.close()

    # --- reading --------------------------------------------------------------------------
    def receive_events(self) -> None:
        """Reader greenlet: socket bytes → frames → replies resolved, events queued."""
        reason = "EOF from FreeSWITCH"
        try:
            while not self._torn_down:
                data = self.sock.recv(_RECV_BYTES)
                if not data:
                    break
                self._note_unread()
                self._parser.feed(data)
                for frame in self._parser.frames():
                    self.last_frame_at = time.monotonic()
                    self.handle_event(frame)
                    if self._torn_down:
                        return
                # recv() does not yield while data is waiting: under a burst the reader
                # would starve the dispatcher (and the HTTP server) without this.
                gevent.sleep(0)
        except ESLProtocolError as exc:
            ESL_PROTOCOL_ERRORS.inc()
            log.error("ESL protocol error from %s:%s, recycling the connection: %s",
                      self.host, self.port, exc)
            reason = f"protocol error: {exc}"
        except OSError as exc:
            reason = f"socket error: {exc}"
        except Exception as exc:       # greenlet boundary: a bug here must not hang callers
            log.exception("ESL reader failed")
            reason = f"reader failed: {exc!r}"
        finally:
            self.close(reason)

    def _note_unread(self) -> None:
        """After a read: whether the switch's bytes outpace the reader (FIONREAD, one cheap
        syscall a read of up to _RECV_BYTES)."""
        # Every read, not only a full one: when the receive buffer is smaller than a read
        # (the kernel's autotuning does not grow it for a reader that is slow), no read is
        # full, the backlog waits in the switch's send buffer, and what shows it is the
        # bytes that flow in again right after each read (a switch that just happened to
        # send within those microseconds looks the same, but not read after read).
        try:
            unread = struct.unpack("i", fcntl.ioctl(self.sock.fileno(), termios.FIONREAD,
                                                    b"\0\0\0\0"))[0]
        except OSError:
            return
        if not unread:
            self._unread_since = None
        elif self._unread_since is None:
            self._unread_since = time.monotonic()

    def handle_event(self, frame: Frame) -> None:
        kind = frame.content_type
        if kind == EVENT_PLAIN or kind == EVENT_JSON:
            self._on_event_frame(frame)
        elif kind == COMMAND_REPLY or kind == API_RESPONSE:
            if not self._pending:
                raise ESLProtocolError(f"unsolicited {kind} ({frame.reply_text[:60]!r})")
            result = self._pending.popleft()
            if not result.ready():
                result.set(frame)
        elif kind == AUTH_REQUEST:
            if not self._greeting.ready():
                self._greeting.set(frame)
        elif kind == DISCONNECT_NOTICE:
            if frame.headers.get("Content-Disposition") == "linger":
                log.info("FreeSWITCH will linger before disconnecting")
            else:
                self.close(f"FreeSWITCH disconnected: {frame.text.strip()[:120]}")
        elif kind == RUDE_REJECTION:
            text = frame.text.strip()[:120]
            if not self._greeting.ready():
                self._greeting.set_exception(ESLRejected(f"FreeSWITCH rejected us: {text}"))
            self.close(f"rejected: {text}")
        elif kind == LOG_DATA:
            pass   # only sent after a `log` command, which switchd never issues
        else:
            log.warning("ignoring ESL frame of unknown type %r", kind)

    def _on_event_frame(self, frame: Frame) -> None:
        if frame.content_type == EVENT_PLAIN:
            name = peek_plain_event_name(frame.body)
            if name is not None and name not in TYPED_NAMES:
                self._count(name if name in _LABEL_NAMES else "other")
                return
            if name in CHANNEL_EVENTS:
                # Typed by the dispatcher, in its turns: reading the variables is most of
                # an event's cost, and a dialplan lookup must not wait behind it.
                self._count(name)
                self._deliver(_Untyped(name, frame, self.last_frame_at))
                return
        headers = _headers_or_drop(frame)
        if headers is None:
            return
        self._count(event_label(headers))
        event = to_typed(headers)
        if event is None:
            return
        if isinstance(event, JobEvent):
            self.jobs.resolve(event)
        self._deliver(event)

    def _deliver(self, event: TypedEvent) -> None:
        if self.on_event is None:
            return
        outcome = self._events.put(event, keep=_must_keep(event))
        if outcome == "overflow":
            ESL_EVENTS_OVERFLOWED.inc()
        elif outcome == "dropped":
            # Blocking here would stall the reader and make FreeSWITCH drop events (and
            # eventually the listener); losing a non-terminal one is the lesser harm, and
            # visible. Terminal events never get here (_must_keep).
            self._dropped += 1
            ESL_EVENTS_DROPPED.labels("queue_full").inc()
            if self._dropped == 1 or self._dropped % 1000 == 0:
                log.error("ESL event queue full (%d); dropped %d event(s) so far, last %s",
                          self._events.maxsize, self._dropped, _label_of(event))

    def _count(self, label: str) -> None:
        ESL_EVENTS.inc(label)

    def process_events(self) -> None:
        """Dispatcher greenlet: a slow or failing handler never blocks the reader, and a
        backlog never keeps the dialplan lookups waiting (turns.py)."""
        # Late by its own queue only: when the reader is what is behind, the dispatcher's
        # waits for an idle loop are what give the reader its turns.
        turns = Turns(late=lambda: self._queued_age() > LATE_S)
        while True:
            if self._events.qsize():
                turns.take()
                event = self._events.get()
            else:
                event = self._events.get()        # waits: the next slice starts after it
                turns.restart()
            if event is _STOP:
                return
            if type(event) is _CaughtUp:
                event.reached.set()
                continue
            if type(event) is _Untyped:
                event = _typed_channel_event(event.frame)
                if event is None:
                    continue
            try:
                self.on_event(event)
            except Exception:
                label = _label_of(event)
                ESL_HANDLER_ERRORS.labels(label).inc()
                log.exception("ESL event handler failed on %s uuid=%s", label,
                              getattr(event, "uuid", getattr(event, "job_uuid", "-")))

    def backlog_age(self) -> float:
        """How far behind the switch the events are, in seconds: how long the oldest queued
        channel event has waited for the dispatcher, or how long the reader has not been
        able to drain the socket, whichever is longer. 0 when nothing waits (a queued job,
        gateway state or resync carries no time)."""
        queued = self._queued_age()
        if self._unread_since is None:
            return queued
        unread = time.monotonic() - self._unread_since
        return queued if queued > unread else unread

    def _queued_age(self) -> float:
        head = self._events.peek()
        return time.monotonic() - head.received if type(head) is _Untyped else 0.0

    def post(self, item) -> None:
        """Queue `item` for the event handler behind every event already received: a
        command's reply (e.g. `show channels`) applied this way keeps wire order. Never
        blocks, never dropped."""
        self._events.put(item, keep=True)

    def caught_up(self) -> Event:
        """An Event set once the handler has been given every event received so far (a
        marker queued behind them, never handed to it). A job's result is resolved as it
        is read, ahead of the channel events before it: this says when those are applied.
        Never set if the connection closes first."""
        marker = _CaughtUp(Event())
        self._events.put(marker, keep=True)
        return marker.reached

    @property
    def dropped_events(self) -> int:
        return self._dropped

    @property
    def pending_commands(self) -> int:
        return len(self._pending)


class _CaughtUp(NamedTuple):
    reached: Event


class _Untyped(NamedTuple):
    """A CHANNEL_* event as read, queued for the dispatcher to type (its name peeked)."""
    name: str
    frame: Frame
    received: float       # time.monotonic() when it was read: how long it has waited


def _typed_channel_event(frame: Frame) -> ChannelEvent | None:
    """The typed event of a queued CHANNEL_* frame: the fast path, else the full parse
    (None when the event is unusable; an unparseable one is counted and logged)."""
    event = channel_event_from_plain(frame.body)
    if event is not None:
        return event
    headers = _headers_or_drop(frame)
    event = to_typed(headers) if headers is not None else None
    return event if isinstance(event, ChannelEvent) else None


def _headers_or_drop(frame: Frame) -> dict[str, str] | None:
    """The event's headers; None, counted and logged, when its body cannot be parsed (the
    frame boundary is intact, so only this event is lost)."""
    try:
        return parse_event(frame)
    except ESLEventError as exc:
        ESL_EVENTS_DROPPED.labels("unparseable").inc()
        log.error("dropping an unparseable ESL event: %s", exc)
        return None


# Events that carry money or free slots: never dropped by a full queue (issue 9).
_KEEP = frozenset({"CHANNEL_ANSWER", "CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE",
                   "CHANNEL_UUID"})


def _must_keep(event: TypedEvent | _Untyped) -> bool:
    if type(event) is _Untyped or isinstance(event, ChannelEvent):
        return event.name in _KEEP
    return isinstance(event, JobEvent)


def _label_of(event: TypedEvent | _Untyped) -> str:
    if type(event) is _Untyped or isinstance(event, ChannelEvent):
        return event.name
    if isinstance(event, JobEvent):
        return "BACKGROUND_JOB"
    if isinstance(event, GatewayEvent):
        return f"sofia::gateway_{event.kind}"
    return "HEARTBEAT"
