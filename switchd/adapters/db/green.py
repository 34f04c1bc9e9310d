"""PostgreSQL connections that wait on gevent's hub directly.

Under gevent, psycopg waits through the monkeypatched ``select.poll``: every wait builds a
poll object, starts its io watchers and a timer, and wakes every 0.1 s (psycopg's check
for Ctrl-C) however long it waits. For the daemon that was ≈ 25 % of the CDR writer's
CPU on a small batch (≈ 25 waits each), and every LISTEN connection woke ten times a
second while idle. ``GreenConnection`` parks the greenlet on one io watcher for the
socket until it is ready; a bounded wait (``notifies(timeout=…)``) adds one timer for its
deadline. Nothing wakes while nothing arrives, patched process or not.

Use ``connect`` wherever the daemon opens a connection it keeps.
"""
from __future__ import annotations

import select
from time import monotonic
from typing import Any

import gevent
import psycopg
from gevent.monkey import get_original
from psycopg.waiting import Ready, Wait

# libev's event bits are selectors' (READ 1, WRITE 2), as are psycopg's Wait and Ready.
_READY = {Wait.R: Ready.R, Wait.W: Ready.W, Wait.RW: Ready.RW}


# The system's poll(), even in a patched process: asked with a timeout of 0 it never blocks,
# and unlike select() it takes any file descriptor number.
_poll = get_original("select", "poll")


def _ready_now(fileno: int, state: Wait) -> Ready:
    """The socket's readiness for `state` at this instant, without waiting."""
    poller = _poll()
    poller.register(fileno, (select.POLLIN if state & Wait.R else 0)
                    | (select.POLLOUT if state & Wait.W else 0))
    events = poller.poll(0)
    revents = events[0][1] if events else 0
    if revents & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
        return _READY[state]        # let psycopg's generator meet the error itself
    return Ready((Ready.R if revents & select.POLLIN else 0)
                 | (Ready.W if revents & select.POLLOUT else 0))


def hub_wait(gen, fileno: int, timeout: float | None = None):
    """Run one psycopg generator to completion, parking on gevent's hub whenever it would
    block. An RW wait is answered RW whichever side woke it: psycopg's generators then try
    both, and each is non-blocking. With a timeout, psycopg's own rule: the generator is
    run once more on what is ready at the deadline, then psycopg's wait-timeout error
    (which ``notifies()`` takes as its end) is raised."""
    hub = gevent.get_hub()
    deadline = None if timeout is None else monotonic() + timeout
    watcher, watching = None, None
    try:
        state = next(gen)
        while True:
            remaining = None if deadline is None else deadline - monotonic()
            if remaining is not None and remaining <= 0:
                ready = _ready_now(fileno, state)
            else:
                if state != watching:
                    if watcher is not None:
                        watcher.close()
                    watcher, watching = hub.loop.io(fileno, int(state)), state
                if remaining is None:
                    hub.wait(watcher)
                    ready = _READY[state]
                else:
                    ready = Ready.NONE
                    with gevent.Timeout(remaining, False):      # silent: ready stays NONE
                        hub.wait(watcher)
                        ready = _READY[state]
            if ready:
                state = gen.send(ready)
            else:
                gen.send(Ready.NONE)
            if deadline is not None and monotonic() >= deadline:
                raise psycopg.errors._WaitTimeout("wait timeout expired")
    except StopIteration as done:
        return done.value
    finally:
        if watcher is not None:
            watcher.close()


class GreenConnection(psycopg.Connection):
    def wait(self, gen, interval: float | None = None, timeout: float | None = None) -> Any:
        # `interval` (psycopg's periodic wake-up to notice a Ctrl-C) is not needed here:
        # a signal reaches a gevent process through the hub, whatever a greenlet waits on.
        return hub_wait(gen, self.pgconn.socket, timeout)


def connect(conninfo: str = "", **kwargs) -> GreenConnection:
    """``psycopg.connect`` for a connection whose waits park on gevent's hub."""
    return GreenConnection.connect(conninfo, **kwargs)
