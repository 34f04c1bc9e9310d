"""Concurrency and calls-per-second caps (DESIGN.md §4, §5; docs/caps.md).

`build_caps()` is what the daemon calls: with a Redis URL, cluster-wide caps in Redis behind the
configured outage policy; without one, in-process caps (single node only).
"""
from __future__ import annotations

import logging

from switchd.adapters.caps.base import (DEFAULT_TTL, Admission, CapsBackend, CapsError, CapsUnavailable,
                               CpsScope, Scope)
from switchd.adapters.caps.failover import POLICIES, PolicyCaps
from switchd.adapters.caps.local import LocalCaps

__all__ = ["Admission", "CapsBackend", "CapsError", "CapsUnavailable", "CpsScope", "Scope",
           "LocalCaps", "RedisCaps", "PolicyCaps", "POLICIES", "DEFAULT_TTL", "build_caps"]

log = logging.getLogger("switchd.adapters.caps")


def build_caps(redis_url: str | None, *, policy: str = "fail_closed", ttl: float = DEFAULT_TTL,
               node_id: str | None = None, fallback_share: float = 1.0,
               timeout: float = 0.25) -> CapsBackend:
    if not redis_url:
        log.warning("no Redis URL: caps are kept in this process (single node only)")
        return LocalCaps(ttl=ttl)
    from switchd.adapters.caps.redis_backend import RedisCaps
    primary = RedisCaps.from_url(redis_url, ttl=ttl, node_id=node_id, timeout=timeout)
    return PolicyCaps(primary, LocalCaps(ttl=ttl), policy, fallback_share=fallback_share,
                      probe_interval=max(1.0, ttl / 3))


def __getattr__(name):
    # RedisCaps imports redis-py; resolved lazily so the in-process default does not need it.
    if name == "RedisCaps":
        from switchd.adapters.caps.redis_backend import RedisCaps
        return RedisCaps
    raise AttributeError(name)
