"""Caps as the daemon uses them: which scopes a call takes, and when slots move or free.

Admission happens on the HTTP greenlet (the dialplan lookup): it must be answered before
the call proceeds. Everything driven by ESL events — failover to another carrier, release at
hangup, renames — goes through one worker greenlet and its queue, so the event greenlet
never waits on Redis (STYLE.md §6), and operations on one call keep their order.
"""
from __future__ import annotations

import logging
import socket
from typing import Callable

import gevent
from switchd.lossless_queue import LosslessQueue

from switchd import metrics
from switchd.adapters.caps.base import Admission, CapsBackend, CpsScope, Scope
from switchd.adapters.caps.local import LocalCaps
from switchd.config import Config

log = logging.getLogger(__name__)


def build_caps_backend(config: Config) -> CapsBackend:
    ttl = config["caps.lease_seconds"]
    url = config["redis.url"]
    if not url:
        log.info("caps: in-process (single node); set SWITCHD_REDIS_URL for cluster-wide caps")
        metrics.CAPS_BACKEND_UP.labels("local").set(1)
        return LocalCaps(ttl=ttl)
    from switchd.adapters.caps.failover import PolicyCaps
    from switchd.adapters.caps.redis_backend import RedisCaps
    return PolicyCaps(primary=RedisCaps.from_url(url, ttl=ttl, node_id=node_id(config)),
                      fallback=LocalCaps(ttl=ttl), policy=config["redis.on_failure"],
                      fallback_share=config["caps.fallback_share"])


def node_id(config: Config) -> str:
    """The owner of this daemon's leases: the host *and* the switch it serves.

    A daemon reconciles (releases) every lease of its node that its FreeSWITCH no longer
    reports, so two daemons must never share a node id: with the bare host name, two daemons
    on one host (one per FreeSWITCH) released each other's live calls on every ESL reconnect.
    Still stable across restarts, so a restarted daemon reconciles its previous run's calls."""
    return f"{socket.gethostname()}/{config['esl.host']}:{config['esl.port']}"


class CapsGate:
    def __init__(self, backend: CapsBackend, config: Config, queue_max: int = 100_000):
        self.backend = backend
        self.global_limit = config["caps.global_max_calls"] or None
        # The slots of every call this gate counted (admitted or adopted): the carrier slot
        # a failover moves, and what a call whose lease ran out while it was still up is
        # counted again with. Calls it never counted (refused at the lookup, not ours to
        # route) have no lease to lose.
        self.slots_of_call: dict[str, tuple[Scope, ...]] = {}
        self.on_refused_leg: Callable[[str, str], None] | None = None
        self._scopes_cache: dict[tuple, tuple] = {}
        # Releases, renames and adoptions are never dropped (LosslessQueue): a lost
        # release held a slot until its lease expired.
        self._queue = LosslessQueue(queue_max)
        self._worker = gevent.spawn(self._work)

    def describe(self) -> str:
        return getattr(self.backend, "name", type(self.backend).__name__)

    # --- scopes ------------------------------------------------------------------------------
    def scopes(self, tenant, carrier=None, campaign=None) -> tuple[list[Scope], list[CpsScope]]:
        scopes = [Scope("global", "all", self.global_limit)]
        cps = []
        if tenant is not None:
            scopes.append(Scope("tenant", tenant.name, tenant.max_concurrent))
            if tenant.cps_limit:
                cps.append(CpsScope("tenant", tenant.name, tenant.cps_limit))
        if carrier is not None:
            scopes.append(_carrier_scope(carrier))
            if carrier.cps_limit:
                cps.append(CpsScope("carrier", carrier.name, carrier.cps_limit))
        if campaign is not None:
            scopes.append(Scope("campaign", campaign.name, campaign.max_concurrent))
            if campaign.cps_limit:
                cps.append(CpsScope("campaign", campaign.name, campaign.cps_limit))
        return scopes, cps

    # --- on the routing path (synchronous) -----------------------------------------------------
    def admit(self, call_uuid: str, tenant, carrier=None, campaign=None, now=None) -> Admission:
        # The scopes of a call depend only on these values, and Scope/CpsScope objects are
        # frozen: build them once per combination rather than on every routing decision.
        key = (self.global_limit,
               None if tenant is None else (tenant.name, tenant.max_concurrent, tenant.cps_limit),
               None if carrier is None else (carrier.name, carrier.max_channels, carrier.cps_limit),
               None if campaign is None else (campaign.name, campaign.max_concurrent,
                                              campaign.cps_limit))
        try:
            built = self._scopes_cache.get(key)
        except TypeError:                     # an unhashable limit: no caching
            built = key = None
        if built is None:
            built = self.scopes(tenant, carrier, campaign)
            built = (tuple(built[0]), tuple(built[1]))
            if key is not None:
                if len(self._scopes_cache) >= 4096:
                    self._scopes_cache.clear()
                self._scopes_cache[key] = built
        admission = self.backend.acquire(call_uuid, built[0], built[1])
        if admission.admitted:
            self.slots_of_call[call_uuid] = built[0]
        else:
            kind = admission.refused_scope.kind if admission.refused_scope else "backend"
            metrics.CAP_REJECTIONS.labels(kind).inc()
        return admission

    def move_to_carrier(self, call_uuid: str, carrier) -> Admission:
        """A failover continuation, on the routing path: move the call's carrier slot to
        `carrier` before FreeSWITCH dials it, so a full carrier is never dialled. (Moved only
        when the leg starts, the leg can answer before the kill reaches it: on FreeSWITCH a
        carrier answering at once was up for 20 ms beyond its cap.) Admitted unchanged when
        this daemon knows of no carrier slot for the call or it already holds this one."""
        # A failover is a new INVITE to that carrier: its calls-per-second count it too.
        cps = ((CpsScope("carrier", carrier.name, carrier.cps_limit),) if carrier.cps_limit
               else ())
        admission = self._swap(call_uuid, carrier, cps)
        if admission is None:
            return Admission(True)
        if not admission.admitted and admission.refused_scope is not None:
            metrics.CAP_REJECTIONS.labels(admission.refused_scope.kind).inc()
        return admission

    def carrier_of(self, call_uuid: str) -> str | None:
        """The carrier whose slot the call holds now; None: none, or not a call counted here."""
        for scope in self.slots_of_call.get(call_uuid, ()):
            if scope.kind == "carrier":
                return scope.name
        return None

    def release_now(self, call_uuid: str) -> None:
        self.slots_of_call.pop(call_uuid, None)
        self.backend.release(call_uuid)

    # --- from ESL events (queued) ------------------------------------------------------------
    def leg_started(self, call_uuid: str, carrier, leg_uuid: str) -> None:
        """A carrier leg was created. If it is another carrier than the slot the call holds
        (failover), move the slot; if that carrier is full, the leg must not proceed."""
        self._enqueue(self._leg_started, call_uuid, carrier, leg_uuid)

    def release(self, call_uuid: str) -> None:
        self._enqueue(self._release, call_uuid)

    def rename(self, old: str, new: str) -> None:
        self._enqueue(self._rename, old, new)

    def adopt(self, call_uuid: str, tenant, carrier) -> None:
        self._enqueue(self._adopt, call_uuid, tenant, carrier)

    # --- periodic (own greenlets) --------------------------------------------------------------
    def refresh(self, call_uuids: list[str]) -> None:
        """Extend the leases of the live calls this gate counted. A lease that ran out
        anyway (the daemon stalled beyond caps.lease_seconds, or the backend lost it) is
        taken again with the slots the call held, over the limits if need be: the call is
        up, so it counts."""
        counted = self.slots_of_call
        call_uuids = [u for u in call_uuids if u in counted]
        # A counted call missing from the live calls (a lookup whose channel the registry
        # has not seen yet, or a call whose end this daemon never saw) keeps its record
        # while its lease lives, and is forgotten once the lease has run out.
        for call_uuid in counted.keys() - set(call_uuids):
            if self.backend.held(call_uuid) is None:
                self.slots_of_call.pop(call_uuid, None)
        lost = self.backend.refresh(call_uuids)
        recounted = 0
        for call_uuid in lost:
            slots = counted.get(call_uuid)      # None: released while the refresh ran
            if slots is not None:
                self.backend.register(call_uuid, slots, replace=True)
                recounted += 1
        if recounted:
            log.warning("%d live call(s) had lost their caps lease; they are counted again",
                        recounted)
        if not call_uuids:
            # With no call to refresh the backend is not touched at all, so an idle node would
            # learn of a Redis outage only from the next call it refuses (and /readyz would
            # stay 200 meanwhile). One cheap read makes the backend notice, either way.
            self.backend.count(Scope("global", "all"))

    def reconcile(self, live_call_uuids: set[str]) -> list[str]:
        released = self.backend.reconcile(live_call_uuids)
        for call_uuid in released:
            self.slots_of_call.pop(call_uuid, None)
        return released

    def status(self) -> dict:
        status = getattr(self.backend, "status", None)
        if callable(status):
            return status()
        return {"backend": self.describe(), "admitting": self.backend.healthy()}

    def pending(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        self._worker.kill(timeout=2)
        self.backend.close()

    # --- worker ------------------------------------------------------------------------------------
    def _enqueue(self, func, *args) -> None:
        keep = func in (self._release, self._rename, self._adopt)
        if self._queue.put((func, args), keep=keep) == "dropped":
            # Only a failover leg's slot move is ever dropped; its lease still expires.
            metrics.REDIS_ERRORS.labels("queue_full").inc()
            log.error("caps work queue full; dropping %s", func.__name__)

    def _work(self) -> None:
        while True:
            func, args = self._queue.get()
            try:
                func(*args)
            except Exception:   # greenlet boundary: one failed operation never stops the worker
                log.exception("caps operation %s failed", func.__name__)

    def _swap(self, call_uuid: str, carrier, cps: tuple = ()) -> Admission | None:
        """Move the call's carrier slot to `carrier`; None when this daemon knows of no
        carrier slot for the call or it already holds this one."""
        held = self.carrier_of(call_uuid)
        if held is None or held == carrier.name:
            return None
        admission = self.backend.swap_carrier(call_uuid, Scope("carrier", held),
                                              _carrier_scope(carrier), cps)
        slots = self.slots_of_call.get(call_uuid)   # None: released while the swap ran
        if admission.admitted and slots is not None:
            self.slots_of_call[call_uuid] = tuple(
                _carrier_scope(carrier) if s.kind == "carrier" else s for s in slots)
        return admission

    def _leg_started(self, call_uuid, carrier, leg_uuid) -> None:
        admission = self._swap(call_uuid, carrier)
        if admission is None or admission.admitted or admission.reason == "call not held":
            return
        metrics.CAP_REJECTIONS.labels("carrier").inc()
        log.warning("failover leg to %s refused: %s", carrier.name, admission.reason,
                    extra={"call_uuid": call_uuid, "carrier": carrier.name})
        if self.on_refused_leg is not None:
            self.on_refused_leg(call_uuid, leg_uuid)

    def _release(self, call_uuid) -> None:
        self.slots_of_call.pop(call_uuid, None)
        self.backend.release(call_uuid)

    def _rename(self, old, new) -> None:
        slots = self.slots_of_call.pop(old, None)
        if slots is not None:         # as the backend: a new UUID that holds slots keeps them
            self.slots_of_call.setdefault(new, slots)
        self.backend.rename(old, new)

    def _adopt(self, call_uuid, tenant, carrier) -> None:
        scopes, _ = self.scopes(tenant, carrier)
        self.backend.register(call_uuid, scopes)
        self.slots_of_call[call_uuid] = tuple(scopes)


def _carrier_scope(carrier) -> Scope:
    return Scope("carrier", carrier.name, carrier.max_channels)
