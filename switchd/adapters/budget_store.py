"""Where budget reservations live: in process (one daemon) or in Redis (a cluster).

Per tenant and month (`YYYY-MM`, the month the call started):

    spent     settled month-to-date spend (integer micro-units)
    holds     call uuid -> reserved micro-units, each with a lease (expiry)

Every operation that reads and writes is atomic (one Lua script in Redis, one lock-free
step under gevent in process), so two daemons racing for the last money of a tenant can
never reserve more than its budget minus its spend. A daemon that dies stops refreshing
its leases and its reservations expire after `ttl` seconds.

`seed` is what this daemon believes the month's spend is (from PostgreSQL at start); it
is written only when the store has no spend for the month yet, so the first daemon to
need it fixes it and the others use the shared value.

The share rule itself is `dialplan.budget.grant`; the Lua script below is the same
min(budget - spent - reserved_others, ceiling), run where it can be atomic.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable

from dialplan import budget as rules

SPENT_TTL_S = 70 * 86400      # a month's spend outlives the month (late settlements)


class BudgetUnavailable(Exception):
    """The store did not answer; nothing is known to have changed."""


class BudgetStore(ABC):
    ttl: float

    @abstractmethod
    def reserve(self, tenant: str, month: str, call: str, budget: int, seed: int,
                ceiling: int | None, grow: bool = False) -> tuple[int, int, int]:
        """Set the call's reservation by the share rule; returns (granted, spent, reserved
        by the other calls). `grow`: never below what the call already holds. A grant of 0
        leaves the call holding nothing."""

    @abstractmethod
    def settle(self, tenant: str, month: str, call: str, cost: int, seed: int) -> tuple[int, int]:
        """Drop the call's reservation and add its cost to the month; (spent before, after)."""

    @abstractmethod
    def release(self, tenant: str, month: str, call: str) -> bool:
        """Drop the call's reservation; True when it held one."""

    @abstractmethod
    def refresh(self, holds: Iterable[tuple[str, str, str, int]]) -> list[str]:
        """Extend the leases of (tenant, month, call, amount); a reservation that had
        expired is written again, unchecked (its call is alive). Returns those calls."""

    @abstractmethod
    def usage(self, tenant: str, month: str, seed: int) -> tuple[int, int]:
        """(spent, reserved) of the tenant's month."""

    def close(self) -> None:
        pass


class LocalBudgets(BudgetStore):
    """The embedded default: one daemon, reservations in memory."""

    name = "local"

    def __init__(self, ttl: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.ttl = float(ttl)
        self._clock = clock
        self._spent: dict[tuple[str, str], int] = {}
        self._holds: dict[tuple[str, str], dict[str, tuple[int, float]]] = {}

    def _live(self, tenant, month) -> dict[str, tuple[int, float]]:
        holds = self._holds.setdefault((tenant, month), {})
        now = self._clock()
        for call in [c for c, (_, exp) in holds.items() if exp <= now]:
            del holds[call]
        return holds

    def _spent_of(self, tenant, month, seed) -> int:
        return self._spent.setdefault((tenant, month), int(seed))

    def reserve(self, tenant, month, call, budget, seed, ceiling, grow=False):
        holds = self._live(tenant, month)
        spent = self._spent_of(tenant, month, seed)
        others = sum(a for c, (a, _) in holds.items() if c != call)
        granted = int(rules.grant(budget, spent, others, ceiling))
        if grow and call in holds:
            granted = max(granted, holds[call][0])
        if granted > 0:
            holds[call] = (granted, self._clock() + self.ttl)
        else:
            holds.pop(call, None)
        return granted, spent, others

    def settle(self, tenant, month, call, cost, seed):
        self._live(tenant, month).pop(call, None)
        before = self._spent_of(tenant, month, seed)
        self._spent[(tenant, month)] = before + int(cost)
        return before, before + int(cost)

    def release(self, tenant, month, call):
        return self._live(tenant, month).pop(call, None) is not None

    def refresh(self, holds):
        lost = []
        exp = self._clock() + self.ttl
        for tenant, month, call, amount in holds:
            live = self._live(tenant, month)
            if call not in live:
                lost.append(call)
            live[call] = (int(amount), exp)
        return lost

    def usage(self, tenant, month, seed):
        holds = self._live(tenant, month)
        return self._spent_of(tenant, month, seed), sum(a for a, _ in holds.values())


_COMMON = r"""
local function clock()
  if ARGV[1] ~= '' then return tonumber(ARGV[1]) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function int(x) return string.format('%d', x) end
-- Reservations whose lease passed are dropped before anything is counted.
local function purge(res, exp, now)
  local dead = redis.call('ZRANGEBYSCORE', exp, '-inf', string.format('%.6f', now))
  for _, c in ipairs(dead) do redis.call('HDEL', res, c) end
  if #dead > 0 then redis.call('ZREMRANGEBYSCORE', exp, '-inf', string.format('%.6f', now)) end
end
local function spent_of(key, seed, keep)
  local s = redis.call('GET', key)
  if s then return tonumber(s) end
  redis.call('SET', key, seed, 'EX', keep)
  return tonumber(seed)
end
local function others(res, call)
  local total, kv = 0, redis.call('HGETALL', res)
  for i = 1, #kv, 2 do
    if kv[i] ~= call then total = total + tonumber(kv[i + 1]) end
  end
  return total
end
local function hold(res, exp, call, amount, until_, ttl)
  redis.call('HSET', res, call, int(amount))
  redis.call('ZADD', exp, string.format('%.6f', until_), call)
  local gc = math.ceil((2 * ttl + 60) * 1000)
  redis.call('PEXPIRE', res, gc)
  redis.call('PEXPIRE', exp, gc)
end
"""

# KEYS: spent, holds, leases. ARGV: now, ttl, call, budget, seed, ceiling (-1: none),
# grow ('1'/'0'), spent ttl -> {granted, spent, reserved by the others}
_RESERVE = _COMMON + r"""
local now, ttl, call = clock(), tonumber(ARGV[2]), ARGV[3]
local budget, ceiling, grow = tonumber(ARGV[4]), tonumber(ARGV[6]), ARGV[7] == '1'
purge(KEYS[2], KEYS[3], now)
local spent = spent_of(KEYS[1], ARGV[5], ARGV[8])
local held = others(KEYS[2], call)
local granted = budget - spent - held
if ceiling >= 0 and ceiling < granted then granted = ceiling end
if granted < 0 then granted = 0 end
if grow then
  local current = tonumber(redis.call('HGET', KEYS[2], call) or '0')
  if current > granted then granted = current end
end
if granted > 0 then
  hold(KEYS[2], KEYS[3], call, granted, now + ttl, ttl)
else
  redis.call('HDEL', KEYS[2], call)
  redis.call('ZREM', KEYS[3], call)
end
return {int(granted), int(spent), int(held)}
"""

# KEYS: spent, holds, leases. ARGV: now, call, cost, seed, spent ttl -> {before, after}
_SETTLE = _COMMON + r"""
local before = spent_of(KEYS[1], ARGV[4], ARGV[5])
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
local after = redis.call('INCRBY', KEYS[1], ARGV[3])
return {int(before), int(after)}
"""

# KEYS: holds, leases. ARGV: now, call -> 1 when it held a reservation
_RELEASE = _COMMON + r"""
redis.call('ZREM', KEYS[2], ARGV[2])
return redis.call('HDEL', KEYS[1], ARGV[2])
"""

# KEYS: (holds, leases) per hold. ARGV: now, ttl, then (call, amount) per hold -> lost calls
_REFRESH = _COMMON + r"""
local now, ttl = clock(), tonumber(ARGV[2])
local lost = {}
for i = 1, #KEYS, 2 do
  local j = 3 + (i - 1)
  local call, amount = ARGV[j], tonumber(ARGV[j + 1])
  purge(KEYS[i], KEYS[i + 1], now)
  if redis.call('HEXISTS', KEYS[i], call) == 0 then lost[#lost + 1] = call end
  hold(KEYS[i], KEYS[i + 1], call, amount, now + ttl, ttl)
end
return lost
"""

# KEYS: spent, holds, leases. ARGV: now, seed, spent ttl -> {spent, reserved}
_USAGE = _COMMON + r"""
purge(KEYS[2], KEYS[3], clock())
return {int(spent_of(KEYS[1], ARGV[2], ARGV[3])), int(others(KEYS[2], ''))}
"""

_BATCH = 200


class RedisBudgets(BudgetStore):
    """Reservations shared by every daemon of a Redis. Keys, under the caps hash tag so a
    Redis Cluster keeps them in one slot:

        <p>:budget:<tenant>:<month>:spent   STRING  micro-units
        <p>:budget:<tenant>:<month>:holds   HASH    call uuid -> micro-units
        <p>:budget:<tenant>:<month>:leases  ZSET    call uuid -> lease expiry

    Clock: Redis TIME (one clock for every daemon), or an injected one for tests. Lua
    numbers are doubles: amounts are exact up to 2^53 micro-units (9 x 10^9 currency units).
    """

    name = "redis"

    def __init__(self, client, *, ttl: float = 60.0, prefix: str = "{switchd}",
                 clock: Callable[[], float] | None = None):
        import redis as _redis
        self._errors = (_redis.RedisError,)
        self.client = client
        self.ttl = float(ttl)
        self.prefix = prefix
        self._clock = clock
        s = client.register_script
        self._reserve, self._settle, self._release = s(_RESERVE), s(_SETTLE), s(_RELEASE)
        self._refresh, self._usage = s(_REFRESH), s(_USAGE)

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 0.25, **kwargs) -> "RedisBudgets":
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                      retry=Retry(NoBackoff(), 1))
        return cls(client, **kwargs)

    def _keys(self, tenant: str, month: str) -> list[str]:
        base = f"{self.prefix}:budget:{tenant}:{month}"
        return [base + ":spent", base + ":holds", base + ":leases"]

    def _now(self) -> str:
        return "" if self._clock is None else repr(float(self._clock()))

    def _run(self, what: str, script, keys, args):
        from switchd import metrics
        try:
            return script(keys=keys, args=args)
        except self._errors as exc:
            metrics.REDIS_ERRORS.labels(operation=f"budget_{what}").inc()
            raise BudgetUnavailable(f"redis budget {what}: {exc}") from exc

    def reserve(self, tenant, month, call, budget, seed, ceiling, grow=False):
        out = self._run("reserve", self._reserve, self._keys(tenant, month),
                        [self._now(), repr(self.ttl), call, int(budget), int(seed),
                         -1 if ceiling is None else int(ceiling), "1" if grow else "0",
                         SPENT_TTL_S])
        return tuple(int(x) for x in out)

    def settle(self, tenant, month, call, cost, seed):
        out = self._run("settle", self._settle, self._keys(tenant, month),
                        [self._now(), call, int(cost), int(seed), SPENT_TTL_S])
        return int(out[0]), int(out[1])

    def release(self, tenant, month, call):
        return bool(self._run("release", self._release, self._keys(tenant, month)[1:],
                              [self._now(), call]))

    def refresh(self, holds):
        holds, lost = list(holds), []
        for i in range(0, len(holds), _BATCH):
            keys, args = [], [self._now(), repr(self.ttl)]
            for tenant, month, call, amount in holds[i:i + _BATCH]:
                keys += self._keys(tenant, month)[1:]
                args += [call, int(amount)]
            lost += self._run("refresh", self._refresh, keys, args)
        return [c.decode() if isinstance(c, bytes) else c for c in lost]

    def usage(self, tenant, month, seed):
        out = self._run("usage", self._usage, self._keys(tenant, month),
                        [self._now(), int(seed), SPENT_TTL_S])
        return int(out[0]), int(out[1])

    def close(self) -> None:
        self.client.close()
