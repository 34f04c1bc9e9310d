"""Refusals under overload, logged as episodes: a WARNING when the HTTP server starts
refusing a kind of request with 503 (and why), an INFO line once it has refused nothing
for QUIET_S, with what it refused.

A line per refusal would spend the CPU the refusal saves and bury the log; no line at all
leaves an operator whose calls fail on the switch with nothing to read. The metric counts
every refusal (switchd_http_requests_shed_total).
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Callable

log = logging.getLogger(__name__)

QUIET_S = 5.0

_SETTING = {"cdr": "http.max_cdr_in_flight"}

_WHY = {
    "in_flight": "{kind} requests in flight are at their bound ({setting})",
    "events_behind": "ESL events are more than esl.max_event_lag behind "
                     "(switchd_esl_event_backlog_seconds): the calls already up come first",
}


class ShedLog:
    """`shed(kind, reason)` on each refusal, `admitted()` on each request let in."""

    def __init__(self, quiet_s: float = QUIET_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.quiet_s = quiet_s
        self.clock = clock
        self._since: float | None = None      # the episode's first refusal
        self._last = 0.0                      # its latest
        self._counts: Counter[tuple[str, str]] = Counter()

    @property
    def overloaded(self) -> bool:
        return self._since is not None

    def shed(self, kind: str, reason: str) -> None:
        now = self.clock()
        if self._since is None:
            self._since = now
        if (kind, reason) not in self._counts:
            why = _WHY.get(reason, reason).format(
                kind=kind, setting=_SETTING.get(kind, "http.max_in_flight"))
            log.warning("overloaded: refusing %s requests with 503 (reason %s): %s",
                        kind, reason, why)
        self._counts[kind, reason] += 1
        self._last = now

    def admitted(self) -> None:
        if self._since is not None and self.clock() - self._last >= self.quiet_s:
            refused = ", ".join(f"{n} {kind} ({reason})"
                                for (kind, reason), n in sorted(self._counts.items()))
            log.info("no longer overloaded: refused %s over %.1f s", refused,
                     self._last - self._since)
            self._since = None
            self._counts.clear()
