"""Cluster-wide caps in Redis: every check-and-write is one Lua script, so it is atomic.

Keys (all under one hash tag, `{switchd}` by default, so they share a Redis Cluster slot and a
script may touch any of them):

    <p>:slots:<kind>:<name>   ZSET  call uuid -> lease expiry          (one per scope)
    <p>:cps:<kind>:<name>     ZSET  call uuid -> admission time        (sliding-window log)
    <p>:call:<uuid>           HASH  exp, acq, node, and '@<slots key>' per scope held
    <p>:node:<node id>        ZSET  call uuid -> lease expiry          (this node's calls)

Clock: by default the scripts read Redis `TIME`, so every daemon sees one clock and skew
between hosts cannot shorten or stretch a lease. An injected `clock` (tests, benchmarks) is
passed to the scripts instead; all daemons sharing a Redis must then use the same clock.

Scripts declare the keys the caller names (call hashes, the scopes to add or remove); the
scope keys a call already holds are read from its hash inside the script. That is legal on a
cluster because every key carries the same hash tag (one slot). Scripts run by EVALSHA;
redis-py's Script object reloads them on NOSCRIPT (after a restart or SCRIPT FLUSH).
"""
from __future__ import annotations

import socket
from collections.abc import Callable, Iterable

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from switchd import metrics
from switchd.adapters.caps.base import (DEFAULT_TTL, Admission, CapsBackend, CapsUnavailable, Scope,
                               dedupe)

_COMMON = r"""
local PREFIX = ARGV[1]
local function clock()
  if ARGV[2] ~= '' then return tonumber(ARGV[2]) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function fmt(x) return string.format('%.6f', x) end
local function nodekey(node) return PREFIX .. ':node:' .. node end
local function scopes_of(ck)
  local out = {}
  for _, f in ipairs(redis.call('HKEYS', ck)) do
    if string.sub(f, 1, 1) == '@' then out[#out + 1] = string.sub(f, 2) end
  end
  return out
end
local function drop(ck, call)
  for _, k in ipairs(scopes_of(ck)) do redis.call('ZREM', k, call) end
  local node = redis.call('HGET', ck, 'node')
  if node then redis.call('ZREM', nodekey(node), call) end
  redis.call('DEL', ck)
end
-- A lease is live while exp > now; a passed one is cleaned up on the spot.
local function live(ck, call, now)
  local exp = redis.call('HGET', ck, 'exp')
  if not exp then return false end
  if tonumber(exp) > now then return true end
  drop(ck, call)
  return false
end
-- Move every score of the call to the new expiry and make `node` its owner.
local function extend(ck, call, exp, ttl, node)
  local e = fmt(exp)
  for _, k in ipairs(scopes_of(ck)) do redis.call('ZADD', k, e, call) end
  local old = redis.call('HGET', ck, 'node')
  if old and old ~= node then redis.call('ZREM', nodekey(old), call) end
  redis.call('ZADD', nodekey(node), e, call)
  redis.call('HSET', ck, 'exp', e, 'node', node)
  -- Garbage collection only: a hash outliving its lease is ignored by live().
  redis.call('PEXPIRE', ck, math.ceil((2 * ttl + 60) * 1000))
end
"""

# KEYS: call hash, n_add slot keys, n_cps cps keys, n_rem slot keys
# ARGV: prefix, now, ttl, node, call, mode, n_add, n_cps, n_rem, n_add limits (-1 = none),
#       then (window, allowance) per cps scope
_ADMIT = _COMMON + r"""
local now = clock()
local ttl, node, call, mode = tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6]
local nadd, ncps, nrem = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local ck = KEYS[1]
local held = live(ck, call, now)
if mode == 'move' and not held then return {0, 0, 'call not held'} end
local check = (mode == 'acquire' or mode == 'move')
local wanted, removing, adding = {}, {}, {}
for i = 1, nrem do removing[KEYS[1 + nadd + ncps + i]] = true end
-- 1. Check every scope and rate before writing anything: all or nothing.
for i = 1, nadd do
  local k = KEYS[1 + i]
  wanted[k] = true
  redis.call('ZREMRANGEBYSCORE', k, '-inf', fmt(now))
  if held and redis.call('HEXISTS', ck, '@' .. k) == 1 then
    removing[k] = nil
  else
    adding[#adding + 1] = k
    local limit = tonumber(ARGV[9 + i])
    if check and limit >= 0 and redis.call('ZCARD', k) >= limit then
      return {0, i, 'cap reached'}
    end
  end
end
local charge = {}
if check and not (mode == 'acquire' and held) then
  for j = 1, ncps do
    local k = KEYS[1 + nadd + j]
    local window = tonumber(ARGV[9 + nadd + 2 * j - 1])
    local allowance = tonumber(ARGV[9 + nadd + 2 * j])
    redis.call('ZREMRANGEBYSCORE', k, '-inf', fmt(now - window))
    if not redis.call('ZSCORE', k, call) then
      if redis.call('ZCARD', k) >= allowance then return {0, nadd + j, 'cps limit reached'} end
      charge[#charge + 1] = {k, window}
    end
  end
end
-- 2. Write.
if mode == 'replace' and held then
  for _, k in ipairs(scopes_of(ck)) do
    if not wanted[k] then removing[k] = true end
  end
end
for k, _ in pairs(removing) do
  redis.call('ZREM', k, call)
  redis.call('HDEL', ck, '@' .. k)
end
for _, k in ipairs(adding) do redis.call('HSET', ck, '@' .. k, '1') end
if not held then redis.call('HSET', ck, 'acq', fmt(now)) end
extend(ck, call, now + ttl, ttl, node)
for _, c in ipairs(charge) do
  redis.call('ZADD', c[1], fmt(now), call)
  redis.call('PEXPIRE', c[1], math.ceil((c[2] + 60) * 1000))
end
if held and #adding == 0 then return {1, 0, 'already held'} end
return {1, 0, 'admitted'}
"""

# KEYS: call hash. ARGV: prefix, now, call
_RELEASE = _COMMON + r"""
if live(KEYS[1], ARGV[3], clock()) then drop(KEYS[1], ARGV[3]) return 1 end
return 0
"""

# KEYS: call hashes. ARGV: prefix, now, ttl, node, uuids...  -> uuids without a live lease
_REFRESH = _COMMON + r"""
local now, ttl, node = clock(), tonumber(ARGV[3]), ARGV[4]
redis.call('ZREMRANGEBYSCORE', nodekey(node), '-inf', fmt(now))
local lost = {}
for i, ck in ipairs(KEYS) do
  local call = ARGV[4 + i]
  if live(ck, call, now) then extend(ck, call, now + ttl, ttl, node)
  else lost[#lost + 1] = call end
end
return lost
"""

# KEYS: old hash, new hash. ARGV: prefix, now, old, new
_RENAME = _COMMON + r"""
local now, old, new = clock(), ARGV[3], ARGV[4]
if not live(KEYS[1], old, now) then return 0 end
if live(KEYS[2], new, now) then drop(KEYS[1], old) return 1 end
local exp = redis.call('HGET', KEYS[1], 'exp')
for _, k in ipairs(scopes_of(KEYS[1])) do
  redis.call('ZREM', k, old)
  redis.call('ZADD', k, exp, new)
end
local nk = nodekey(redis.call('HGET', KEYS[1], 'node'))
redis.call('ZREM', nk, old)
redis.call('ZADD', nk, exp, new)
redis.call('RENAME', KEYS[1], KEYS[2])
return 1
"""

# KEYS: candidate call hashes. ARGV: prefix, now, node, grace, uuids...  -> released uuids
_RECONCILE = _COMMON + r"""
local now, node, grace = clock(), ARGV[3], tonumber(ARGV[4])
local out = {}
for i, ck in ipairs(KEYS) do
  local call = ARGV[4 + i]
  if live(ck, call, now) and redis.call('HGET', ck, 'node') == node
     and tonumber(redis.call('HGET', ck, 'acq')) <= now - grace then
    drop(ck, call)
    out[#out + 1] = call
  end
end
return out
"""

# KEYS: one zset (slots or node). ARGV: prefix, now, what ('count' | 'members')
_LIVE = _COMMON + r"""
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', fmt(clock()))
if ARGV[3] == 'count' then return redis.call('ZCARD', KEYS[1]) end
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""

# KEYS: call hash. ARGV: prefix, now, call -> slot keys held, or false
_HELD = _COMMON + r"""
if not live(KEYS[1], ARGV[3], clock()) then return false end
return scopes_of(KEYS[1])
"""

_BATCH = 500  # calls per refresh/reconcile script: keeps one script run well under 1 ms


class RedisCaps(CapsBackend):
    name = "redis"

    def __init__(self, client: redis.Redis, *, node_id: str | None = None,
                 ttl: float = DEFAULT_TTL, prefix: str = "{switchd}",
                 clock: Callable[[], float] | None = None):
        if ttl <= 0:
            raise ValueError("ttl must be > 0")
        if "{" not in prefix or "}" not in prefix:
            raise ValueError("prefix needs a {hash tag} so every key lives in one cluster slot")
        self.client = client
        # Stable across restarts by default (one daemon per FreeSWITCH host), so a restarted
        # daemon reconciles the calls its previous run admitted.
        self.node_id = node_id or socket.gethostname()
        self.ttl = float(ttl)
        self.prefix = prefix
        self._clock = clock
        s = client.register_script
        self._admit, self._release, self._refresh = s(_ADMIT), s(_RELEASE), s(_REFRESH)
        self._rename, self._reconcile = s(_RENAME), s(_RECONCILE)
        self._live, self._held = s(_LIVE), s(_HELD)

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 0.25, **kwargs) -> "RedisCaps":
        """A client tuned for the routing path: short timeouts, one immediate retry.

        The retry covers a pooled connection that died with a Redis restart; more retries
        would only make a caller wait longer when Redis really is down.
        """
        client = redis.Redis.from_url(url, socket_timeout=timeout,
                                      socket_connect_timeout=timeout,
                                      retry=Retry(NoBackoff(), 1))
        return cls(client, **kwargs)

    # --- helpers --------------------------------------------------------------------------
    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _now_arg(self, now: float | None = None) -> str:
        if now is None and self._clock is not None:
            now = self._clock()
        return "" if now is None else repr(float(now))

    def _run(self, operation: str, script, keys, args):
        try:
            result = script(keys=keys, args=[self.prefix, *args])
        except redis.RedisError as exc:
            # Any Redis failure means the check could not be made; the caller's policy decides
            # what that means for the call. Counted here, logged by PolicyCaps on transition.
            metrics.REDIS_ERRORS.labels(operation=operation).inc()
            metrics.CAPS_BACKEND_UP.labels(backend=self.name).set(0)
            raise CapsUnavailable(f"redis {operation}: {exc}") from exc
        return result

    def _apply(self, call_uuid, add, remove, cps, now, mode) -> Admission:
        add, cps, remove = dedupe(add), dedupe(cps), dedupe(remove)
        keys = [self._k("call", call_uuid)]
        keys += [self._k("slots", s.key) for s in add]
        keys += [self._k("cps", c.key) for c in cps]
        keys += [self._k("slots", s.key) for s in remove]
        args = [self._now_arg(now), repr(self.ttl), self.node_id, call_uuid, mode,
                len(add), len(cps), len(remove)]
        args += [-1 if s.limit is None else s.limit for s in add]
        for c in cps:
            args += [repr(c.window), c.allowance]
        ok, index, reason = self._run(f"caps_{mode}", self._admit, keys, args)
        reason = reason.decode() if isinstance(reason, bytes) else reason
        if ok:
            return Admission(True, None, reason)
        refused = None
        if index:
            refused = add[index - 1] if index <= len(add) else cps[index - 1 - len(add)]
        return Admission(False, refused, reason)

    # --- the contract ---------------------------------------------------------------------
    def acquire(self, call_uuid, scopes, cps=(), now=None) -> Admission:
        return self._apply(call_uuid, scopes, (), cps, now, "acquire")

    def register(self, call_uuid, scopes, *, replace=False) -> None:
        self._apply(call_uuid, scopes, (), (), None, "replace" if replace else "register")

    def move(self, call_uuid, add=(), remove=(), cps=()) -> Admission:
        return self._apply(call_uuid, add, remove, cps, None, "move")

    def release(self, call_uuid) -> bool:
        return bool(self._run("caps_release", self._release, [self._k("call", call_uuid)],
                              [self._now_arg(), call_uuid]))

    def rename(self, old_uuid, new_uuid) -> bool:
        if old_uuid == new_uuid:
            return self.held(old_uuid) is not None
        return bool(self._run("caps_rename", self._rename,
                              [self._k("call", old_uuid), self._k("call", new_uuid)],
                              [self._now_arg(), old_uuid, new_uuid]))

    def refresh(self, call_uuids: Iterable[str]) -> list[str]:
        uuids, lost = list(call_uuids), []
        for i in range(0, len(uuids), _BATCH):
            chunk = uuids[i:i + _BATCH]
            lost += self._run("caps_refresh", self._refresh,
                              [self._k("call", u) for u in chunk],
                              [self._now_arg(), repr(self.ttl), self.node_id, *chunk])
        metrics.CAPS_BACKEND_UP.labels(backend=self.name).set(1)
        return [u.decode() for u in lost]

    def reconcile(self, live_call_uuids, grace=5.0) -> list[str]:
        live = set(live_call_uuids)
        stale = [u for u in self.calls() if u not in live]
        released = []
        for i in range(0, len(stale), _BATCH):
            chunk = stale[i:i + _BATCH]
            released += self._run("caps_reconcile", self._reconcile,
                                  [self._k("call", u) for u in chunk],
                                  [self._now_arg(), self.node_id, repr(float(grace)), *chunk])
        return [u.decode() for u in released]

    def count(self, scope: Scope) -> int:
        return int(self._run("caps_count", self._live, [self._k("slots", scope.key)],
                             [self._now_arg(), "count"]))

    def calls(self) -> list[str]:
        members = self._run("caps_calls", self._live, [self._k("node", self.node_id)],
                            [self._now_arg(), "members"])
        return [m.decode() for m in members]

    def held(self, call_uuid):
        keys = self._run("caps_held", self._held, [self._k("call", call_uuid)],
                         [self._now_arg(), call_uuid])
        if keys is None:
            return None
        cut = len(self._k("slots", ""))
        return frozenset(tuple(k.decode()[cut:].split(":", 1)) for k in keys)

    def healthy(self) -> bool:
        try:
            self.client.ping()
        except redis.RedisError:
            metrics.CAPS_BACKEND_UP.labels(backend=self.name).set(0)
            return False
        metrics.CAPS_BACKEND_UP.labels(backend=self.name).set(1)
        return True

    def close(self) -> None:
        self.client.close()

