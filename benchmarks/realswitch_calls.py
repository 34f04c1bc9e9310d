"""Whole calls through a real FreeSWITCH 1.10 driven by sipp: switchd's CPU per call against
the switch's own, and whether switchd keeps up (routes every call, answers /readyz, stores
every CDR) as the call rate rises.

    python benchmarks/realswitch_calls.py                        (20 then 50 calls/s, ~1 min)
    python benchmarks/realswitch_calls.py --rates 20,50,80 --seconds 30

Needs `freeswitch` (1.10, with mod_xml_curl and mod_json_cdr) and `sipp` on PATH, as
`../shared/realswitch/install.sh` installs them; without them it says so and exits 2. It
uses the real-switch suite's harness (tests/realswitch/): one FreeSWITCH, three sipp
carriers, a sipp caller, and `switchd run` routing every call over mod_xml_curl, tracking it
over ESL and taking every leg's CDR from mod_json_cdr, on a scratch PostgreSQL
(SWITCHD_TEST_DATABASE_URL's server if set, else an embedded one). Loopback ports start at
SWITCHD_TEST_PORT_BASE (default 40000; 3000 ports: its RTP range is widened for the
calls up at once).

Each step: sipp places `rate × seconds` calls to a French number (bravo, the cheapest
carrier, answers each; the caller hangs up after 2 s). Measured per step:

- ``switchd_cpu_ms_per_call``: user + system CPU of the switchd process from the first call
  to the last CDR stored, over the calls FreeSWITCH carried; ``freeswitch_cpu_ms_per_call``
  the same for FreeSWITCH, and ``ratio`` switchd's over FreeSWITCH's (the comparable
  figure: absolute CPU differs 2x between our machines);
- ``routed``: calls FreeSWITCH bridged to a carrier, of those sipp placed (a lookup switchd
  does not answer in time falls through to the static dialplan, which answers 503);
- ``cdrs``: calls whose row in ``calls`` (one per call) FreeSWITCH's own CDR settled, of the
  A-legs FreeSWITCH reported hung up, and ``cdr_lag_s``: from the last hangup FreeSWITCH
  reported to the moment the last of those rows was there;
- ``readyz_max_ms``: the slowest answer to ``GET /readyz``, asked every 100 ms during the
  step; ``routing_p99_ms``: the p99 of ``switchd_routing_decision_seconds`` over the step
  (the histogram bucket it falls in); ``esl_events_per_call``: the ESL events switchd
  received over the step (``switchd_esl_events_total``), per call carried.

The last stdout line is one JSON object: the highest step that routed every call and stored
every CDR (``calls_per_s``, its ``switchd_cpu_ms_per_call``, ``freeswitch_cpu_ms_per_call``,
``ratio``) and every step's figures under ``steps``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))

FRANCE = "+33142685300"        # bravo answers (tests/realswitch/world.py)
HOLD_MS = 2000
ROUTING = "switchd_routing_decision_seconds"
PASSWORD = "rs-bench"


def log(msg: str) -> None:
    print(msg, flush=True)


def scrape(base_url: str) -> dict[tuple, float]:
    """Every sample on switchd's /metrics: (name, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(base_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def histogram(samples: dict[tuple, float], name: str) -> dict[float, float]:
    """Cumulative bucket counts of one histogram (upper bound -> count)."""
    buckets: dict[float, float] = {}
    for (sample, labels), value in samples.items():
        if sample == name + "_bucket":
            bound = float(dict(labels)["le"])
            buckets[bound] = buckets.get(bound, 0.0) + value
    return buckets


def counted(before: dict[tuple, float], after: dict[tuple, float], name: str) -> dict[str, int]:
    """What a counter family counted between two scrapes, by its labels' values."""
    return {",".join(v for _, v in labels) or "total": int(value - before.get((sample, labels), 0))
            for (sample, labels), value in after.items()
            if sample == name and value - before.get((sample, labels), 0)}


def p99_bucket(before: dict[float, float], after: dict[float, float]) -> float | None:
    """Upper bound (seconds) of the bucket holding the p99 of what was observed between two
    scrapes; None when nothing was."""
    delta = {le: after.get(le, 0.0) - before.get(le, 0.0) for le in after}
    total = delta.get(float("inf"), 0.0)
    if total <= 0:
        return None
    for le in sorted(delta):
        if delta[le] >= 0.99 * total:
            return le
    return float("inf")


class ReadyzProbe:
    """Asks /readyz every 100 ms in a thread; keeps the slowest answer (a failure or a
    timeout counts as 5 s)."""

    def __init__(self, base_url: str):
        self.url, self.slowest, self.failures = base_url + "/readyz", 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            began = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    response.read()
                took = time.monotonic() - began
            except OSError:
                self.failures += 1
                took = 5.0
            self.slowest = max(self.slowest, took)

    def __enter__(self) -> "ReadyzProbe":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_step(switch, daemon, rate: int, seconds: int) -> dict:
    """One step at `rate` calls/s; see the module docstring for what it measures."""
    from _env import cpu_seconds
    switch.reset()
    count = rate * seconds
    known = {h.uuid for h in switch.hangups()}
    metrics_before = scrape(daemon.process.base_url)
    switchd_pid, fs_pid = daemon.process.proc.pid, switch.fs_pid
    cpu_before = cpu_seconds(switchd_pid), cpu_seconds(fs_pid)
    with ReadyzProbe(daemon.process.base_url) as probe:
        load = switch.load_async(FRANCE, rate=rate, count=count, hold_ms=HOLD_MS,
                                 limit=max(200, rate * 4)).wait(timeout=seconds * 20 + 120)
        poll_until(lambda: _a_legs(switch, known) if switch.channel_count() == 0 else None, 60)
        a_legs = _a_legs(switch, known)
        last_hangup = time.monotonic()
        uuids = [h.uuid for h in a_legs]
        settled = poll_until(lambda: _settled(daemon, uuids), 30, want=len(uuids))
        cdr_lag = time.monotonic() - last_hangup
    cpu_after = cpu_seconds(switchd_pid), cpu_seconds(fs_pid)
    metrics_after = scrape(daemon.process.base_url)
    carried = len(a_legs)
    bridged = sum(1 for h in switch.hangups()
                  if h.uuid not in known and h.direction == "outbound" and h.billmsec > 0)
    p99 = p99_bucket(histogram(metrics_before, ROUTING), histogram(metrics_after, ROUTING))
    step = {
        "rate": rate, "placed": count, "answered_by_sipp": load.answered,
        "rejected_by_code": {str(k): v for k, v in sorted(load.rejected.items())},
        "carried": carried, "routed": bridged, "cdrs": settled,
        "cdr_lag_s": round(cdr_lag, 2),
        "switchd_cpu_ms_per_call": round(1000 * (cpu_after[0] - cpu_before[0]) / max(carried, 1), 3),
        "freeswitch_cpu_ms_per_call": round(1000 * (cpu_after[1] - cpu_before[1]) / max(carried, 1), 3),
        "readyz_max_ms": round(probe.slowest * 1000, 1), "readyz_failures": probe.failures,
        "routing_p99_ms": None if p99 is None else p99 * 1000,
        "dialplan_lookups": counted(metrics_before, metrics_after,
                                    "switchd_dialplan_requests_total"),
        "http_shed": counted(metrics_before, metrics_after,
                             "switchd_http_requests_shed_total"),
        "esl_events_per_call": round(sum(counted(metrics_before, metrics_after,
                                                 "switchd_esl_events_total").values())
                                     / max(carried, 1), 1),
    }
    step["ratio"] = round(step["switchd_cpu_ms_per_call"]
                          / max(step["freeswitch_cpu_ms_per_call"], 1e-9), 3)
    step["kept_up"] = (bridged == count and settled == carried == count
                       and probe.failures == 0)
    return step


def _a_legs(switch, known: set[str]):
    """The caller legs FreeSWITCH reported hung up in this step."""
    return [h for h in switch.hangups() if h.direction == "inbound" and h.uuid not in known]


def _settled(daemon, uuids: list[str]) -> int:
    """How many of these calls have their `calls` row (one per call: its key) settled by
    FreeSWITCH's own CDR."""
    rows = daemon.rows("SELECT count(*) FROM calls WHERE call_uuid = ANY(%s)"
                       " AND cdr_source = 'switch' AND NOT provisional"
                       " AND ended_at IS NOT NULL", uuids)
    return rows[0][0]


def poll_until(probe, timeout: float, want=None):
    """Poll `probe` every 0.2 s until it returns something truthy (or `want`); its last
    value at the deadline otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        done = value == want if want is not None else bool(value)
        if done or time.monotonic() >= deadline:
            return value if value is not None else []
        time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="20,50",
                        help="call rates to step through, calls/s (default 20,50)")
    parser.add_argument("--seconds", type=int, default=15,
                        help="how long each step places calls (default 15)")
    parser.add_argument("--keep", metavar="DIR",
                        help="work in DIR and keep it (FreeSWITCH's, sipp's and switchd's "
                             "logs) instead of a temporary directory")
    parser.add_argument("--profile", metavar="FILE",
                        help="sample switchd's stacks during the last step into FILE "
                             "(benchmarks/_sampler.py; its CPU figures then include the "
                             "sampler's own cost)")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",") if r.strip()]

    from realswitch import fsconfig, fsharness, world
    reason = fsharness.skip_reason()
    if reason:
        print(f"realswitch_calls: cannot run: {reason}", file=sys.stderr)
        return 2
    from _env import machine, scratch_database
    from realswitch.backends import RsDaemon
    from switchd.adapters.db.migrate import apply_migrations
    from switchd.admin.provision import provision
    from switchd.admin.rates_import import import_rates

    log(f"machine: {machine()}")
    with (contextlib.nullcontext(args.keep) if args.keep
          else tempfile.TemporaryDirectory(prefix="switchd-rsbench-")) as tmp:
        work = Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        with scratch_database(work / "pg", "rsbench") as db_url:
            apply_migrations(db_url)
            world_path, decks = world.write(work / "world")
            provision(db_url, world_path)
            for carrier, path in decks.items():
                import_rates(db_url, path, carrier)
            plan = fsconfig.PortPlan.allocate()
            # Room for the highest rate: FreeSWITCH's throttle (a call is two sessions) and
            # RTP ports for every leg up at once (base+600 .. base+2999).
            plan.rtp_end = plan.rtp_start + 2399
            switch = fsharness.RealSwitch(work / "switch", esl_password=PASSWORD, plan=plan,
                                          cdr_url=f"http://127.0.0.1:{plan.http}/fs/cdr")
            switch.sessions_per_second = 4 * max(rates)
            switch.start()
            daemon = None
            try:
                python = None
                if args.profile:    # the sampler is the script: switchd must be importable
                    python = [sys.executable, str(HERE / "_sampler.py"),
                              str(Path(args.profile).resolve())]
                    os.environ["PYTHONPATH"] = os.pathsep.join(
                        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
                daemon = RsDaemon.start(switch, db_url, work / "daemon", None, True, python)
                steps = []
                for rate in rates:
                    log(f"step: {rate} calls/s for {args.seconds} s ...")
                    if args.profile:     # the profile keeps the last step alone
                        os.kill(daemon.process.proc.pid, signal.SIGUSR1)
                    step = run_step(switch, daemon, rate, args.seconds)
                    steps.append(step)
                    log("  " + json.dumps(step))
            finally:
                if daemon is not None:
                    daemon.process.terminate()
                switch.stop()
    best = max((s for s in steps if s["kept_up"]), key=lambda s: s["rate"], default=None)
    summary = {"calls_per_s": best["rate"] if best else 0,
               "switchd_cpu_ms_per_call": best and best["switchd_cpu_ms_per_call"],
               "freeswitch_cpu_ms_per_call": best and best["freeswitch_cpu_ms_per_call"],
               "ratio": best and best["ratio"], "steps": steps}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
