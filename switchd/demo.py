"""`switchd demo`: the whole path on embedded defaults, in one process.

Embedded PostgreSQL → migrations → a sample world and three rate decks → the daemon →
the FreeSWITCH simulator placing calls through mod_xml_curl and ESL → CDRs → a summary
read back from PostgreSQL (DESIGN.md §10). Simulated time runs fast, so calls of minutes
finish in a blink while their billing stays realistic; it starts far enough in the past
that every call has ended before now, so `switchd report` sees them with its defaults.

The demo stops the PostgreSQL it started and removes its temporary directory; with
--keep or --data-dir the data stays, in the data directory layout every command reads
(`switchd report --data-dir DIR`).
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
from switchd.errors import CliError, UsageError
from switchd.logs import setup_logging

log = logging.getLogger("switchd.demo")

DEMO_PASSWORD = "demo-secret"
DEMO_CDR_CREDENTIALS = "freeswitch:demo-cdr-secret"   # mod_json_cdr's `cred` in the demo
TIME_SCALE = 400.0           # one simulated second lasts 2.5 ms
CONCURRENCY = 40
INBOUND_EVERY = 10           # every tenth call is an inbound DID call
DATABASE = "switchd"         # the name every command uses, so `report --data-dir` finds it
MARKER = ".switchd-demo"     # marks a data dir as the demo's: only those are wiped and reused
# Simulated seconds the demo may span per call placed (calls run CONCURRENCY at a time and
# last at most ~10 simulated minutes): the clock starts this far back, so that it stays
# behind the wall clock.
SIM_SECONDS_PER_CALL = 60
SIM_MIN_SPAN_S = 2 * 3600


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


def _check_data_dir(data_dir: Path) -> None:
    """Refuse to wipe a data directory that is not a demo's (a daemon's, say)."""
    if data_dir.exists() and not data_dir.is_dir():
        raise UsageError(f"--data-dir {data_dir}: not a directory")
    if (data_dir / "postgres").exists() and not (data_dir / MARKER).exists():
        raise UsageError(f"--data-dir {data_dir} holds a switchd database that a demo did not "
                         "create; the demo would wipe its calls: choose a new directory")


def _prepare_database(server, data_dir: Path) -> str:
    from switchd.adapters.db.migrate import apply_migrations
    from switchd.demo_world import write_decks, write_world
    from switchd.admin.provision import provision
    from switchd.admin.rates_import import import_rates
    url = server.url(DATABASE)
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


def sim_start_us(calls: int, now_s: float | None = None) -> int:
    """Where the simulated clock starts: far enough back that the demo's last call ends
    before the wall clock's now (checked again at the end)."""
    span = max(SIM_MIN_SPAN_S, calls * SIM_SECONDS_PER_CALL)
    return int(((time.time() if now_s is None else now_s) - span) * 1_000_000)


def run_demo(config: Config, calls: int, seed: int, data_dir: Path | None,
             keep: bool = False) -> dict:
    """Run the demo; the summary gains `data_dir` (where the data stays, or None)."""
    from switchd.daemon import Daemon
    from switchd.adapters.db.embedded import EmbeddedPostgres
    from switchd.sim.json_cdr import CdrSink
    from switchd.sim.simulator import Simulator
    if data_dir is not None:
        workdir = Path(data_dir).expanduser().resolve()
        _check_data_dir(workdir)
        keep = True
    else:
        workdir = Path(tempfile.mkdtemp(prefix="switchd-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("created by `switchd demo`; the demo may wipe this directory\n")
    server = EmbeddedPostgres(workdir)
    started_server = False
    started = time.monotonic()
    try:
        started_server = server.start()
        url = _prepare_database(server, workdir)
        sim = Simulator(password=DEMO_PASSWORD, seed=seed, time_scale=TIME_SCALE,
                        gateways=_gateway_behaviours(), hold_range=(5.0, 600.0),
                        heartbeat_interval=None, start_us=sim_start_us(calls))
        host, port = sim.start()
        for gateway in _gateway_behaviours():      # registered and up, as sofia reports
            sim.set_gateway_status(gateway, "UP")
        demo_config = config.with_overrides(**{
            "database.url": url, "redis.url": None, "data_dir": str(workdir),
            "esl.host": host, "esl.port": port, "esl.password": DEMO_PASSWORD,
            "cdr.credentials": DEMO_CDR_CREDENTIALS,
            "http.host": "127.0.0.1", "http.port": 0})
        daemon = Daemon(demo_config, url, clock_us=sim.clock.now_us).start()
        try:
            if not _wait_ready(daemon, 15):
                raise CliError(f"the daemon did not get ready: {daemon.readiness()}")
            sim.dialplan_url = f"http://127.0.0.1:{daemon.http_port}/fs/dialplan"
            # The simulated switch posts every leg's CDR, the record that settles the money.
            sim.set_cdr_sink(CdrSink(f"http://127.0.0.1:{daemon.http_port}/fs/cdr",
                                     credentials=DEMO_CDR_CREDENTIALS, delay_s=0.5,
                                     err_dir=workdir / "json_cdr"))
            _place_calls(sim, calls, seed)
            _wait_settled(daemon)
            if not sim.cdr_poster.wait_idle(30):
                log.warning("demo: the switch's CDRs were still being posted after 30s")
        finally:
            daemon.stop()
            sim.stop()
        if sim.clock.now_us() > time.time() * 1_000_000:
            log.warning("demo: simulated time overtook the wall clock; some calls are dated "
                        "in the future")
        with psycopg.connect(url) as conn:
            summary = demo_summary(conn)
        summary["elapsed_s"] = round(time.monotonic() - started, 2)
        summary["data_dir"] = str(workdir) if keep else None
        return summary
    finally:
        if started_server:
            server.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def demo_summary(conn) -> dict:
    """The DESIGN.md §10 summary plus what it leaves out: inbound calls (they reach no
    carrier, so `by_carrier` does not count them), the carrier attempts that failed before
    a failover, and the currency of the demo's decks."""
    from switchd.adapters.db import store
    from switchd.demo_world import CURRENCY
    summary = store.summary(conn)
    directions = dict(conn.execute("SELECT direction, count(*) FROM calls GROUP BY 1").fetchall())
    attempts, failed = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE answered_at IS NULL) FROM call_legs "
        "WHERE carrier IS NOT NULL").fetchone()
    summary.update(outbound=directions.get("outbound", 0), inbound=directions.get("inbound", 0),
                   attempts=attempts, failed_attempts=failed, currency=CURRENCY)
    return summary


def _print_table(summary: dict) -> None:
    currency = summary["currency"]
    print(f"calls {summary['calls']} ({summary['outbound']} outbound, {summary['inbound']} inbound): "
          f"{summary['answered']} answered, {summary['failed']} failed, "
          f"{summary['failovers']} answered after failover")
    print(f"carrier attempts {summary['attempts']}: {summary['failed_attempts']} failed "
          "and were followed by the next gateway of their route")
    print(f"{'carrier':<12} {'calls':>6} {'answered':>9} {'billed s':>9} {'cost ' + currency:>14}")
    for name, row in sorted(summary["by_carrier"].items()):
        print(f"{name:<12} {row['calls']:>6} {row['answered']:>9} {row['billed_seconds']:>9} "
              f"{row['cost']:>14}")
    print(f"total cost {summary['total_cost']} {currency}; CDRs stored {summary['cdrs_stored']}; "
          f"{summary['elapsed_s']}s")


def main(config: Config, args) -> int:
    if args.calls < 1:
        raise UsageError("--calls must be at least 1")
    setup_logging("warning", config["log.format"])
    data_dir = getattr(args, "data_dir", None)
    summary = run_demo(config, args.calls, args.seed, data_dir and Path(data_dir), keep=args.keep)
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        _print_table(summary)
    if summary["data_dir"]:
        print(f"demo data kept in {summary['data_dir']}; read it with "
              f"`switchd report --data-dir {summary['data_dir']}`", file=sys.stderr)
    sys.stdout.flush()
    if summary["cdrs_stored"] != summary["calls"]:
        raise CliError(f"{summary['calls']} calls placed but {summary['cdrs_stored']} CDRs "
                       "stored (see the warnings above)")
    return 0
