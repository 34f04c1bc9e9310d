"""In-process caps for a single node (the embedded default, and the fail-open stand-in).

Sets of call UUIDs per scope, one lease per call on an injectable monotonic clock, and a
sliding-window log per CPS scope. Every operation runs under one lock and does no I/O, so it is
safe from threads and greenlets alike and costs microseconds.
"""
from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from switchd import metrics
from switchd.adapters.caps.base import (ADMITTED, ALREADY_HELD, CAP_REACHED, CPS_REACHED, DEFAULT_TTL,
                               NOT_HELD, Admission, CapsBackend, CpsScope, Scope, dedupe)


@dataclass
class _Lease:
    scopes: set[str] = field(default_factory=set)
    expires: float = 0.0
    acquired: float = 0.0


@dataclass
class _CpsLog:
    """Admissions in the current window, oldest first, and the same calls as a set."""
    times: deque = field(default_factory=deque)
    members: set[str] = field(default_factory=set)


# Every fresh admission is equal; Admission is frozen, so one instance serves them all.
_ADMITTED = Admission(True, None, ADMITTED)


class LocalCaps(CapsBackend):
    name = "local"

    def __init__(self, ttl: float = DEFAULT_TTL, clock: Callable[[], float] = time.monotonic):
        if ttl <= 0:
            raise ValueError("ttl must be > 0")
        self.ttl = float(ttl)
        self._clock = clock
        self._lock = threading.Lock()
        self._calls: dict[str, _Lease] = {}
        self._slots: dict[str, set[str]] = {}
        # (expires, uuid) of every lease ever set; stale entries are skipped when popped, so
        # a refresh is O(log n) and expiry never scans a whole scope.
        self._expiry: list[tuple[float, str]] = []
        self._cps: dict[str, _CpsLog] = {}
        metrics.CAPS_BACKEND_UP.labels(backend=self.name).set(1)

    # --- internals (lock held) ------------------------------------------------------------
    def _now(self, now: float | None = None) -> float:
        return self._clock() if now is None else now

    def _expire(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            expires, uuid = heapq.heappop(self._expiry)
            lease = self._calls.get(uuid)
            if lease is not None and lease.expires <= now:
                self._drop(uuid)

    def _drop(self, uuid: str) -> _Lease | None:
        lease = self._calls.pop(uuid, None)
        if lease is not None:
            for key in lease.scopes:
                self._unslot(key, uuid)
        return lease

    def _unslot(self, key: str, uuid: str) -> None:
        members = self._slots.get(key)
        if members is not None:
            members.discard(uuid)
            if not members:
                del self._slots[key]

    def _extend(self, uuid: str, lease: _Lease, now: float) -> None:
        lease.expires = now + self.ttl
        heapq.heappush(self._expiry, (lease.expires, uuid))
        if len(self._expiry) > 4 * len(self._calls) + 1024:
            # Released and refreshed leases leave stale entries behind; keep the heap
            # proportional to the live calls rather than to the call rate x TTL.
            self._expiry = [(l.expires, u) for u, l in self._calls.items()]
            heapq.heapify(self._expiry)

    def _cps_window(self, c: CpsScope, now: float) -> _CpsLog:
        log = self._cps.get(c.key)
        if log is None:
            log = self._cps[c.key] = _CpsLog()
        while log.times and log.times[0][0] <= now - c.window:
            log.members.discard(log.times.popleft()[1])
        return log

    def _apply(self, uuid: str, add: Sequence[Scope], remove: Sequence[Scope],
               cps: Sequence[CpsScope], now: float, mode: str) -> Admission:
        """The one check-then-write path behind acquire, move and register (see base)."""
        add, cps = dedupe(add), dedupe(cps)
        self._expire(now)
        lease = self._calls.get(uuid)
        held = lease is not None
        if mode == "move" and not held:
            return Admission(False, None, NOT_HELD)
        has = lease.scopes if held else set()
        removing = {s.key for s in remove} - {s.key for s in add if s.key in has}
        adding = [s for s in add if s.key not in has]
        check = mode in ("acquire", "move")
        if check:
            for s in adding:
                if s.limit is not None and len(self._slots.get(s.key, ())) >= s.limit:
                    return self._refuse(s, CAP_REACHED)
        charge = []
        if check and not (mode == "acquire" and held):
            for c in cps:
                log = self._cps_window(c, now)
                if uuid in log.members:
                    continue  # this call was already counted in the window
                if len(log.times) >= c.allowance:
                    return self._refuse(c, CPS_REACHED)
                charge.append(log)
        # Every check passed: write.
        if lease is None:
            lease = self._calls[uuid] = _Lease(acquired=now)
        if mode == "replace":
            removing |= lease.scopes - {s.key for s in add}
        for key in removing & lease.scopes:
            lease.scopes.discard(key)
            self._unslot(key, uuid)
        for s in adding:
            lease.scopes.add(s.key)
            self._slots.setdefault(s.key, set()).add(uuid)
        for log in charge:
            log.times.append((now, uuid))
            log.members.add(uuid)
        self._extend(uuid, lease, now)
        return Admission(True, None, ALREADY_HELD if held and not adding else ADMITTED)

    @staticmethod
    def _refuse(scope, reason: str) -> Admission:
        # switchd_cap_rejections_total is counted by the caller (policing.CapsGate), where
        # every decision, including PolicyCaps's, passes exactly once.
        return Admission(False, scope, reason)

    # --- acquire's fast path --------------------------------------------------------------
    def _acquire_new(self, uuid: str, entries: tuple, rates: tuple, now: float) -> Admission:
        """_apply(uuid, scopes, (), cps, now, 'acquire') for a call that holds no lease
        (lock held, expiry done): the same checks in the same order, the same writes."""
        slots = self._slots
        for key, limit, s in entries:
            if limit is not None and len(slots.get(key, ())) >= limit:
                return self._refuse(s, CAP_REACHED)
        charge = []
        for key, window, allowance, c in rates:
            log = self._cps.get(key)
            if log is None:
                log = self._cps[key] = _CpsLog()
            times = log.times
            while times and times[0][0] <= now - window:
                log.members.discard(times.popleft()[1])
            if uuid in log.members:
                continue
            if len(times) >= allowance:
                return self._refuse(c, CPS_REACHED)
            charge.append(log)
        lease = self._calls[uuid] = _Lease(acquired=now)
        held = lease.scopes
        for key, _, _ in entries:
            held.add(key)
            members = slots.get(key)
            if members is None:
                slots[key] = {uuid}
            else:
                members.add(uuid)
        for log in charge:
            log.times.append((now, uuid))
            log.members.add(uuid)
        self._extend(uuid, lease, now)
        return _ADMITTED

    # --- the contract ---------------------------------------------------------------------
    def acquire(self, call_uuid, scopes, cps=(), now=None) -> Admission:
        if type(scopes) is tuple and type(cps) is tuple:
            entries = tuple((s.key, s.limit, s) for s in dedupe(scopes))
            rates = tuple((c.key, c.window, c.allowance, c) for c in dedupe(cps))
            with self._lock:
                now = self._now(now)
                expiry = self._expiry
                if expiry and expiry[0][0] <= now:
                    self._expire(now)
                if call_uuid not in self._calls:
                    return self._acquire_new(call_uuid, entries, rates, now)
                return self._apply(call_uuid, scopes, (), cps, now, "acquire")
        with self._lock:
            return self._apply(call_uuid, scopes, (), cps, self._now(now), "acquire")

    def register(self, call_uuid, scopes, *, replace=False) -> None:
        with self._lock:
            self._apply(call_uuid, scopes, (), (), self._now(),
                        "replace" if replace else "register")

    def move(self, call_uuid, add=(), remove=(), cps=()) -> Admission:
        with self._lock:
            return self._apply(call_uuid, add, remove, cps, self._now(), "move")

    def release(self, call_uuid) -> bool:
        with self._lock:
            self._expire(self._now())
            return self._drop(call_uuid) is not None

    def rename(self, old_uuid, new_uuid) -> bool:
        with self._lock:
            self._expire(self._now())
            if old_uuid == new_uuid:
                return old_uuid in self._calls
            lease = self._drop(old_uuid)
            if lease is None:
                return False
            if new_uuid not in self._calls:
                self._calls[new_uuid] = lease
                for key in lease.scopes:
                    self._slots.setdefault(key, set()).add(new_uuid)
                heapq.heappush(self._expiry, (lease.expires, new_uuid))
            return True

    def refresh(self, call_uuids: Iterable[str]) -> list[str]:
        lost = []
        with self._lock:
            now = self._now()
            self._expire(now)
            for uuid in call_uuids:
                lease = self._calls.get(uuid)
                if lease is None:
                    lost.append(uuid)
                else:
                    self._extend(uuid, lease, now)
        return lost

    def reconcile(self, live_call_uuids, grace=5.0) -> list[str]:
        live = set(live_call_uuids)
        with self._lock:
            now = self._now()
            self._expire(now)
            stale = [u for u, lease in self._calls.items()
                     if u not in live and lease.acquired <= now - grace]
            for uuid in stale:
                self._drop(uuid)
        return stale

    def count(self, scope: Scope) -> int:
        with self._lock:
            self._expire(self._now())
            return len(self._slots.get(scope.key, ()))

    def calls(self) -> list[str]:
        with self._lock:
            self._expire(self._now())
            return list(self._calls)

    def held(self, call_uuid):
        with self._lock:
            self._expire(self._now())
            lease = self._calls.get(call_uuid)
            if lease is None:
                return None
            return frozenset(tuple(k.split(":", 1)) for k in lease.scopes)

    def healthy(self) -> bool:
        return True
