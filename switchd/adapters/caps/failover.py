"""What caps do when Redis is unreachable: a stated policy, never silently unlimited (§5).

PolicyCaps wraps the cluster backend (Redis) and an in-process LocalCaps:

- While Redis answers, every decision is Redis's; each slot it grants is mirrored, unchecked,
  into the local backend, so this node always knows its own calls and their scopes.
- The first failed Redis operation switches to *down*: one warning in the log,
  `switchd_caps_backend_up{backend="redis"}` 0, and from then on Redis is not tried on the
  call path (no per-call timeouts during an outage). The policy decides new calls:
  `fail_closed` refuses them (scope kind `backend`, reason `caps backend unavailable`);
  `fail_open` admits them against the local caps, limits scaled by `fallback_share`
  (set 1/N with N daemons so the nodes together stay within the cluster limit), and counting
  this node's calls admitted before the outage. `switchd_caps_fail_open` is 1 meanwhile.
- `probe()` (called by `refresh`, at most every `probe_interval`) pings Redis; once it answers,
  releases made meanwhile are applied, every local call is registered into Redis with its
  exact scopes and a fresh lease, and only then does Redis decide again. Registration is
  unchecked because those calls are up: after a fail-open outage a scope can sit above its
  limit until enough of them end; new calls are refused until then (documented trade-off).
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable

from switchd import metrics
from switchd.adapters.caps.base import (ALREADY_HELD, BACKEND_KIND, UNAVAILABLE, Admission, CapsBackend,
                               CapsUnavailable, CpsScope, Scope)
from switchd.adapters.caps.local import LocalCaps

log = logging.getLogger("switchd.adapters.caps")

POLICIES = ("fail_closed", "fail_open")
_MAX_PENDING = 100_000  # releases remembered during an outage; beyond, leases expire by TTL


class PolicyCaps(CapsBackend):
    name = "policy"

    def __init__(self, primary: CapsBackend, fallback: LocalCaps | None = None,
                 policy: str = "fail_closed", *, fallback_share: float = 1.0,
                 probe_interval: float = 5.0, clock: Callable[[], float] = time.monotonic):
        if policy not in POLICIES:
            raise ValueError(f"caps policy must be one of {POLICIES}, not {policy!r}")
        if not 0 < fallback_share <= 1:
            raise ValueError("fallback_share must be in (0, 1]")
        self.primary = primary
        self.fallback = fallback or LocalCaps(ttl=primary.ttl)
        self.ttl = primary.ttl
        self.policy = policy
        self.fallback_share = fallback_share
        self.probe_interval = probe_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._up = True
        self._since = clock()
        self._last_error = ""
        self._last_probe = float("-inf")
        self._pending: set[str] = set()   # released while down: release in Redis on recovery
        self._generation = 0              # bumped by every local change; resync retries on it
        self._set_gauges()

    # --- state ----------------------------------------------------------------------------
    def _set_gauges(self) -> None:
        metrics.CAPS_BACKEND_UP.labels(backend=self.primary.name).set(1 if self._up else 0)
        metrics.CAPS_FAIL_OPEN.set(0 if self._up or self.policy != "fail_open" else 1)

    def _went_down(self, exc: Exception) -> None:
        with self._lock:
            self._last_error = str(exc)
            if not self._up:
                return
            self._up, self._since = False, self._clock()
            self._last_probe = self._since
        self._set_gauges()
        log.warning("caps backend %s unreachable (%s); policy %s: %s", self.primary.name, exc,
                    self.policy, "admitting against local caps" if self.policy == "fail_open"
                    else "refusing new calls")

    def status(self) -> dict:
        """For /readyz and `switchd calls`: what decides admissions right now, and since when."""
        with self._lock:
            mode = self.primary.name if self._up else (
                "local" if self.policy == "fail_open" else "refusing")
            return {"backend": self.primary.name, "up": self._up, "policy": self.policy,
                    "mode": mode, "since_s": round(self._clock() - self._since, 3),
                    "last_error": self._last_error, "pending_releases": len(self._pending),
                    "local_calls": len(self.fallback.calls())}

    def healthy(self) -> bool:
        return self._up

    def probe(self) -> bool:
        """Ping the primary when down; on success resynchronise and switch back."""
        self._last_probe = self._clock()
        if self._up:
            return True
        return self.primary.healthy() and self._resync()

    def _resync(self) -> bool:
        for _ in range(5):
            with self._lock:
                generation = self._generation
                pending = set(self._pending)
            local = {u: self.fallback.held(u) for u in self.fallback.calls()}
            try:
                for uuid in pending - local.keys():
                    self.primary.release(uuid)
                for uuid, held in local.items():
                    if held is not None:
                        self.primary.register(uuid, [Scope(k, n) for k, n in held], replace=True)
            except CapsUnavailable as exc:
                self._last_error = str(exc)
                return False
            with self._lock:
                if self._generation == generation:  # nothing changed locally meanwhile
                    self._pending -= pending
                    self._up, self._since = True, self._clock()
                    break
        else:
            return False  # calls kept changing; the next probe tries again
        self._set_gauges()
        log.warning("caps backend %s reachable again; %d local calls registered, %d releases "
                    "applied", self.primary.name, len(local), len(pending))
        return True

    def _local_change(self) -> None:
        with self._lock:
            self._generation += 1

    def _scaled(self, scopes):
        share = self.fallback_share
        if share == 1:
            return list(scopes)
        out = []
        for s in scopes:
            if isinstance(s, CpsScope):
                out.append(CpsScope(s.kind, s.name, float(s.per_second) * share))
            elif s.limit is not None:
                out.append(Scope(s.kind, s.name, math.floor(s.limit * share)))
            else:
                out.append(s)
        return out

    def _mirror(self, call_uuid, scopes, replace=False) -> None:
        self.fallback.register(call_uuid, scopes, replace=replace)
        self._local_change()

    # --- the contract ---------------------------------------------------------------------
    def acquire(self, call_uuid, scopes, cps=(), now=None) -> Admission:
        if self._up:
            try:
                admission = self.primary.acquire(call_uuid, scopes, cps, now)
            except CapsUnavailable as exc:
                self._went_down(exc)
            else:
                if admission.admitted:
                    self._mirror(call_uuid, scopes)
                return admission
        if self.policy == "fail_open":
            admission = self.fallback.acquire(call_uuid, self._scaled(scopes),
                                              self._scaled(cps))
            self._local_change()
            return admission
        held = self.fallback.held(call_uuid)
        if held is not None and {(s.kind, s.name) for s in scopes} <= held:
            return Admission(True, None, ALREADY_HELD)
        return Admission(False, Scope(BACKEND_KIND, self.primary.name, 0), UNAVAILABLE)

    def register(self, call_uuid, scopes, *, replace=False) -> None:
        if self._up:
            try:
                self.primary.register(call_uuid, scopes, replace=replace)
            except CapsUnavailable as exc:
                self._went_down(exc)
        self._mirror(call_uuid, scopes, replace)

    def move(self, call_uuid, add=(), remove=(), cps=()) -> Admission:
        if self._up:
            try:
                admission = self.primary.move(call_uuid, add, remove, cps)
            except CapsUnavailable as exc:
                self._went_down(exc)
            else:
                if admission.admitted:
                    held = self.fallback.held(call_uuid) or frozenset()
                    gone = {(s.kind, s.name) for s in remove} - {(s.kind, s.name) for s in add}
                    now_held = (held - gone) | {(s.kind, s.name) for s in add}
                    self._mirror(call_uuid, [Scope(k, n) for k, n in now_held], replace=True)
                return admission
        if self.policy == "fail_open":
            admission = self.fallback.move(call_uuid, self._scaled(add), remove,
                                           self._scaled(cps))
            self._local_change()
            return admission
        return Admission(False, Scope(BACKEND_KIND, self.primary.name, 0), UNAVAILABLE)

    def _remember_release(self, call_uuid: str) -> None:
        with self._lock:
            if len(self._pending) < _MAX_PENDING:
                self._pending.add(call_uuid)
            self._generation += 1

    def release(self, call_uuid) -> bool:
        released = False
        if self._up:
            try:
                released = self.primary.release(call_uuid)
            except CapsUnavailable as exc:
                self._went_down(exc)
        if not self._up:
            self._remember_release(call_uuid)
        released_here = self.fallback.release(call_uuid)
        return released or released_here

    def rename(self, old_uuid, new_uuid) -> bool:
        renamed = False
        if self._up:
            try:
                renamed = self.primary.rename(old_uuid, new_uuid)
            except CapsUnavailable as exc:
                self._went_down(exc)
        if not self._up:
            self._remember_release(old_uuid)  # resync registers the new uuid
        renamed_here = self.fallback.rename(old_uuid, new_uuid)
        return renamed or renamed_here

    def refresh(self, call_uuids: Iterable[str]) -> list[str]:
        uuids = list(call_uuids)
        if not self._up and self._clock() - self._last_probe >= self.probe_interval:
            self.probe()
        lost_here = self.fallback.refresh(uuids)
        if not self._up:
            return lost_here
        try:
            lost = self.primary.refresh(uuids)
            # Leases Redis lost (e.g. it restarted empty) for calls this node knows: re-count
            # them, they are up whatever Redis remembers.
            known = set(uuids) - set(lost_here)
            for uuid in lost:
                if uuid in known:
                    held = self.fallback.held(uuid) or frozenset()
                    self.primary.register(uuid, [Scope(k, n) for k, n in held], replace=True)
        except CapsUnavailable as exc:
            self._went_down(exc)
            return lost_here
        return [u for u in lost if u not in known]

    def reconcile(self, live_call_uuids, grace=5.0) -> list[str]:
        live = set(live_call_uuids)
        released = set(self.fallback.reconcile(live, grace))
        if self._up:
            try:
                released.update(self.primary.reconcile(live, grace))
            except CapsUnavailable as exc:
                self._went_down(exc)
        if not self._up:
            for uuid in released:
                self._remember_release(uuid)
        return sorted(released)

    def _read(self, method: str, *args):
        if self._up:
            try:
                return getattr(self.primary, method)(*args)
            except CapsUnavailable as exc:
                self._went_down(exc)
        return getattr(self.fallback, method)(*args)

    def count(self, scope: Scope) -> int:
        return self._read("count", scope)

    def calls(self) -> list[str]:
        return self._read("calls")

    def held(self, call_uuid):
        return self._read("held", call_uuid)

    def close(self) -> None:
        self.primary.close()
