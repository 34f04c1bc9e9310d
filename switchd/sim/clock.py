"""Simulated time: calls last minutes of simulated time but milliseconds of real time.

`time_scale` simulated seconds pass per real second. Event timestamps, billsec and
billmsec come from this clock, so rating sees realistic durations while tests stay fast.
"""
from __future__ import annotations

import time

import gevent


class SimClock:
    def __init__(self, time_scale: float = 1.0, start_us: int | None = None) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        self.time_scale = float(time_scale)
        self._t0 = int(time.time() * 1_000_000) if start_us is None else int(start_us)
        self._m0 = time.monotonic()

    def now_us(self) -> int:
        return self._t0 + int((time.monotonic() - self._m0) * 1_000_000 * self.time_scale)

    def now(self) -> float:
        return self.now_us() / 1_000_000

    def real_seconds(self, sim_seconds: float) -> float:
        return max(0.0, sim_seconds / self.time_scale)

    def sleep(self, sim_seconds: float) -> None:
        gevent.sleep(self.real_seconds(sim_seconds))

    def wait_until(self, ts_us: int, event=None) -> bool:
        """Sleep until simulated time `ts_us`; True if `event` (a gevent Event) fired first."""
        remaining = self.real_seconds((ts_us - self.now_us()) / 1_000_000)
        if event is None:
            gevent.sleep(remaining)
            return False
        return bool(event.wait(timeout=remaining)) if remaining > 0 else event.is_set()
