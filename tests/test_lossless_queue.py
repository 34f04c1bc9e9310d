"""LosslessQueue: must-keep items are never dropped, order is kept, put never blocks."""
from __future__ import annotations

import gevent
from hypothesis import given
from hypothesis import strategies as st

from switchd.lossless_queue import LosslessQueue

ops = st.lists(st.one_of(st.tuples(st.just("put"), st.booleans()), st.just(("get", None))),
               max_size=200)


@given(st.integers(1, 5), ops)
def test_kept_items_survive_in_order(maxsize, script):
    q, sent, got, n = LosslessQueue(maxsize), [], [], 0
    for op, keep in script:
        if op == "put":
            outcome = q.put((n, keep), keep=keep)
            assert outcome in ("queued", "overflow", "dropped")
            assert not (keep and outcome == "dropped")
            if outcome != "dropped":
                sent.append((n, keep))
            n += 1
        elif q.qsize():
            head = q.peek()                             # the oldest, left in place
            got.append(q.get())
            assert got[-1] == head
        else:
            assert q.peek() is None
    while q.qsize():
        assert q.peek() == q.peek()
        got.append(q.get())
    assert q.peek() is None
    assert got == sent                                  # nothing kept is lost; FIFO order
    assert all(item in got for item in [(i, k) for i, k in sent if k])


def test_a_blocked_getter_wakes_on_the_next_put():
    q = LosslessQueue(2)
    getter = gevent.spawn(q.get)
    gevent.sleep(0)
    assert q.put("x", keep=False) == "queued"
    assert getter.get(timeout=1) == "x"


def test_full_queue_overflows_kept_items_and_drops_others():
    q = LosslessQueue(1)
    assert q.put("a", keep=False) == "queued"
    assert q.put("b", keep=False) == "dropped"
    assert q.put("hangup", keep=True) == "overflow"
    assert q.put("c", keep=False) == "dropped"          # behind the overflow: order first
    assert [q.get(), q.get()] == ["a", "hangup"] and q.qsize() == 0
