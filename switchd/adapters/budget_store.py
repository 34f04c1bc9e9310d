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

import heapq
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

    @abstractmethod
    def floor(self, tenant: str, month: str, spent: int) -> int:
        """Raise the month's spend to at least `spent` (PostgreSQL's sum of its CDRs, which
        only grows): a settlement lost with a crashed daemon, or a cost the switch's own
        CDR corrected upwards, catches up; spend is never lowered. Returns the spend."""

    def adopt(self, call_uuids: Iterable[str]) -> list[tuple[str, str, str, int]]:
        """(call, tenant, month, amount) of the live reservations these calls hold: a
        restarted daemon takes over its calls' reservations instead of letting them lapse.
        In process there is nothing to find after a restart."""
        return []

    def close(self) -> None:
        pass


class _Month:
    """One tenant's month in process: holds, their running total, and a heap of lease
    expiries (stale entries, from refreshes, are skipped when they surface)."""
    __slots__ = ("holds", "total", "expiries", "spent")

    def __init__(self, spent: int):
        self.holds: dict[str, tuple[int, float]] = {}
        self.total = 0
        self.expiries: list[tuple[float, str]] = []
        self.spent = spent

    def put(self, call: str, amount: int, exp: float) -> None:
        old = self.holds.get(call)
        self.total += amount - (old[0] if old else 0)
        self.holds[call] = (amount, exp)
        heapq.heappush(self.expiries, (exp, call))

    def drop(self, call: str) -> bool:
        old = self.holds.pop(call, None)
        if old is not None:
            self.total -= old[0]
        return old is not None


class LocalBudgets(BudgetStore):
    """The embedded default: one daemon, reservations in memory. O(log n) per operation."""

    name = "local"

    def __init__(self, ttl: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.ttl = float(ttl)
        self._clock = clock
        self._months: dict[tuple[str, str], _Month] = {}

    def _month(self, tenant, month, seed) -> _Month:
        m = self._months.get((tenant, month))
        if m is None:
            m = self._months[(tenant, month)] = _Month(int(seed))
        now, heap = self._clock(), m.expiries
        while heap and heap[0][0] <= now:
            exp, call = heapq.heappop(heap)
            held = m.holds.get(call)
            if held is not None and held[1] == exp:      # not refreshed since: expired
                m.drop(call)
        return m

    def reserve(self, tenant, month, call, budget, seed, ceiling, grow=False):
        m = self._month(tenant, month, seed)
        own = m.holds.get(call)
        others = m.total - (own[0] if own else 0)
        granted = rules.grant_micros(int(budget), m.spent, others, ceiling)
        if grow and own is not None:
            granted = max(granted, own[0])
        if granted > 0:
            m.put(call, granted, self._clock() + self.ttl)
        else:
            m.drop(call)
        return granted, m.spent, others

    def settle(self, tenant, month, call, cost, seed):
        m = self._month(tenant, month, seed)
        m.drop(call)
        before = m.spent
        m.spent += int(cost)
        return before, m.spent

    def release(self, tenant, month, call):
        return self._month(tenant, month, 0).drop(call)

    def refresh(self, holds):
        lost = []
        exp = self._clock() + self.ttl
        for tenant, month, call, amount in holds:
            m = self._month(tenant, month, 0)
            if call not in m.holds:
                lost.append(call)
            m.put(call, int(amount), exp)
        return lost

    def usage(self, tenant, month, seed):
        m = self._month(tenant, month, seed)
        return m.spent, m.total

    def floor(self, tenant, month, spent):
        m = self._month(tenant, month, spent)
        m.spent = max(m.spent, int(spent))
        return m.spent


_COMMON = r"""
local function clock()
  if ARGV[1] ~= '' then return tonumber(ARGV[1]) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function int(x) return string.format('%d', x) end
-- call uuid -> '<month>|<tenant>' of its reservation: how a restarted daemon finds the
-- reservations of the calls it adopts (set by each script before use).
local OWNERS = nil
-- A month's reservations: HASH call -> amount, ZSET call -> lease expiry, and their running
-- total (so no operation sums every hold). A total without its hash (garbage-collected)
-- is stale and starts again from 0.
local function total_of(res, tot)
  if redis.call('EXISTS', res) == 0 then redis.call('DEL', tot) return 0 end
  return tonumber(redis.call('GET', tot) or '0')
end
local function unhold(res, exp, tot, call)
  local old = redis.call('HGET', res, call)
  if not old then return false end
  redis.call('HDEL', res, call)
  redis.call('ZREM', exp, call)
  redis.call('DECRBY', tot, old)
  redis.call('HDEL', OWNERS, call)
  return true
end
-- Reservations whose lease passed are dropped before anything is counted.
local function purge(res, exp, tot, now)
  local dead = redis.call('ZRANGEBYSCORE', exp, '-inf', string.format('%.6f', now))
  for _, c in ipairs(dead) do unhold(res, exp, tot, c) end
  if #dead > 0 then redis.call('ZREMRANGEBYSCORE', exp, '-inf', string.format('%.6f', now)) end
end
local function spent_of(key, seed, keep)
  local s = redis.call('GET', key)
  if s then return tonumber(s) end
  redis.call('SET', key, seed, 'EX', keep)
  return tonumber(seed)
end
local function hold(res, exp, tot, call, amount, until_, ttl, tag)
  local old = tonumber(redis.call('HGET', res, call) or '0')
  redis.call('HSET', OWNERS, call, tag)
  redis.call('HSET', res, call, int(amount))
  redis.call('ZADD', exp, string.format('%.6f', until_), call)
  redis.call('INCRBY', tot, int(amount - old))
  local gc = math.ceil((2 * ttl + 60) * 1000)
  redis.call('PEXPIRE', res, gc)
  redis.call('PEXPIRE', exp, gc)
  redis.call('PEXPIRE', tot, gc)
end
"""

# KEYS: spent, holds, leases, total, owners. ARGV: now, ttl, call, budget, seed, ceiling
# (-1: none), grow ('1'/'0'), spent ttl, owner tag -> {granted, spent, reserved by the others}
_RESERVE = _COMMON + r"""
OWNERS = KEYS[5]
local now, ttl, call = clock(), tonumber(ARGV[2]), ARGV[3]
local budget, ceiling, grow = tonumber(ARGV[4]), tonumber(ARGV[6]), ARGV[7] == '1'
local total = total_of(KEYS[2], KEYS[4])
purge(KEYS[2], KEYS[3], KEYS[4], now)
local spent = spent_of(KEYS[1], ARGV[5], ARGV[8])
local current = tonumber(redis.call('HGET', KEYS[2], call) or '0')
local held = total_of(KEYS[2], KEYS[4]) - current
local granted = budget - spent - held
if ceiling >= 0 and ceiling < granted then granted = ceiling end
if granted < 0 then granted = 0 end
if grow and current > granted then granted = current end
if granted > 0 then
  hold(KEYS[2], KEYS[3], KEYS[4], call, granted, now + ttl, ttl, ARGV[9])
else
  unhold(KEYS[2], KEYS[3], KEYS[4], call)
end
return {int(granted), int(spent), int(held)}
"""

# KEYS: spent, holds, leases, total, owners. ARGV: now, call, cost, seed, spent ttl
# -> {before, after}
_SETTLE = _COMMON + r"""
OWNERS = KEYS[5]
local before = spent_of(KEYS[1], ARGV[4], ARGV[5])
total_of(KEYS[2], KEYS[4])
unhold(KEYS[2], KEYS[3], KEYS[4], ARGV[2])
local after = redis.call('INCRBY', KEYS[1], ARGV[3])
return {int(before), int(after)}
"""

# KEYS: spent, holds, leases, total, owners. ARGV: now, call -> 1 when it held one
_RELEASE = _COMMON + r"""
OWNERS = KEYS[5]
total_of(KEYS[2], KEYS[4])
if unhold(KEYS[2], KEYS[3], KEYS[4], ARGV[2]) then return 1 end
return 0
"""

# KEYS: owners, then (spent, holds, leases, total) per hold. ARGV: now, ttl, then
# (call, amount, owner tag) per hold -> lost calls
_REFRESH = _COMMON + r"""
OWNERS = KEYS[1]
local now, ttl = clock(), tonumber(ARGV[2])
local lost = {}
local g = 0
for i = 2, #KEYS, 4 do
  local j = 3 + 3 * g
  g = g + 1
  local call, amount = ARGV[j], tonumber(ARGV[j + 1])
  total_of(KEYS[i + 1], KEYS[i + 3])
  purge(KEYS[i + 1], KEYS[i + 2], KEYS[i + 3], now)
  if redis.call('HEXISTS', KEYS[i + 1], call) == 0 then lost[#lost + 1] = call end
  hold(KEYS[i + 1], KEYS[i + 2], KEYS[i + 3], call, amount, now + ttl, ttl, ARGV[j + 2])
end
return lost
"""

# KEYS: spent. ARGV: now, floor, spent ttl -> spend after
_FLOOR = _COMMON + r"""
local s = tonumber(redis.call('GET', KEYS[1]) or '-1')
if s < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return ARGV[2]
end
return int(s)
"""

# KEYS: owners. ARGV: now, key prefix, calls... -> {call, tag, amount, ...} for each call
# that holds a live reservation (its month's keys derive from the tag, one hash tag).
_ADOPT = _COMMON + r"""
OWNERS = KEYS[1]
local now, base = clock(), ARGV[2]
local out = {}
for i = 3, #ARGV do
  local call = ARGV[i]
  local tag = redis.call('HGET', OWNERS, call)
  if tag then
    local month, tenant = string.sub(tag, 1, 7), string.sub(tag, 9)
    local k = base .. tenant .. ':' .. month
    local exp = redis.call('ZSCORE', k .. ':leases', call)
    local amount = redis.call('HGET', k .. ':holds', call)
    if exp and amount and tonumber(exp) > now then
      out[#out + 1] = call
      out[#out + 1] = tag
      out[#out + 1] = amount
    elseif not amount then
      redis.call('HDEL', OWNERS, call)
    end
  end
end
return out
"""

# KEYS: spent, holds, leases, total, owners. ARGV: now, seed, spent ttl -> {spent, reserved}
_USAGE = _COMMON + r"""
OWNERS = KEYS[5]
total_of(KEYS[2], KEYS[4])
purge(KEYS[2], KEYS[3], KEYS[4], clock())
return {int(spent_of(KEYS[1], ARGV[2], ARGV[3])), int(total_of(KEYS[2], KEYS[4]))}
"""

_BATCH = 200


class RedisBudgets(BudgetStore):
    """Reservations shared by every daemon of a Redis. Keys, under the caps hash tag so a
    Redis Cluster keeps them in one slot:

        <p>:budget:<tenant>:<month>:spent   STRING  micro-units
        <p>:budget:<tenant>:<month>:holds   HASH    call uuid -> micro-units
        <p>:budget:<tenant>:<month>:leases  ZSET    call uuid -> lease expiry
        <p>:budget:<tenant>:<month>:reserved STRING the holds' running total

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
        self._refresh, self._usage, self._adopt = s(_REFRESH), s(_USAGE), s(_ADOPT)
        self._floor = s(_FLOOR)

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
        return [base + ":spent", base + ":holds", base + ":leases", base + ":reserved"]

    @property
    def _owners(self) -> str:
        return f"{self.prefix}:budget:owners"

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
        out = self._run("reserve", self._reserve, self._keys(tenant, month) + [self._owners],
                        [self._now(), repr(self.ttl), call, int(budget), int(seed),
                         -1 if ceiling is None else int(ceiling), "1" if grow else "0",
                         SPENT_TTL_S, f"{month}|{tenant}"])
        return tuple(int(x) for x in out)

    def settle(self, tenant, month, call, cost, seed):
        out = self._run("settle", self._settle, self._keys(tenant, month) + [self._owners],
                        [self._now(), call, int(cost), int(seed), SPENT_TTL_S])
        return int(out[0]), int(out[1])

    def release(self, tenant, month, call):
        return bool(self._run("release", self._release, self._keys(tenant, month) + [self._owners],
                              [self._now(), call]))

    def refresh(self, holds):
        holds, lost = list(holds), []
        for i in range(0, len(holds), _BATCH):
            keys, args = [self._owners], [self._now(), repr(self.ttl)]
            for tenant, month, call, amount in holds[i:i + _BATCH]:
                keys += self._keys(tenant, month)
                args += [call, int(amount), f"{month}|{tenant}"]
            lost += self._run("refresh", self._refresh, keys, args)
        return [c.decode() if isinstance(c, bytes) else c for c in lost]

    def usage(self, tenant, month, seed):
        out = self._run("usage", self._usage, self._keys(tenant, month) + [self._owners],
                        [self._now(), int(seed), SPENT_TTL_S])
        return int(out[0]), int(out[1])

    def floor(self, tenant, month, spent):
        return int(self._run("floor", self._floor, self._keys(tenant, month)[:1],
                             [self._now(), int(spent), SPENT_TTL_S]))

    def adopt(self, call_uuids):
        calls, found = list(call_uuids), []
        for i in range(0, len(calls), _BATCH):
            out = self._run("adopt", self._adopt, [self._owners],
                            [self._now(), f"{self.prefix}:budget:", *calls[i:i + _BATCH]])
            out = [x.decode() if isinstance(x, bytes) else x for x in out]
            for call, tag, amount in zip(out[::3], out[1::3], out[2::3]):
                month, _, tenant = tag.partition("|")
                found.append((call, tenant, month, int(amount)))
        return found

    def close(self) -> None:
        self.client.close()
