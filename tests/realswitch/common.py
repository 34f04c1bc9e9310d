"""What every part of the harness shares: its error, polling, stopping a process."""
from __future__ import annotations

import subprocess
import time


class HarnessError(RuntimeError):
    """The harness could not do what it was asked (a process failed to start, a timeout)."""

def poll(predicate, timeout: float, what: str, interval: float = 0.05):
    """Return predicate()'s first truthy value, or raise HarnessError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise HarnessError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def peak_overlap(spans: list[tuple[int, int]]) -> int:
    """Most intervals open at one instant (an end before a start at the same time)."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans],
                   key=lambda e: (e[0], e[1]))
    peak = open_now = 0
    for _, step in edges:
        open_now += step
        peak = max(peak, open_now)
    return peak
