"""Several daemons racing on one Redis: the harness the multi-process tests share.

Each daemon is a spawned process whose threads run one attempt after another until a
deadline (``hammer``); the parent samples a witness straight from Redis, not through our
code, while they run (``race``). The tests then assert on the daemons' counters and on
what the witness saw.
"""
from __future__ import annotations

import multiprocessing
import random
import threading
import time
from typing import Callable


class Tally:
    """Counters the threads of one daemon share."""

    def __init__(self, *names: str):
        self.values = dict.fromkeys(("errors", *names), 0)
        self._lock = threading.Lock()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.values[name] += n

    def peak(self, name: str, value: int) -> None:
        with self._lock:
            self.values[name] = max(self.values[name], value)


def hammer(name: str, seed: int, threads: int, seconds: float, tally: Tally,
           attempt: Callable[[str, random.Random], None], results) -> None:
    """Run ``attempt(call_id, rng)`` in ``threads`` threads until ``seconds`` have passed,
    then put the tally on ``results``. An exception in an attempt is counted as an error
    (the parent asserts there were none) and the thread goes on."""
    deadline = time.monotonic() + seconds

    def run(tid: int) -> None:
        rng = random.Random(seed * 100 + tid)
        n = 0
        while time.monotonic() < deadline:
            call = f"{name}-{tid}-{n}"
            n += 1
            try:
                attempt(call, rng)
            except Exception:
                tally.add("errors")

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    results.put(tally.values)


def race(daemon: Callable, args: list[tuple], sample: Callable[[], object]
         ) -> tuple[list[dict], list]:
    """Spawn one process per ``args`` entry running ``daemon(*entry, results)``; call
    ``sample()`` every 2 ms while any runs. Returns each daemon's tally and the samples;
    every process must exit cleanly."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=daemon, args=(*entry, results)) for entry in args]
    for p in procs:
        p.start()
    seen = []
    while any(p.is_alive() for p in procs):
        seen.append(sample())
        time.sleep(0.002)
    tallies = [results.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(10)
        assert p.exitcode == 0, f"a racing daemon exited with {p.exitcode}"
    return tallies, seen
