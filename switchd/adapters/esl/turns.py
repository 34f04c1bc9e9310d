"""Turns for the event dispatcher: handling queued ESL events steps aside for the network.

A dialplan lookup holds one of FreeSWITCH's session threads, and the caller hears nothing,
until it is answered; an event handled 10 ms later costs nobody anything. Under gevent
both run on one hub, and a dispatcher with a backlog would handle it in one run: every
connection that arrived meanwhile (mod_xml_curl's lookups, accepted once per turn of the
loop) waits behind it. So the dispatcher works in slices: after `slice_s` of handling it
waits until the loop has nothing else ready (libev's idle watcher), and then goes on.

That alone would starve events under a flood that always has something ready, and events
carry hangups, money and cap releases: the wait ends after `max_wait_s` whatever is ready.
And once the events waiting are already late (`late()`: the oldest has waited more than
LATE_S), waiting for the loop to idle is the wrong way round: the dispatcher then only
yields once, taking even turns with everything else that is ready, until it has caught up.
(Beyond that, the daemon refuses new calls' lookups while events are `esl.max_event_lag`
behind: daemon.py.)
"""
from __future__ import annotations

import time
from typing import Callable

import gevent
from gevent.hub import Waiter

SLICE_S = 0.001
MAX_WAIT_S = 0.02
LATE_S = 0.1


class Turns:
    """`restart()` when the work resumes after a wait of its own (an empty queue);
    `take()` between two pieces of work: it yields once the slice is used up."""

    def __init__(self, slice_s: float = SLICE_S, max_wait_s: float = MAX_WAIT_S,
                 late: Callable[[], bool] | None = None) -> None:
        self.slice_s = slice_s
        self.max_wait_s = max_wait_s
        self.late = late
        self.yields = 0
        self.late_yields = 0
        self._started = time.perf_counter()
        self._idle = None
        self._timer = None

    def restart(self) -> None:
        self._started = time.perf_counter()

    def take(self) -> None:
        if time.perf_counter() - self._started >= self.slice_s:
            if self.late is not None and self.late():
                gevent.sleep(0)           # one turn of the loop: the events are late already
                self.late_yields += 1
            else:
                self._step_aside()
            self._started = time.perf_counter()

    def _step_aside(self) -> None:
        hub = gevent.get_hub()
        if self._idle is None:            # made in the hub of the greenlet that works
            self._idle = hub.loop.idle()
            self._timer = hub.loop.timer(self.max_wait_s)
        waiter = Waiter(hub)
        self._idle.start(waiter.switch, None)
        self._timer.start(waiter.switch, None)
        try:
            waiter.get()
        finally:
            self._idle.stop()
            self._timer.stop()
        self.yields += 1
