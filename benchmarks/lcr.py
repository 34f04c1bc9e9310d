"""LCR from memory against the same lookup done the way mod_lcr does it, in SQL (DESIGN §8).

    python benchmarks/lcr.py            # 3 carriers x 1,000,000 prefixes, < 2 minutes
    python benchmarks/lcr.py --full     # more numbers and a longer SQL run
    python benchmarks/lcr.py --prefixes 100000   # quick look

PostgreSQL: SWITCHD_TEST_DATABASE_URL if set (a scratch database is created and dropped),
else an embedded server in a temporary directory. The last line printed is one JSON object.

Figures (same run, same PostgreSQL):
  import_s            importing the three CSV decks with switchd.admin.rates_import
  deck_load_s         PostgreSQL -> three RateDecks (switchd.routing.deck_loader.load_all_decks)
  deck_rss_mb         process RSS growth from loading them
  decisions_per_s     per random number: longest-prefix lookup in each carrier's deck,
                      then the cheapest pick (the in-process LCR lookup)
  sql_baseline_per_s  the same per number as one SQL query over the enumerated prefixes
                      (mod_lcr: prefix IN ('4','44','442',...), ORDER BY length DESC, rate)
  ratio               decisions_per_s / sql_baseline_per_s
  cold_decisions_per_s  THE HEADLINE: the whole routing decision on one core,
                      Router.route(form) over the captured mod_xml_curl form, each call a
                      number never seen before (the normalise cache emptied), carrier
                      health and tenant spend moving after every decision as real hangups
                      move them (one in 20 a carrier failure); World from PostgreSQL (demo
                      world + these decks), LocalCaps through CapsGate, XML answer rendered
  full_decisions_per_s  the same with the destinations repeating and nothing moving (a
                      steady state real traffic does not have; for comparison only)
  http_rps            POST /fs/dialplan on switchd.adapters.http.server.serve(HttpApp(...)) in its own
                      process (pinned to one CPU), the captured ~4.8 KB request, one new TCP
                      connection per request, load generator in another process (_http.py)
  bare_http_rps       the same load generator against a bare gevent.pywsgi app returning a
                      fixed XML answer of the same size; http_vs_bare = http_rps / bare
  http_p99_ms         p99 latency paced at half of http_rps (http_p99_at_rps; open loop,
                      from the scheduled start): half of what this machine just served,
                      not a fixed rate that is saturation on a slower machine
  generator_cpu_bare  the load generator's share of its core against the bare app; at
                      0.9 or more it is the limit (generator_limited), not the server
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import psycopg  # noqa: E402

import _decks  # noqa: E402
from _env import machine, scratch_database  # noqa: E402
from dialplan.ratedeck import lookup_all  # noqa: E402
from switchd.adapters.db.migrate import apply_migrations  # noqa: E402
from switchd.routing.deck_loader import load_all_decks  # noqa: E402
from switchd.admin.rates_import import import_rates  # noqa: E402

# The demo world's carriers (switchd/demo_world.py), each with a big synthetic deck.
CARRIERS = ("budgetel", "globex", "primo")
# Extra tenants like the demo's "acme", so the accountcode varies per call.
EXTRA_TENANTS = 4


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def setup_world(url: str, workdir: Path) -> None:
    """Schema, then the demo world (tenant acme, carriers budgetel/globex/primo, DIDs) plus
    a few more tenants, provisioned the way `switchd provision` does it."""
    from switchd.demo_world import WORLD_TOML
    from switchd.admin.provision import provision
    apply_migrations(url)
    acme = WORLD_TOML[:WORLD_TOML.index("[[carriers]]")]
    extra = "".join(acme.replace('"acme"', f'"bench{i}"') for i in range(1, EXTRA_TENANTS + 1))
    path = workdir / "world.toml"
    path.write_text(WORLD_TOML + "\n" + extra)
    provision(url, path)


def import_decks(url: str, workdir: Path, prefixes: int) -> dict:
    gen_s = import_s = 0.0
    rows = 0
    for seed, name in enumerate(CARRIERS, start=1):
        path = workdir / f"{name}.csv"
        t = time.perf_counter()
        _decks.write_deck_csv(path, prefixes, seed)
        gen_s += time.perf_counter() - t
        summary = import_rates(url, path, name)
        import_s += summary.seconds
        rows += summary.rows
        path.unlink()
        log(f"imported {name}: {summary.rows} rows in {summary.seconds:.1f}s")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE rates")           # the SQL baseline gets a fair plan
    return {"import_s": round(import_s, 2), "import_rows_per_s": round(rows / import_s),
            "generate_s": round(gen_s, 2)}


def measure_deck_load(url: str):
    gc.collect()
    before = rss_mb()
    with psycopg.connect(url) as conn:
        t = time.perf_counter()
        decks = load_all_decks(conn)
        load_s = time.perf_counter() - t
    gc.collect()
    return decks, {"deck_load_s": round(load_s, 2), "deck_rss_mb": round(rss_mb() - before, 1),
                   "prefixes": sum(len(d) for d in decks.values()),
                   "tariffs": sum(d.tariff_count for d in decks.values())}


def lcr_pick(carriers: list[str], decks: list, number: str, at: datetime):
    """Cheapest covering carrier for one number: the core of an LCR decision.
    lookup_all parses the number once for all the decks."""
    best = best_carrier = None
    for carrier, rate in zip(carriers, lookup_all(decks, number, at)):
        if rate is not None and (best is None or rate.rate_per_min < best.rate_per_min):
            best, best_carrier = rate, carrier
    return best_carrier, best


def measure_decisions(decks: dict, numbers: list[str], at: datetime) -> dict:
    carriers, deck_list = list(decks), list(decks.values())
    routed = 0
    t = time.perf_counter()
    for number in numbers:
        if lcr_pick(carriers, deck_list, number, at)[1] is not None:
            routed += 1
    elapsed = time.perf_counter() - t
    return {"decisions_per_s": round(len(numbers) / elapsed), "routed_share":
            round(routed / len(numbers), 3), "decision_us": round(elapsed / len(numbers) * 1e6, 2)}


_SQL_LCR = """
SELECT c.name, r.prefix, r.rate_per_min, r.connect_fee, r.initial_increment,
       r.subsequent_increment
FROM rates r JOIN rate_decks d ON d.id = r.deck_id JOIN carriers c ON c.id = d.carrier_id
WHERE r.deck_id = ANY(%(decks)s) AND r.prefix = ANY(%(prefixes)s)
  AND (r.effective_from IS NULL OR r.effective_from <= %(at)s)
  AND (r.effective_to IS NULL OR %(at)s < r.effective_to)
ORDER BY length(r.prefix) DESC, r.rate_per_min"""


def measure_sql_baseline(url: str, numbers: list[str], at: datetime,
                         budget_s: float) -> tuple[dict, list]:
    """mod_lcr's way: one query per number over its enumerated prefixes; the longest match
    per carrier is the first row seen for it, then the cheapest of those."""
    picks = []
    with psycopg.connect(url, autocommit=True) as conn:
        deck_ids = [r[0] for r in conn.execute(
            "SELECT DISTINCT ON (carrier_id) id FROM rate_decks "
            "WHERE effective_from <= now() ORDER BY carrier_id, effective_from DESC")]
        done = 0
        t = time.perf_counter()
        for number in numbers:
            rows = conn.execute(_SQL_LCR, {"decks": deck_ids, "at": at, "prefixes":
                                           [number[:i] for i in range(1, len(number) + 1)]},
                                prepare=True).fetchall()
            longest: dict[str, tuple] = {}
            for row in rows:
                longest.setdefault(row[0], row)
            best = min(longest.values(), key=lambda r: r[2], default=None)
            picks.append((best[0], best[1], best[2]) if best else None)
            done += 1
            if time.perf_counter() - t > budget_s:
                break
        elapsed = time.perf_counter() - t
    return {"sql_baseline_per_s": round(done / elapsed), "sql_numbers": done}, picks


def check_agreement(decks: dict, numbers: list[str], at: datetime, sql_picks: list) -> int:
    """Both methods must choose the same carrier, prefix and rate (ties: same rate)."""
    carriers, deck_list = list(decks), list(decks.values())
    mismatches = 0
    for number, want in zip(numbers, sql_picks):
        carrier, rate = lcr_pick(carriers, deck_list, number, at)
        got = (carrier, rate.prefix, rate.rate_per_min) if rate else None
        if (got is None) != (want is None) or (got and got[2] != want[2]):
            mismatches += 1
    return mismatches


# --- the full routing decision ------------------------------------------------------------
def build_router(url: str, decks: dict):
    """Router wired as switchd/daemon.py wires it, minus the network: World and carrier
    health from PostgreSQL, in-process caps, books, decks already in memory. Returns the
    router and its CapsGate (the caller releases each call, standing in for the hangup)."""
    from collections import deque

    from switchd.accounting.budgets import month_spend
    from switchd.routing.books import HealthBook, SpendBook, month_start
    from switchd.adapters.caps.local import LocalCaps
    from switchd.config import load_config
    from switchd.daemon import _health_from_rows, _routing_settings
    from switchd.adapters.db import store
    from switchd.calls.policing import CapsGate
    from switchd.routing.router import Router

    cfg = load_config(environ={})
    with psycopg.connect(url) as conn:
        world = store.load_world(conn)
        health = store.load_carrier_health(conn)
        now = datetime.now(timezone.utc)
        month = f"{now:%Y-%m}"
        spent = {t: v for (t, m), v in month_spend(conn, now).items() if m == month}
    caps = CapsGate(LocalCaps(ttl=cfg["caps.lease_seconds"]), cfg)
    # The daemon's record hands d.as_row() to the CDR writer's queue; the writer's database
    # work runs on its own greenlet, so the request path pays as_row() and an append.
    written: deque = deque(maxlen=10_000)
    router = Router(world=lambda: world, decks=lambda: decks,
                    health=HealthBook(_health_from_rows(health), cfg["routing.health_cooldown"]),
                    caps=caps,
                    spend=SpendBook({t.name: t.monthly_budget for t in world.tenants.values()},
                                    spent, month_start(now)),
                    settings=_routing_settings(cfg), record=lambda d: written.append(d.as_row()))
    return router, caps


def call_inputs(count: int) -> tuple[list[str], list[str], list[str]]:
    """(destinations, Unique-IDs, accountcodes) to cycle through, seeded."""
    import random
    rng = random.Random(11)
    accounts = ["acme"] + [f"bench{i}" for i in range(1, EXTRA_TENANTS + 1)]
    dests = list(dict.fromkeys(_decks.valid_destinations(count, seed=5)))   # no repeats
    return (dests,
            [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(len(dests))],
            accounts)


def measure_full_decision(router, caps, seconds: float, inputs) -> dict:
    """Router.route(form) back to back on this core for `seconds`; the form is the captured
    request's fields with Unique-ID, the destination fields and accountcode set per call."""
    from switchd.adapters.http.server import parse_form
    import _http
    dests, uuids, accounts = inputs
    form = parse_form(_http.captured_request()[1])
    n, routed, results = 0, 0, {}
    count, acc = len(dests), len(accounts)
    gc.collect()
    t = time.perf_counter()
    deadline = t + seconds
    while True:
        for i in range(1000):
            j = n + i
            call_uuid = uuids[j % count]
            form["Unique-ID"] = form["Channel-Call-UUID"] = form["Caller-Unique-ID"] = call_uuid
            form["Caller-Destination-Number"] = form["Hunt-Destination-Number"] = dests[j % count]
            form["variable_accountcode"] = accounts[j % acc]
            decision = router.route(form)
            caps.release_now(decision.call_uuid)     # the hangup, so caps never fill
            if decision.result == "routed":
                routed += 1
            results[decision.reason if decision.result != "routed" else "routed"] = \
                results.get(decision.reason if decision.result != "routed" else "routed", 0) + 1
        n += 1000
        if time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - t
    refused = {k: v for k, v in sorted(results.items(), key=lambda kv: -kv[1]) if k != "routed"}
    return {"full_decisions_per_s": round(n / elapsed), "full_decision_us":
            round(elapsed / n * 1e6, 1), "full_routed_share": round(routed / n, 3),
            "full_refusals_top": dict(list(refused.items())[:3])}


def measure_cold_decision(router, caps, inputs) -> dict:
    """The headline: one pass over distinct destinations (no number repeats; the normalise
    cache emptied first, so every number goes through phonenumbers), with health and spend
    moving as real traffic moves them: after each routed decision the chosen carrier's
    health records the leg's outcome (one in 20 a carrier failure) and the tenant's spend
    grows by a call's cost, outside the timed part."""
    from decimal import Decimal
    from dialplan import numbers
    from switchd.adapters.http.server import parse_form
    import _http
    dests, uuids, accounts = inputs
    form = parse_form(_http.captured_request()[1])
    numbers._cached.cache_clear()
    health, spend = router.health, router.spend
    cost = Decimal("0.0123")
    gc.collect()
    timed = 0.0
    for j in range(len(dests)):
        form["Unique-ID"] = form["Channel-Call-UUID"] = form["Caller-Unique-ID"] = uuids[j]
        form["Caller-Destination-Number"] = form["Hunt-Destination-Number"] = dests[j]
        form["variable_accountcode"] = accounts[j % len(accounts)]
        t = time.perf_counter()
        decision = router.route(form)
        timed += time.perf_counter() - t
        caps.release_now(decision.call_uuid)
        if decision.result == "routed" and decision.chosen and "carrier" in decision.chosen[0]:
            now = datetime.now(timezone.utc)
            failed = j % 20 == 0
            health.record_leg(decision.chosen[0]["carrier"],
                              "NORMAL_TEMPORARY_FAILURE" if failed else "NORMAL_CLEARING",
                              503 if failed else 200, not failed, now)
            spend.add(decision.tenant, cost, now)
    return {"cold_decisions_per_s": round(len(dests) / timed),
            "cold_decision_us": round(timed / len(dests) * 1e6, 1)}


def profile_full_decision(router, caps, inputs) -> None:
    import cProfile
    import io
    import pstats
    measure_full_decision(router, caps, 1.0, inputs)     # warm: profile the steady state
    prof = cProfile.Profile()
    prof.runcall(measure_full_decision, router, caps, 2.0, inputs)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(30)
    log(out.getvalue())


# --- HTTP ---------------------------------------------------------------------------------
def start_switchd_http(router, caps, cpu: int | None) -> tuple[int, int]:
    """Fork a process that serves POST /fs/dialplan with this router (decks shared
    copy-on-write); return (pid, port). The caller kills it by pid."""
    import gevent
    read_fd, write_fd = os.pipe()
    pid = gevent.fork()
    if pid == 0:                                      # child: serve until killed
        try:
            os.close(read_fd)
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})
            from switchd.adapters.http.server import HttpApp, serve

            def route_lookup(form: dict) -> str:
                decision = router.route(form)
                caps.release_now(decision.call_uuid)  # the hangup, so caps never fill
                return decision.xml
            server = serve(HttpApp(route_lookup=route_lookup), "127.0.0.1", 0)
            os.write(write_fd, f"{server.server_port}\n".encode())
            os.close(write_fd)
            gevent.wait()
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        port = int(f.readline())
    return pid, port


def start_bare_http(answer: str, workdir: Path, cpu: int | None):
    import subprocess
    path = workdir / "answer.xml"
    path.write_text(answer)
    proc = subprocess.Popen([sys.executable, str(HERE / "_http.py"), "bare", str(path)]
                            + ([str(cpu)] if cpu is not None else []),
                            stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def run_load(spec: dict, workdir: Path) -> dict:
    import subprocess
    path = workdir / "load.json"
    path.write_text(json.dumps(spec))
    out = subprocess.run([sys.executable, str(HERE / "_http.py"), "load", str(path)],
                         capture_output=True, text=True, timeout=spec["seconds"] + 60)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_http(router, caps, inputs, workdir: Path, seconds: float) -> dict:
    """Server on CPU 0, load generator on CPU 1 (when there are two): one core each."""
    from switchd.adapters.http.server import parse_form
    import _http
    two = (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity")
    server_cpu, load_cpu = (0, 1) if two else (None, None)
    dests, _, accounts = inputs
    sample = router.route({**parse_form(_http.captured_request()[1]),
                           "variable_accountcode": "acme",
                           "Caller-Destination-Number": "+12125550123"})
    caps.release_now(sample.call_uuid)
    base = {"destinations": dests, "accountcodes": accounts, "concurrency": 8,
            "cpu": load_cpu, "distinct": len(dests)}
    pid, port = start_switchd_http(router, caps, server_cpu)
    bare, bare_port = start_bare_http(sample.xml, workdir, server_cpu)
    try:
        switchd = run_load({**base, "port": port, "mode": "closed", "seconds": seconds},
                           workdir)
        log(f"switchd http: {switchd}")
        plain = run_load({**base, "port": bare_port, "mode": "closed", "seconds": seconds},
                         workdir)
        log(f"bare http: {plain}")
        # Latency at half the capacity just measured: a fixed rate would be saturation on
        # a slower machine and idling on a faster one.
        half = max(1, switchd["rps"] // 2)
        paced = run_load({**base, "port": port, "mode": "paced", "rate": half,
                          "concurrency": 64, "seconds": seconds}, workdir)
        log(f"switchd paced at {half}/s: {paced}")
        if plain["generator_cpu"] >= 0.9:
            log("WARNING: the load generator used {:.0%} of its core against the bare app: "
                "it may be the ceiling of bare_http_rps".format(plain["generator_cpu"]))
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        bare.kill()
        bare.wait()
    return {"http_rps": switchd["rps"], "bare_http_rps": plain["rps"],
            "http_vs_bare": round(switchd["rps"] / plain["rps"], 2),
            "http_p50_ms_closed": switchd["p50_ms"], "http_errors": switchd["errors"]
            + plain["errors"] + paced["errors"], "http_p99_ms": paced["p99_ms"],
            "http_p50_ms": paced["p50_ms"], "http_paced_rps": paced["rps"],
            "http_p99_at_rps": half, "generator_cpu_bare": plain["generator_cpu"],
            "generator_limited": plain["generator_cpu"] >= 0.9,
            "answer_bytes": len(sample.xml.encode())}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="more numbers, longer SQL run")
    ap.add_argument("--prefixes", type=int, default=1_000_000, help="per carrier")
    ap.add_argument("--numbers", type=int, default=None, help="in-process lookups")
    ap.add_argument("--seconds", type=float, default=None,
                    help="per full-decision and HTTP run (default 5, --full 15)")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile the full decision; top functions to stderr")
    args = ap.parse_args(argv)
    seconds = args.seconds or (15.0 if args.full else 5.0)
    count = args.numbers or (1_000_000 if args.full else 200_000)
    sql_budget = 20.0 if args.full else 5.0
    at = datetime.now(timezone.utc)
    result: dict = {"benchmark": "lcr", "cold_decisions_per_s": None, "carriers": len(CARRIERS),
                    "prefixes_per_carrier": args.prefixes}
    with tempfile.TemporaryDirectory(prefix="switchd-lcr-") as tmp, \
            scratch_database(Path(tmp), "lcr_bench") as url:
        setup_world(url, Path(tmp))
        result.update(import_decks(url, Path(tmp), args.prefixes))
        decks, figures = measure_deck_load(url)
        result.update(figures)
        log(f"loaded {figures['prefixes']} prefixes in {figures['deck_load_s']}s, "
            f"+{figures['deck_rss_mb']} MB RSS")
        numbers = _decks.random_numbers(count, seed=42)
        result.update(measure_decisions(decks, numbers, at))
        sql, picks = measure_sql_baseline(url, numbers, at, sql_budget)
        result.update(sql)
        result["mismatches"] = check_agreement(decks, numbers, at, picks)
        del numbers, picks
        router, caps = build_router(url, decks)
        inputs = call_inputs(20000 if args.full else 10000)
        if args.profile:
            profile_full_decision(router, caps, inputs)
        result.update(measure_cold_decision(router, caps, inputs))
        result.update(measure_full_decision(router, caps, seconds, inputs))
        log(f"routing decisions, cold (distinct numbers, health and spend moving): "
            f"{result['cold_decisions_per_s']}/s ({result['cold_decision_us']} us); "
            f"warm (numbers repeating, nothing moving): {result['full_decisions_per_s']}/s")
        result.update(measure_http(router, caps, inputs, Path(tmp), seconds))
    result["ratio"] = round(result["decisions_per_s"] / result["sql_baseline_per_s"], 1)
    result["machine"] = machine()
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
