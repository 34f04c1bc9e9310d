"""The event dispatcher's turns (switchd/adapters/esl/turns.py): a backlog of work steps
aside for what the network has ready, and a loop that is never idle still gives it its
turn. Real gevent sockets and greenlets; the work is real CPU, not sleeps."""
from __future__ import annotations

import time

import gevent
import gevent.socket

from switchd.adapters.esl.turns import Turns


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _pieces_done_when_the_socket_was_served(turns: Turns, pieces: int = 200) -> int:
    """A worker does `pieces` pieces of 0.2 ms of CPU, taking its turns between them;
    after the 10th a byte makes a socket ready. How many pieces were done when the greenlet
    waiting on that socket ran."""
    ours, theirs = gevent.socket.socketpair()
    done = [0]
    seen = []

    def reader():
        ours.recv(1)
        seen.append(done[0])

    def worker():
        for i in range(pieces):
            if i == 10:
                theirs.send(b"x")
            _busy(0.0002)
            done[0] += 1
            turns.take()
    waiting = gevent.spawn(reader)
    gevent.sleep(0)                       # the reader is waiting on its socket
    gevent.spawn(worker).join(10)
    waiting.join(1)
    ours.close()
    theirs.close()
    return seen[0]


def test_a_backlog_steps_aside_for_a_socket_that_becomes_ready():
    turns = Turns(slice_s=0.001)
    served_at = _pieces_done_when_the_socket_was_served(turns)
    # 1 ms slices of 0.2 ms pieces: served within a slice or two of the byte's arrival.
    assert served_at <= 30, served_at
    assert turns.yields > 0
    # Without turns (a slice longer than the work) the socket waits for the whole backlog.
    assert _pieces_done_when_the_socket_was_served(Turns(slice_s=60)) == 200


def test_a_loop_never_idle_still_gives_the_work_its_turn():
    """A greenlet that always has something ready (a flood) keeps the idle watcher from
    firing: the wait ends after max_wait_s and the work goes on."""
    spinning = [True]
    spins = [0]

    def flood():
        while spinning[0]:
            spins[0] += 1
            gevent.sleep(0)
    turns = Turns(slice_s=0.001, max_wait_s=0.005)

    def worker():
        for _ in range(50):
            _busy(0.0005)
            turns.take()
    flooding = gevent.spawn(flood)
    gevent.sleep(0)
    work = gevent.spawn(worker)
    work.join(10)
    spinning[0] = False
    flooding.join(1)
    assert work.successful(), "the work starved behind a loop that was never idle"
    assert turns.yields >= 10 and spins[0] > 0


def _flood_turns_while_working(turns: Turns, pieces: int = 20) -> int:
    """A worker does `pieces` pieces of 0.5 ms of CPU, taking its turns, beside a greenlet
    that is always ready (the loop never idles): how many turns that greenlet got."""
    spinning, spins = [True], [0]

    def flood():
        while spinning[0]:
            spins[0] += 1
            gevent.sleep(0)

    def worker():
        for _ in range(pieces):
            _busy(0.0005)
            turns.take()
    flooding = gevent.spawn(flood)
    gevent.sleep(0)
    gevent.spawn(worker).join(10)
    spinning[0] = False
    flooding.join(1)
    return spins[0]


def test_late_work_takes_even_turns_instead_of_waiting_for_the_loop_to_idle():
    """Events already late do not wait for an idle loop (a flood never gives one): at each
    slice's end the work yields once, so the flood gets a turn per slice, not a wait's worth."""
    late = Turns(slice_s=0.001, max_wait_s=0.05, late=lambda: True)
    spins_late = _flood_turns_while_working(late)
    assert late.late_yields >= 5 and late.yields == 0
    assert spins_late <= 3 * late.late_yields, (spins_late, late.late_yields)
    # The same work, not late: every slice's end waits max_wait_s for an idle that never
    # comes, while the flood spins.
    on_time = Turns(slice_s=0.001, max_wait_s=0.05, late=lambda: False)
    spins_on_time = _flood_turns_while_working(on_time)
    assert on_time.yields >= 5 and on_time.late_yields == 0
    assert spins_on_time > 20 * spins_late, (spins_on_time, spins_late)
