"""`switchd demo`: the whole path on embedded defaults, in one process.

Embedded PostgreSQL → migrations → a sample world and three rate decks → the daemon →
the FreeSWITCH simulator placing calls through mod_xml_curl and ESL → CDRs → a summary
read back from PostgreSQL (DESIGN.md §10). Simulated time runs fast, so calls of minutes
finish in a blink while their billing stays realistic.
"""
from __future__ import annotations

import json
import logging
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import gevent
import gevent.pool
import psycopg

from switchd.config import Config
from switchd.errors import CliError
from switchd.logs import setup_logging

log = logging.getLogger("switchd.demo")

DEMO_PASSWORD = "demo-secret"
TIME_SCALE = 400.0           # one simulated second lasts 2.5 ms
CONCURRENCY = 40
INBOUND_EVERY = 10           # every tenth call is an inbound DID call


def _gateway_behaviours():
    from switchd.sim.model import GatewayBehaviour
    return {
        # The cheapest carrier for the UK and the US fails a quarter of its calls with a 503,
        # so FreeSWITCH fails over to the next gateway of the bridge.
        "budgetel_gw1": GatewayBehaviour(fail_rate=0.25, sip_status=503, answer_delay_s=3.0),
        "globex_gw1": GatewayBehaviour(fail_rate=0.10, sip_status=503, answer_delay_s=2.0),
        "globex_gw2": GatewayBehaviour(answer_delay_s=2.5),
        "primo_gw1": GatewayBehaviour(answer_delay_s=1.5),
    }


def _prepare_database(data_dir: Path, keep: bool) -> str:
    from switchd.db.embedded import start_embedded_postgres
    from switchd.db.migrate import apply_migrations
    from switchd.demo_world import write_decks, write_world
    from switchd.provision import provision
    from switchd.rates_import import import_rates
    url = start_embedded_postgres(data_dir, database="switchd_demo",
                                  cleanup=None if keep else "delete")
    apply_migrations(url)
    with psycopg.connect(url, autocommit=True) as conn:     # a kept data dir starts over too
        conn.execute("TRUNCATE calls, call_legs, call_events, routing_decisions")
    provision(url, write_world(data_dir))
    for carrier, path in write_decks(data_dir / "decks").items():
        import_rates(url, path, carrier)
    return url


def _place_calls(sim, count: int, seed: int) -> list:
    from switchd.demo_world import pick_destination
    rng = random.Random(f"{seed}:demo")
    pool = gevent.pool.Pool(CONCURRENCY)
    calls = []

    def one(index: int):
        if index % INBOUND_EVERY == INBOUND_EVERY - 1:
            call = sim.place_call("+442079460100", caller="+12125550199")
        else:
            call = sim.place_call(pick_destination(rng), caller="1000", accountcode="acme")
        calls.append(call)
        call.wait(timeout=120)

    for index in range(count):
        pool.spawn(one, index)
    pool.join()
    return calls


def _wait_settled(daemon, timeout: float = 30.0) -> None:
    """Until every call the daemon tracked has ended and its CDR left the queue."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(daemon.registry) == 0 and daemon.writer.stats()["queue_depth"] == 0:
            return
        gevent.sleep(0.05)
    log.warning("demo: %d call(s) still tracked after %.0fs", len(daemon.registry), timeout)


def _wait_ready(daemon, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not daemon.readiness():
            return True
        gevent.sleep(0.02)
    return False


def run_demo(config: Config, calls: int, seed: int, data_dir: Path | None) -> dict:
    from switchd.daemon import Daemon
    from switchd.db import store
    from switchd.sim.simulator import Simulator
    keep = data_dir is not None
    workdir = Path(data_dir) if keep else Path(tempfile.mkdtemp(prefix="switchd-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        url = _prepare_database(workdir, keep)
        sim = Simulator(password=DEMO_PASSWORD, seed=seed, time_scale=TIME_SCALE,
                        gateways=_gateway_behaviours(), hold_range=(5.0, 600.0),
                        heartbeat_interval=None)
        host, port = sim.start()
        demo_config = config.with_overrides(**{
            "database.url": url, "redis.url": None, "data_dir": str(workdir),
            "esl.host": host, "esl.port": port, "esl.password": DEMO_PASSWORD,
            "http.host": "127.0.0.1", "http.port": 0})
        daemon = Daemon(demo_config, url, clock_us=sim.clock.now_us).start()
        try:
            if not _wait_ready(daemon, 15):
                raise CliError(f"the daemon did not get ready: {daemon.readiness()}")
            sim.dialplan_url = f"http://127.0.0.1:{daemon.http_port}/fs/dialplan"
            _place_calls(sim, calls, seed)
            _wait_settled(daemon)
        finally:
            daemon.stop()
            sim.stop()
        with psycopg.connect(url) as conn:
            summary = store.summary(conn)
        summary["elapsed_s"] = round(time.monotonic() - started, 2)
        return summary
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _print_table(summary: dict) -> None:
    print(f"calls {summary['calls']}: {summary['answered']} answered, {summary['failed']} failed, "
          f"{summary['failovers']} answered after failover")
    print(f"{'carrier':<12} {'calls':>6} {'answered':>9} {'billed s':>9} {'cost':>12}")
    for name, row in sorted(summary["by_carrier"].items()):
        print(f"{name:<12} {row['calls']:>6} {row['answered']:>9} {row['billed_seconds']:>9} {row['cost']:>12}")
    print(f"total cost {summary['total_cost']}; CDRs stored {summary['cdrs_stored']}; "
          f"{summary['elapsed_s']}s")


def main(config: Config, args) -> int:
    if args.calls < 1:
        raise CliError("--calls must be at least 1")
    setup_logging("warning", config["log.format"])
    summary = run_demo(config, args.calls, args.seed, args.data_dir and Path(args.data_dir))
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        _print_table(summary)
    sys.stdout.flush()
    return 0 if summary["cdrs_stored"] == summary["calls"] else 1
