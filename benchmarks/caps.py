"""Caps benchmark: what a slot costs, in Redis and in process, and proof of no over-admission.

    python benchmarks/caps.py            (~30 s; uses SWITCHD_TEST_REDIS_URL or starts a
                                          throwaway redis-server via switchd.adapters.devredis)

Measures, in one run:
- acquire+release pairs per second (3 scopes: global, tenant, carrier) on RedisCaps and
  LocalCaps, one client, sequential;
- the baseline: a plain Redis INCR + DECR pair on the same connection (the naive counter
  DESIGN.md §11 warns against: same two round trips, no atomic check, no leases);
- the cost caps add to one routing decision: microseconds per acquire with 4 scopes and a CPS
  limit (p50 / p99);
- a burst: 4 processes x 6 threads at a cap of 5 for a few seconds; an independent witness
  counter (INCR after admission, DECR before release) counts over-admissions; must be 0.

The last stdout line is one JSON object.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import platform
import random
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis  # noqa: E402

from switchd.adapters.caps import CpsScope, LocalCaps, Scope  # noqa: E402
from switchd.adapters.caps.redis_backend import RedisCaps  # noqa: E402

SECONDS = 2.0
PAIR_SCOPES = [Scope("global", "all", 1_000_000), Scope("tenant", "acme", 100_000),
               Scope("carrier", "telco", 100_000)]
ROUTE_SCOPES = PAIR_SCOPES + [Scope("campaign", "spring", 100_000)]
ROUTE_CPS = [CpsScope("carrier", "telco", 1_000_000)]
BURST_CAP, BURST_PROCS, BURST_THREADS, BURST_SECONDS = 5, 4, 6, 4.0


def pairs_per_second(caps, seconds=SECONDS) -> float:
    n, deadline = 0, time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        for _ in range(100):
            uuid = f"p{n}"
            caps.acquire(uuid, PAIR_SCOPES)
            caps.release(uuid)
            n += 1
    return n / (time.perf_counter() - start)


def incr_decr_per_second(client, seconds=SECONDS) -> float:
    n, deadline = 0, time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        for _ in range(100):
            client.incr("bench:counter")
            client.decr("bench:counter")
            n += 1
    return n / (time.perf_counter() - start)


def acquire_latency_us(caps, n=3000) -> dict:
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        caps.acquire(f"r{i}", ROUTE_SCOPES, ROUTE_CPS)
        samples.append((time.perf_counter() - t0) * 1e6)
        caps.release(f"r{i}")
    samples.sort()
    return {"p50": round(statistics.median(samples), 1),
            "p99": round(samples[int(len(samples) * 0.99)], 1)}


def _burst_worker(url, node, seed, out) -> None:
    caps = RedisCaps.from_url(url, node_id=node, timeout=2.0)
    witness = redis.Redis.from_url(url)
    scopes = [Scope("carrier", "tiny", BURST_CAP)]
    totals = {"admitted": 0, "refused": 0, "over": 0, "peak": 0}
    lock = threading.Lock()
    deadline = time.monotonic() + BURST_SECONDS

    def run(tid):
        rng, n = random.Random(seed * 100 + tid), 0
        while time.monotonic() < deadline:
            call = f"{node}-{tid}-{n}"
            n += 1
            if not caps.acquire(call, scopes).admitted:
                with lock:
                    totals["refused"] += 1
                continue
            holding = witness.incr("bench:witness")
            with lock:
                totals["admitted"] += 1
                totals["peak"] = max(totals["peak"], holding)
                totals["over"] += holding > BURST_CAP
            time.sleep(rng.uniform(0, 0.005))
            witness.decr("bench:witness")
            caps.release(call)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(BURST_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(totals)


def burst(url) -> dict:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_burst_worker, args=(url, f"bench-{i}", i, out))
             for i in range(BURST_PROCS)]
    for p in procs:
        p.start()
    observer = redis.Redis.from_url(url)
    observed_peak = 0
    while any(p.is_alive() for p in procs):
        observed_peak = max(observed_peak, observer.zcard("{switchd}:slots:carrier:tiny"))
        time.sleep(0.002)
    totals = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(10)
    return {"admitted": sum(t["admitted"] for t in totals),
            "refused": sum(t["refused"] for t in totals),
            "over_admissions": sum(t["over"] for t in totals),
            "witness_peak": max(t["peak"] for t in totals),
            "observed_peak": observed_peak,
            "left_held": observer.zcard("{switchd}:slots:carrier:tiny")}


def main() -> int:
    url = os.environ.get("SWITCHD_TEST_REDIS_URL")
    server = None
    if not url:
        from switchd.adapters.devredis import RedisProcess
        server = RedisProcess().start()
        url = server.url
    try:
        client = redis.Redis.from_url(url)
        client.flushdb()
        remote = RedisCaps(client, node_id="bench")
        local = LocalCaps()
        result = {"redis_pairs_per_s": round(pairs_per_second(remote)),
                  "local_pairs_per_s": round(pairs_per_second(local)),
                  "baseline_incr_decr_pairs_per_s": round(incr_decr_per_second(client))}
        result["ratio_redis_vs_incr_decr"] = round(
            result["redis_pairs_per_s"] / result["baseline_incr_decr_pairs_per_s"], 3)
        result["ratio_local_vs_redis"] = round(
            result["local_pairs_per_s"] / result["redis_pairs_per_s"], 1)
        result["redis_acquire_us_4_scopes_cps"] = acquire_latency_us(remote)
        result["local_acquire_us_4_scopes_cps"] = acquire_latency_us(local)
        print(f"pairs/s: redis {result['redis_pairs_per_s']}, local "
              f"{result['local_pairs_per_s']}, INCR+DECR {result['baseline_incr_decr_pairs_per_s']}",
              flush=True)
        b = burst(url)
        print(f"burst: {b}", flush=True)
        result.update({"over_admissions": b["over_admissions"], "burst": b,
                       "machine": f"{platform.machine()} {os.cpu_count()} cpu, "
                                  f"Python {platform.python_version()}, "
                                  f"redis {client.info('server')['redis_version']}"})
        print(json.dumps(result))
        return 0 if b["over_admissions"] == 0 and b["left_held"] == 0 else 1
    finally:
        if server:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
