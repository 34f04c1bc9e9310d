"""RedisCaps specifics (server clock, scripts, key layout, node ownership) and the Redis-down
policy against a real redis-server that the test stops and restarts."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from switchd import metrics
from switchd.adapters.caps import CapsUnavailable, CpsScope, LocalCaps, PolicyCaps, Scope
from switchd.adapters.caps.redis_backend import RedisCaps
from switchd.adapters.devredis import RedisProcess

C = Scope("carrier", "telco", 2)
T = Scope("tenant", "acme", 10)


def _caps(url, **kw) -> RedisCaps:
    return RedisCaps.from_url(url, **kw)


def test_leases_run_on_redis_time(redis_url):
    """No injected clock (Redis TIME). c1 is acquired first and kept refreshed; c2 is left
    to expire. Decided by polling Redis, not by sleeps with 0.1 s margins: c1 must still be
    held when c2 is gone (without the refresh it would have expired first)."""
    caps = _caps(redis_url, ttl=0.5, node_id="n1")
    assert caps.acquire("c1", [C]) and caps.acquire("c2", [C])
    assert not caps.acquire("c3", [C])
    deadline = time.monotonic() + 10
    while caps.held("c2") is not None:
        assert caps.refresh(["c1"]) == []
        assert time.monotonic() < deadline, "c2's lease never expired"
        time.sleep(0.05)
    assert caps.held("c1") is not None
    assert caps.count(C) == 1
    assert caps.acquire("c3", [C])


def test_scripts_survive_script_flush(redis_url):
    caps = _caps(redis_url, node_id="n1")
    caps.acquire("c1", [C])
    redis.Redis.from_url(redis_url).script_flush()  # as after a Redis restart: NOSCRIPT
    assert caps.acquire("c2", [C]).admitted
    assert caps.release("c1") and caps.count(C) == 1


def test_every_key_shares_one_hash_tag(redis_url):
    caps = _caps(redis_url, node_id="n1")
    caps.acquire("c1", [T, C], [CpsScope("carrier", "telco", 5)])
    keys = redis.Redis.from_url(redis_url).keys("*")
    assert keys and all(k.startswith(b"{switchd}:") for k in keys)
    with pytest.raises(ValueError):
        RedisCaps(redis.Redis.from_url(redis_url), prefix="switchd")


def test_nodes_share_caps_but_reconcile_only_their_own(redis_url):
    a, b = _caps(redis_url, node_id="a"), _caps(redis_url, node_id="b")
    assert a.acquire("a1", [C]) and b.acquire("b1", [C])
    assert not a.acquire("a2", [C])  # the cap is cluster-wide
    assert a.calls() == ["a1"] and b.calls() == ["b1"]
    assert a.reconcile([], grace=0) == ["a1"]
    assert b.held("b1") is not None and b.count(C) == 1


def test_refresh_adopts_a_call_for_this_node(redis_url):
    old, new = _caps(redis_url, node_id="host-old"), _caps(redis_url, node_id="host-new")
    old.acquire("c1", [C])
    assert new.refresh(["c1"]) == []
    assert new.calls() == ["c1"] and old.calls() == []


def test_unreachable_redis_raises_caps_unavailable():
    server = RedisProcess().start()
    caps = _caps(server.url, node_id="n1")
    assert caps.healthy()
    server.stop()
    before = metrics.REDIS_ERRORS.labels(operation="caps_acquire")._value.get()
    with pytest.raises(CapsUnavailable):
        caps.acquire("c1", [C])
    assert metrics.REDIS_ERRORS.labels(operation="caps_acquire")._value.get() == before + 1
    assert not caps.healthy()


# --- Redis down: the policy ----------------------------------------------------------------
@pytest.fixture
def own_redis():
    """A redis-server this test may stop and restart on the same port."""
    server = RedisProcess().start()
    yield server
    server.stop()


def _gauge(metric, **labels):
    return (metric.labels(**labels) if labels else metric)._value.get()


def test_fail_closed_refuses_while_down_and_recovers(own_redis):
    caps = PolicyCaps(_caps(own_redis.url, node_id="n1"), policy="fail_closed",
                      probe_interval=0)
    assert caps.acquire("before", [C])
    own_redis.stop()
    refused = caps.acquire("during", [C])
    assert not refused.admitted and refused.reason == "caps backend unavailable"
    assert refused.refused_scope.kind == "backend"
    assert caps.acquire("before", [C]).admitted  # a call already up is not refused
    assert caps.status()["mode"] == "refusing" and not caps.healthy()
    assert _gauge(metrics.CAPS_BACKEND_UP, backend="redis") == 0
    assert _gauge(metrics.CAPS_FAIL_OPEN) == 0
    assert caps.release("before") is True  # applied locally now, in Redis on recovery

    restarted = RedisProcess(port=own_redis.port).start()  # empty: no persistence
    try:
        assert caps.refresh([]) == [] and caps.healthy()
        assert _gauge(metrics.CAPS_BACKEND_UP, backend="redis") == 1
        assert caps.acquire("after", [C]).admitted and caps.count(C) == 1
    finally:
        restarted.stop()


def test_fail_open_admits_up_to_local_caps_then_registers_them(own_redis, caplog):
    share_of_4 = Scope("carrier", "telco", 4)
    caps = PolicyCaps(_caps(own_redis.url, node_id="n1"), policy="fail_open",
                      fallback_share=0.5, probe_interval=0)
    other_node = _caps(own_redis.url, node_id="n2")
    assert caps.acquire("before", [share_of_4])
    assert other_node.acquire("elsewhere", [share_of_4])
    own_redis.stop()
    # Local limit is floor(4 x 0.5) = 2, and the call admitted before the outage counts.
    assert caps.acquire("d1", [share_of_4]).admitted
    refused = caps.acquire("d2", [share_of_4])
    assert refused.reason == "cap reached" and refused.refused_scope.limit == 2
    assert _gauge(metrics.CAPS_FAIL_OPEN) == 1 and caps.status()["mode"] == "local"
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1  # one line on the transition, not one per call
    assert caps.release("before")

    # Same port, but the data survived (a network cut, not a restart): simulate by
    # restarting and putting the other node's call back.
    restarted = RedisProcess(port=own_redis.port).start()
    try:
        other_node.acquire("elsewhere", [share_of_4])
        assert caps.probe() and caps.status()["mode"] == "redis"
        assert _gauge(metrics.CAPS_FAIL_OPEN) == 0
        # d1 was registered with a lease; "before" (released during the outage) is gone.
        assert sorted(caps.calls()) == ["d1"] and caps.count(share_of_4) == 2
        assert caps.acquire("d3", [share_of_4]) and caps.acquire("d4", [share_of_4])
        assert not caps.acquire("d5", [share_of_4])  # the full cluster limit applies again
    finally:
        restarted.stop()


def test_refresh_recounts_calls_redis_forgot(own_redis):
    caps = PolicyCaps(_caps(own_redis.url, node_id="n1"), policy="fail_closed")
    caps.acquire("c1", [C])
    own_redis.stop()
    restarted = RedisProcess(port=own_redis.port).start()  # restarted empty between ops
    try:
        assert caps.refresh(["c1"]) == []
        assert caps.primary.held("c1") == {("carrier", "telco")}
    finally:
        restarted.stop()


# --- both backends agree, operation by operation -------------------------------------------
_uuids = st.sampled_from(["u1", "u2", "u3", "u4"])
_scopes = st.lists(st.sampled_from([Scope("tenant", "t", 2), Scope("carrier", "a", 1),
                                    Scope("carrier", "b", 2), Scope("global", "g")]),
                   max_size=3, unique=True)
_ops = st.lists(st.one_of(
    st.tuples(st.just("acquire"), _uuids, _scopes),
    st.tuples(st.just("release"), _uuids),
    st.tuples(st.just("rename"), _uuids, _uuids),
    st.tuples(st.just("advance"), st.sampled_from([0.3, 1.0, 5.0])),
    st.tuples(st.just("refresh"), _uuids),
    st.tuples(st.just("swap"), _uuids),
), max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops)
def test_redis_and_local_agree(redis_url, ops):
    redis.Redis.from_url(redis_url).flushdb()
    now = [100.0]
    local = LocalCaps(ttl=3, clock=lambda: now[0])
    remote = RedisCaps(redis.Redis.from_url(redis_url), node_id="n", ttl=3, clock=lambda: now[0])
    a, b = Scope("carrier", "a", 1), Scope("carrier", "b", 2)
    for op in ops:
        if op[0] == "advance":
            now[0] += op[1]
            continue
        if op[0] == "acquire":
            results = [c.acquire(op[1], op[2]) for c in (local, remote)]
        elif op[0] == "release":
            results = [c.release(op[1]) for c in (local, remote)]
        elif op[0] == "rename":
            results = [c.rename(op[1], op[2]) for c in (local, remote)]
        elif op[0] == "refresh":
            results = [c.refresh([op[1]]) for c in (local, remote)]
        else:
            results = [c.swap_carrier(op[1], a, b) for c in (local, remote)]
        assert results[0] == results[1], op
        for s in (Scope("tenant", "t"), a, b, Scope("global", "g")):
            assert local.count(s) == remote.count(s), (op, s)
        assert local.count(a) <= 1 and local.count(b) <= 2
    remote.close()


def test_redis_calls_yield_under_gevent(redis_server_url):
    """Caps run on the routing path: a Redis round trip must let other greenlets run."""
    code = f"""
from gevent import monkey; monkey.patch_all()
import gevent
from switchd.adapters.caps import Scope
from switchd.adapters.caps.redis_backend import RedisCaps
caps = RedisCaps.from_url({redis_server_url!r}, node_id="gevent-check")
ticks = []
def ticker():
    while True:
        ticks.append(1); gevent.sleep(0)
t = gevent.spawn(ticker); gevent.sleep(0)
for i in range(200):
    caps.acquire(f"g{{i}}", [Scope("tenant", "gevent-check")]); caps.release(f"g{{i}}")
t.kill()
assert len(ticks) > 100, len(ticks)
print("ok", len(ticks))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr
