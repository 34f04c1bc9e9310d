"""LCR from memory against the same lookup done the way mod_lcr does it, in SQL (DESIGN §8).

    python benchmarks/lcr.py            # 3 carriers x 1,000,000 prefixes, < 2 minutes
    python benchmarks/lcr.py --full     # more numbers and a longer SQL run
    python benchmarks/lcr.py --prefixes 100000   # quick look

PostgreSQL: SWITCHD_TEST_DATABASE_URL if set (a scratch database is created and dropped),
else an embedded server in a temporary directory. The last line printed is one JSON object.

Figures (same run, same PostgreSQL):
  import_s            importing the three CSV decks with switchd.rates_import
  deck_load_s         PostgreSQL -> three RateDecks (switchd.deck_loader.load_all_decks)
  deck_rss_mb         process RSS growth from loading them
  decisions_per_s     per random number: longest-prefix lookup in each carrier's deck,
                      then the cheapest pick (the in-process LCR lookup)
  sql_baseline_per_s  the same per number as one SQL query over the enumerated prefixes
                      (mod_lcr: prefix IN ('4','44','442',...), ORDER BY length DESC, rate)
  ratio               decisions_per_s / sql_baseline_per_s
Other measurements (full routing decision, HTTP) plug in as further measure_* functions.
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
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import psycopg  # noqa: E402

import _decks  # noqa: E402
from dialplan.ratedeck import lookup_all  # noqa: E402
from switchd.db.migrate import apply_migrations  # noqa: E402
from switchd.deck_loader import load_all_decks  # noqa: E402
from switchd.rates_import import import_rates  # noqa: E402

CARRIERS = ("carrier_a", "carrier_b", "carrier_c")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


@contextmanager
def database(workdir: Path):
    """A scratch database URL: on SWITCHD_TEST_DATABASE_URL's server, or embedded."""
    external = os.environ.get("SWITCHD_TEST_DATABASE_URL")
    if not external:
        from switchd.db.embedded import start_embedded_postgres
        yield start_embedded_postgres(workdir, database="lcr_bench", cleanup="delete")
        return
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
    name = "lcr_bench_" + uuid.uuid4().hex[:8]
    with psycopg.connect(external, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(**{**conninfo_to_dict(external), "dbname": name})
    finally:
        with psycopg.connect(external, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                         .format(sql.Identifier(name)))


def setup_world(url: str) -> None:
    apply_migrations(url)
    with psycopg.connect(url, autocommit=True) as conn:
        for i, name in enumerate(CARRIERS):
            conn.execute("INSERT INTO carriers (name, priority) VALUES (%s, %s)",
                         (name, 100 + i))


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


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="more numbers, longer SQL run")
    ap.add_argument("--prefixes", type=int, default=1_000_000, help="per carrier")
    ap.add_argument("--numbers", type=int, default=None, help="in-process lookups")
    args = ap.parse_args(argv)
    count = args.numbers or (1_000_000 if args.full else 200_000)
    sql_budget = 20.0 if args.full else 5.0
    at = datetime.now(timezone.utc)
    result: dict = {"benchmark": "lcr", "carriers": len(CARRIERS),
                    "prefixes_per_carrier": args.prefixes}
    with tempfile.TemporaryDirectory(prefix="switchd-lcr-") as tmp, database(Path(tmp)) as url:
        setup_world(url)
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
    result["ratio"] = round(result["decisions_per_s"] / result["sql_baseline_per_s"], 1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
