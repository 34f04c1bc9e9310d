"""A bounded queue whose must-keep items are never dropped (issue 9: a hangup event must
never be lost to a full queue, and nothing in the event path may block).

`put(item, keep)` never blocks. While the bounded queue has room and nothing waits in the
overflow, items go to the queue. Otherwise an item marked `keep` (a hangup, a job result,
a slot release) goes to an unbounded FIFO overflow, and any other item is dropped (the
caller counts it). Order is kept: once the overflow holds anything, every later item goes
behind it, and `get()` drains the queue before the overflow. The overflow is bounded in
practice by the number of calls, not of events: only terminal items are kept there.
"""
from __future__ import annotations

from collections import deque

from gevent.queue import Empty, Full, Queue


class LosslessQueue:
    def __init__(self, maxsize: int):
        self._queue: Queue = Queue(maxsize=maxsize)
        self._overflow: deque = deque()

    @property
    def maxsize(self) -> int:
        return self._queue.maxsize

    def qsize(self) -> int:
        return self._queue.qsize() + len(self._overflow)

    def overflowed(self) -> int:
        return len(self._overflow)

    def put(self, item, keep: bool) -> str:
        """'queued', 'overflow' (kept beyond the bound) or 'dropped'. Never blocks."""
        if not self._overflow:
            try:
                self._queue.put_nowait(item)
                return "queued"
            except Full:
                pass
        if keep:
            self._overflow.append(item)
            return "overflow"
        return "dropped"

    def get(self):
        """Oldest item; blocks only while both the queue and the overflow are empty (an
        item can reach the overflow only while the queue is full or the overflow is not
        empty, so a getter blocked on an empty queue is always woken by the next put)."""
        try:
            return self._queue.get_nowait()
        except Empty:
            pass
        if self._overflow:
            return self._overflow.popleft()
        return self._queue.get()

    def peek(self):
        """The oldest item, left where it is; None when there is none."""
        try:
            return self._queue.peek_nowait()
        except Empty:
            return self._overflow[0] if self._overflow else None

    def get_nowait(self):
        try:
            return self._queue.get_nowait()
        except Empty:
            if self._overflow:
                return self._overflow.popleft()
            raise
