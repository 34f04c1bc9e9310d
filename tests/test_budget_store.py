"""Budget reservations: the same contract in process and in a real Redis, and no
over-reservation when several daemons (processes) race for one tenant's last money."""
from __future__ import annotations

import time

import pytest
import redis

from racing import Tally, hammer, race
from switchd.adapters.budget_store import LocalBudgets, RedisBudgets


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture(params=["local", "redis"])
def store(request):
    clock = Clock()
    if request.param == "local":
        s = LocalBudgets(ttl=30, clock=clock)
    else:
        url = request.getfixturevalue("redis_url")
        s = RedisBudgets(redis.Redis.from_url(url), ttl=30, clock=clock)
    s.clock = clock
    yield s
    s.close()


def test_calls_share_what_is_neither_spent_nor_reserved(store):
    # budget 100, 10 spent already (the seed), each call's ceiling 40
    assert store.reserve("acme", "2026-11", "c1", 100, 10, 40) == (40, 10, 0)
    assert store.reserve("acme", "2026-11", "c2", 100, 999, 40) == (40, 10, 40)  # seed ignored now
    assert store.reserve("acme", "2026-11", "c3", 100, 0, 40) == (10, 10, 80)    # what is left
    assert store.reserve("acme", "2026-11", "c4", 100, 0, 40) == (0, 10, 90)     # nothing left
    assert store.usage("acme", "2026-11", 0) == (10, 90)
    # another month, another tenant: untouched
    assert store.reserve("acme", "2026-12", "c5", 100, 0, None) == (100, 0, 0)
    assert store.usage("beta", "2026-11", 0) == (0, 0)


def test_settlement_frees_the_rest_and_a_cut_call_grows(store):
    store.reserve("acme", "2026-11", "c1", 100, 0, 60)
    assert store.reserve("acme", "2026-11", "c2", 100, 0, 60)[0] == 40          # cut
    assert store.settle("acme", "2026-11", "c1", 15, 0) == (0, 15)              # cheaper
    assert store.usage("acme", "2026-11", 0) == (15, 40)
    assert store.reserve("acme", "2026-11", "c2", 100, 0, 60, grow=True)[0] == 60
    assert store.usage("acme", "2026-11", 0) == (15, 60)
    # grow never shrinks, even when the budget went down meanwhile
    assert store.reserve("acme", "2026-11", "c2", 50, 0, 60, grow=True)[0] == 60
    assert store.release("acme", "2026-11", "c2") is True
    assert store.release("acme", "2026-11", "c2") is False
    assert store.usage("acme", "2026-11", 0) == (15, 0)
    # a settlement with no reservation (a call adopted after a restart) still counts
    assert store.settle("acme", "2026-11", "c9", 5, 0) == (15, 20)


def test_the_spend_floor_from_postgresql_raises_never_lowers(store):
    assert store.floor("acme", "2026-11", 30) == 30          # nothing yet: PostgreSQL's sum
    store.settle("acme", "2026-11", "c1", 20, 0)             # settled here, CDR not written yet
    assert store.floor("acme", "2026-11", 30) == 50          # behind: not lowered
    assert store.floor("acme", "2026-11", 65) == 65          # a lost settlement caught up
    assert store.usage("acme", "2026-11", 0) == (65, 0)


def test_a_dead_daemons_reservations_expire_and_refresh_keeps_live_ones(store):
    store.reserve("acme", "2026-11", "dead", 100, 0, 70)
    store.reserve("acme", "2026-11", "live", 100, 0, 70)
    store.clock.now += 20
    assert store.refresh([("acme", "2026-11", "live", 30)]) == []
    store.clock.now += 15                         # 'dead' (never refreshed) is past its lease
    assert store.usage("acme", "2026-11", 0) == (0, 30)
    assert store.reserve("acme", "2026-11", "new", 100, 0, 100)[0] == 70
    store.clock.now += 31                         # everything expired; refresh writes it back
    assert store.refresh([("acme", "2026-11", "live", 30)]) == ["live"]
    assert store.usage("acme", "2026-11", 0) == (0, 30)


# --- several daemons on one Redis -----------------------------------------------------------
BUDGET = 1_000_000          # micro-units: 1.000000
CEILING = 70_000
PROCESSES, THREADS, SECONDS = 3, 4, 2.0


def _daemon(url: str, name: str, seed: int, results) -> None:
    store = RedisBudgets.from_url(url, ttl=60, timeout=2.0)
    tally = Tally("granted", "refused", "cost")

    def attempt(call: str, rng) -> None:
        granted, _, _ = store.reserve("acme", "2026-11", call, BUDGET, 0, CEILING)
        if not granted:
            tally.add("refused")
            time.sleep(0.001)
            return
        time.sleep(rng.uniform(0, 0.005))
        cost = rng.randint(0, granted)         # a call never costs more than its share
        store.settle("acme", "2026-11", call, cost, 0)
        tally.add("granted")
        tally.add("cost", cost)

    hammer(name, seed, THREADS, SECONDS, tally, attempt, results)


# Read spent and every reservation in one atomic step: the witness does not use our code.
_WITNESS = """
local total = 0
local kv = redis.call('HGETALL', KEYS[2])
for i = 2, #kv, 2 do total = total + tonumber(kv[i]) end
return {tonumber(redis.call('GET', KEYS[1]) or '0'), total}
"""


@pytest.mark.slow
def test_racing_daemons_never_reserve_more_than_the_budget(redis_url):
    observer = redis.Redis.from_url(redis_url)
    witness = observer.register_script(_WITNESS)
    keys = ["{switchd}:budget:acme:2026-11:spent", "{switchd}:budget:acme:2026-11:holds"]
    stats, seen = race(_daemon, [(redis_url, f"d{i}", i) for i in range(PROCESSES)],
                       lambda: tuple(witness(keys=keys)))
    assert sum(s["errors"] for s in stats) == 0
    assert sum(s["refused"] for s in stats) > 50          # the budget really ran out
    assert max(spent + held for spent, held in seen) <= BUDGET
    assert max(held for _, held in seen) > CEILING        # calls did run in parallel
    spent, held = witness(keys=keys)
    assert held == 0 and spent == sum(s["cost"] for s in stats) <= BUDGET
    assert int(observer.get("{switchd}:budget:acme:2026-11:reserved") or 0) == 0   # running total


def test_a_restarted_daemon_takes_over_its_running_calls_reservations(redis_url):
    """The first run reserved for a call and died; the second run, finding the call up on
    the switch, keeps its reservation alive past the old lease instead of letting others
    take that money."""
    import gevent

    from switchd.accounting.budgets import BudgetBook
    clock = Clock()
    first = RedisBudgets(redis.Redis.from_url(redis_url), ttl=30, clock=clock)
    assert first.reserve("acme", "2026-11", "up", 100, 0, 60)[0] == 60
    assert first.reserve("acme", "2026-11", "gone", 100, 0, 60)[0] == 40
    first.release("acme", "2026-11", "gone")
    second = RedisBudgets(redis.Redis.from_url(redis_url), ttl=30, clock=clock)
    assert second.adopt(["up", "gone", "never"]) == [("up", "acme", "2026-11", 60)]
    restarted = BudgetBook(second, {"acme": None})
    restarted.refresh({"up"})
    with gevent.Timeout(10):
        while "up" not in restarted.holds:
            gevent.sleep(0.01)
    clock.now += 20
    restarted.refresh({"up"})
    with gevent.Timeout(10):
        while restarted.pending():
            gevent.sleep(0.01)
    clock.now += 20                       # past the first run's lease: still reserved
    assert second.usage("acme", "2026-11", 0) == (0, 60)
    assert second.reserve("acme", "2026-11", "new", 100, 0, 100)[0] == 40
    restarted.call_ended("up", "acme", None, None)   # settled (cost 0) like any call
    with gevent.Timeout(10):
        while second.usage("acme", "2026-11", 0) != (0, 40):
            gevent.sleep(0.01)
    assert second.adopt(["up"]) == []
    restarted.close()
