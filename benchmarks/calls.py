"""Whole calls through the daemon at a set rate: CPU per call against a naive controller.

    python benchmarks/calls.py            # < 2 minutes: a rate search for each side
    python benchmarks/calls.py --full     # longer steps, finer search
    python benchmarks/calls.py --overload 800,1100,1500 --start 500 --seconds 5
                                          # switchd past capacity: what it takes, sheds

Three processes besides PostgreSQL (SWITCHD_TEST_DATABASE_URL's server, else an embedded
one in a temporary directory):

- the controller under test, pinned to CPU 0: `switchd run` (CDRs to PostgreSQL, caps in
  process), or the naive controller (`--role naive`): a bare gevent WSGI app answering a
  fixed bridge, greenswitch's InboundESL reading the same events, one autocommitted INSERT
  per leg's CHANNEL_HANGUP_COMPLETE;
- the load generator (`--role generator`), pinned to CPU 1: FreeSWITCH's side of each call.
  It listens for the controller's inbound ESL connection (auth, `event plain ...`, the
  `api` commands it sends on connect) and, per call at the step's rate: CHANNEL_CREATE of
  the A-leg, the real mod_xml_curl POST (tests/fixtures/freeswitch-1.10's captured form,
  a distinct destination, the tenant's accountcode; one new TCP connection, as libcurl
  does), then the events FreeSWITCH sends for the call on the controller's subscription
  with the variables of the answer it got (the B-leg's CREATE and ANSWER, the A-leg's
  ANSWER and BRIDGE; after the hold time both legs' HANGUP and HANGUP_COMPLETE). The event
  bytes are the simulator's renderings of the captured events (switchd/sim), full size,
  rendered once with marker values that are replaced per call: no rendering in the loop.
  One call in 20 is a carrier failure (the B-leg ends 503 unanswered, the caller hangs
  up), so carrier health moves both ways; every answered call costs money, so spend moves.
  Calls are held for `--hold` seconds, so caps hold that many seconds × rate slots.

Each side's search starts with a warm-up step (WARMUP_S at --start, not counted): a fresh
process's first calls pay one-off costs a long-running daemon pays once.

A step passes when every call was routed (a bridge, not a refusal), p99 dialplan latency
(from the scheduled start) is under 20 ms, every CDR is in PostgreSQL within 2 s of its
hangup (polled every 0.2 s) and the event lag is under 1 s. Event lag: how late the
generator's event writes complete against their schedule (the controller not reading
blocks them) plus the bytes waiting unread in the controller's socket (from
/proc/net/tcp) at the step's event byte rate. The rate search doubles from `--start`
until a step fails, then bisects. CPU per call: the controller process's user+system CPU
from the step's start until its last CDR is stored, over the calls, at the same rate for
both sides (the lower of the two sustained rates). The generator's own CPU is reported:
near 100 % of its core it would be the ceiling, and the run says so.

The last line is one JSON object: calls_per_s, cpu_ms_per_call, baseline_calls_per_s,
baseline_cpu_ms_per_call, ratio (ours over the baseline's; lower is better).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

PASSWORD = "BenchCon"
CARRIERS = ("budgetel", "globex", "primo")
TENANTS = ("acme", "bench1", "bench2", "bench3")


def log(msg: str) -> None:
    print(msg, flush=True)


# === the load generator (its own process) ===================================================
# Marker values in the rendered prototype, replaced per call (same length where it matters;
# Content-Length is computed after the replacement anyway).
A_UUID = b"aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
B_UUID = b"bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"
DEST = b"D9D9D9D9D9"
CREATED, ANSWERED, HUNGUP, EVENT_TS = (b"1000000000000001", b"1000000000000002",
                                       b"1000000000000003", b"1000000000000009")
SEQ = b"8888888888"
GW = b"Zgwmarkz"
BILLSEC, BILLMSEC = b"Zbillsecz", b"Zbillmsecz"
SET_LINE = b"variable_switchd_marker: Zsetvarsz\n"
LEG_LINE = b"variable_switchd_marker: Zlegvarsz\n"


def prototype_events() -> dict[str, bytes]:
    """The event bodies of one call, rendered by the simulator with marker values."""
    from switchd.sim import legs as L
    a = L.SimLeg(uuid=A_UUID.decode(), role="a", number=DEST.decode(), caller="1000",
                 call_uuid=A_UUID.decode(), created_us=int(CREATED))
    b = L.SimLeg(uuid=B_UUID.decode(), role="b", number=DEST.decode(), caller="1000",
                 call_uuid=A_UUID.decode(), gateway=GW.decode(),
                 vars=[("switchd_marker", "Zlegvarsz")], created_us=int(CREATED))
    setv = [("switchd_marker", "Zsetvarsz")]
    out = {}

    def put(key, leg, other, name=None, routed=True):
        headers = L.leg_event(key, leg, other, core_uuid="c0c0c0c0-c0c0-4c0c-8c0c-c0c0c0c0c0c0",
                              ts_us=int(EVENT_TS), a_uuid=A_UUID.decode(),
                              extra={"Event-Sequence": SEQ.decode(),
                                     "variable_billsec": BILLSEC.decode(),
                                     "variable_billmsec": BILLMSEC.decode()},
                              set_vars=setv if routed else None)
        from switchd.sim import wire
        out[name or key] = wire.serialize_event(headers)

    put("a.CHANNEL_CREATE", a, None, routed=False)
    put("b.CHANNEL_CREATE", b, a)
    b.answered_us = a.answered_us = int(ANSWERED)
    put("b.CHANNEL_ANSWER", b, a)
    put("a.CHANNEL_ANSWER", a, b)
    b.bridged_us = a.bridged_us = int(ANSWERED)
    put("a.CHANNEL_BRIDGE", a, b)
    b.hangup_us = a.hangup_us = int(HUNGUP)
    b.cause = a.cause = "NORMAL_CLEARING"
    b.sip_status = 200
    put("b.CHANNEL_HANGUP", b, a)
    put("b.CHANNEL_HANGUP_COMPLETE", b, a)
    put("a.CHANNEL_HANGUP", a, b)
    put("a.CHANNEL_HANGUP_COMPLETE", a, b)
    # The carrier failure: B rejected 503 unanswered, the caller gives up.
    fb = L.SimLeg(uuid=B_UUID.decode(), role="b", number=DEST.decode(), caller="1000",
                  call_uuid=A_UUID.decode(), gateway=GW.decode(),
                  vars=[("switchd_marker", "Zlegvarsz")], created_us=int(CREATED),
                  hangup_us=int(HUNGUP), cause="NORMAL_TEMPORARY_FAILURE", sip_status=503)
    fa = L.SimLeg(uuid=A_UUID.decode(), role="a", number=DEST.decode(), caller="1000",
                  call_uuid=A_UUID.decode(), created_us=int(CREATED), hangup_us=int(HUNGUP),
                  cause="ORIGINATOR_CANCEL")
    put("bfail.CHANNEL_HANGUP", fb, fa, "fail.b.CHANNEL_HANGUP")
    put("bfail.CHANNEL_HANGUP_COMPLETE", fb, fa, "fail.b.CHANNEL_HANGUP_COMPLETE")
    put("a.CHANNEL_HANGUP", fa, None, "fail.a.CHANNEL_HANGUP")
    put("a.CHANNEL_HANGUP_COMPLETE", fa, None, "fail.a.CHANNEL_HANGUP_COMPLETE")
    put("a.CHANNEL_HANGUP", fa, None, "refused.a.CHANNEL_HANGUP", routed=False)
    put("a.CHANNEL_HANGUP_COMPLETE", fa, None, "refused.a.CHANNEL_HANGUP_COMPLETE",
        routed=False)
    return out


_SET = re.compile(rb'application="set" data="(switchd_[a-z_]+|effective_caller_id_[a-z]+)=([^"]*)"')
_BRIDGE = re.compile(rb'application="bridge" data="(?:\[([^\]]*)\])?sofia/gateway/([^/"]+)/')


def answer_vars(xml: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(A-leg variable lines, B-leg variable lines, gateway) from an XML answer; None
    for a refusal (no bridge)."""
    from switchd.sim.wire import fs_url_encode
    bridge = _BRIDGE.search(xml)
    if bridge is None:
        return None
    a = b"".join(b"variable_%s: %s\n" % (k, fs_url_encode(v.decode()).encode())
                 for k, v in _SET.findall(xml))
    legs = b""
    if bridge.group(1):
        for pair in bridge.group(1).split(b","):
            k, _, v = pair.partition(b"=")
            legs += b"variable_%s: %s\n" % (k, fs_url_encode(v.decode()).encode())
    return a, legs, bridge.group(2)


def run_generator() -> None:
    from gevent import monkey
    monkey.patch_all()
    import random
    import socket
    import gevent
    from gevent.queue import Queue
    from _http import close_without_time_wait, request_factory
    import _decks

    if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > 1:
        os.sched_setaffinity(0, {1})
    proto = prototype_events()
    base = int(os.environ.get("SWITCHD_TEST_PORT_BASE") or 0)
    listener = socket.create_server(("127.0.0.1", base + 899 if base else 0))
    esl_port = listener.getsockname()[1]
    state = {"conns": [], "seq": 0, "late": [], "peer_port": None}
    outq: Queue = Queue()

    def esl_session(conn, addr):
        conn.sendall(b"Content-Type: auth/request\n\n")
        buf = b""
        subscribed = False
        while True:
            while b"\n\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    if conn in state["conns"]:
                        state["conns"].remove(conn)
                    return
                buf += chunk
            line, buf = buf.split(b"\n\n", 1)
            cmd = line.decode(errors="replace").strip()
            if cmd.startswith("auth "):
                ok = cmd[5:] == PASSWORD
                conn.sendall(b"Content-Type: command/reply\nReply-Text: %s\n\n"
                             % (b"+OK accepted" if ok else b"-ERR invalid"))
            elif cmd.startswith("event "):
                conn.sendall(b"Content-Type: command/reply\nReply-Text: +OK event listener "
                             b"enabled plain\n\n")
                if not subscribed:
                    subscribed = True
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
                    state["conns"].append(conn)
                    state["peer_port"] = addr[1]
            elif cmd.startswith("api "):
                what = cmd[4:]
                body = (b'{"row_count":0}' if what.startswith("show ")
                        else b"-ERR no gateways here" if "xmlstatus" in what else b"+OK\n")
                conn.sendall(b"Content-Type: api/response\nContent-Length: %d\n\n%s"
                             % (len(body), body))
            elif cmd.startswith("exit"):
                conn.sendall(b"Content-Type: command/reply\nReply-Text: +OK bye\n\n")
            else:
                conn.sendall(b"Content-Type: command/reply\nReply-Text: +OK\n\n")

    def accept():
        while True:
            conn, addr = listener.accept()
            gevent.spawn(esl_session, conn, addr)

    def writer():
        # One writer: frames of many calls are never interleaved, and everything queued
        # at a time leaves in one sendall.
        while True:
            items = [outq.get()]
            while not outq.empty():
                items.append(outq.get_nowait())
            data = b"".join(frame for _, frame in items)
            for conn in list(state["conns"]):
                try:
                    conn.sendall(data)
                except OSError:
                    state["conns"].remove(conn)
            done = time.perf_counter()
            state["late"].append(done - items[0][0])
            state["sent_bytes"] = state.get("sent_bytes", 0) + len(data)

    gevent.spawn(accept)
    gevent.spawn(writer)
    print(json.dumps({"esl_port": esl_port}), flush=True)

    from switchd.sim.wire import fs_url_encode
    build = request_factory()
    destinations = _decks.valid_destinations(20000, 11)
    rng = random.Random(5)

    def emit(body: bytes, subs: list[tuple[bytes, bytes]]) -> None:
        for old, new in subs:
            body = body.replace(old, new)
        state["seq"] += 1
        body = body.replace(SEQ, b"%010d" % state["seq"])
        outq.put((time.perf_counter(),
                  b"Content-Length: %d\nContent-Type: text/event-plain\n\n%s" % (len(body), body)))

    def http_post(port: int, request: bytes) -> bytes | None:
        s = socket.socket()
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(request)
            buf = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
                head, sep, rest = buf.partition(b"\r\n\r\n")
                if sep:
                    m = re.search(rb"(?i)content-length: *(\d+)", head)
                    if m and len(rest) >= int(m.group(1)):
                        break
            return buf if buf.startswith(b"HTTP/1.1 200") else None
        except OSError:
            return None
        finally:
            close_without_time_wait(s)

    def rx_queue() -> int:
        """Bytes the controller has not read yet from its ESL socket (/proc/net/tcp)."""
        port = state["peer_port"]
        if port is None:
            return 0
        try:
            for line in open("/proc/net/tcp").read().splitlines()[1:]:
                f = line.split()
                if int(f[1].split(":")[1], 16) == port and int(f[2].split(":")[1], 16) == esl_port:
                    return int(f[4].split(":")[1], 16)
        except OSError:
            pass
        return 0

    from gevent.fileobject import FileObjectPosix
    stdin = FileObjectPosix(os.dup(0), "rb")      # read without blocking the hub
    for line in iter(stdin.readline, b""):
        spec = json.loads(line)
        if spec.get("cmd") == "quit":
            return
        rate, seconds, hold = spec["rate"], spec["seconds"], spec["hold"]
        port = spec["http_port"]
        n = int(rate * seconds)
        accounts = spec["accountcodes"]
        calls = []
        for i in range(n):
            a = "%08x-%04x-4%03x-8%03x-%012x" % (rng.getrandbits(32), rng.getrandbits(16),
                                                rng.getrandbits(12), rng.getrandbits(12),
                                                rng.getrandbits(48))
            b = a[:24] + "%012x" % rng.getrandbits(48)
            dest = destinations[(spec["offset"] + i) % len(destinations)]
            subs = [(A_UUID, a.encode()), (B_UUID, b.encode()), (DEST, fs_url_encode(dest).encode())]
            calls.append((build(a, dest, accounts[i % len(accounts)]), subs, a,
                          rng.random() < 0.05))
        state["late"] = []
        results = {"routed": 0, "refused": 0, "failed_http": 0, "lat": [], "when": [],
                   "hangups": []}
        cpu0 = time.process_time()
        start = time.perf_counter() + 0.2
        lag_samples = []
        bytes0 = state.get("sent_bytes", 0)

        def call(i, request, subs, a_uuid, carrier_fails):
            scheduled = start + i / rate
            gevent.sleep(max(0.0, scheduled - time.perf_counter()))
            created = b"%d" % int(time.time() * 1e6)
            ts = [(CREATED, created), (EVENT_TS, created)]
            emit(proto["a.CHANNEL_CREATE"], subs + ts)
            reply = http_post(port, request)
            results["lat"].append(time.perf_counter() - scheduled)
            results["when"].append(scheduled - start)
            if reply is None:
                results["failed_http"] += 1
                found = None
            else:
                found = answer_vars(reply)
            if found is None:
                if reply is not None:
                    results["refused"] += 1
                now = b"%d" % int(time.time() * 1e6)
                t = subs + [(CREATED, created), (HUNGUP, now), (EVENT_TS, now),
                            (BILLSEC, b"0"), (BILLMSEC, b"0"), (ANSWERED, b"0")]
                emit(proto["refused.a.CHANNEL_HANGUP"], t)
                emit(proto["refused.a.CHANNEL_HANGUP_COMPLETE"], t)
                results["hangups"].append(time.perf_counter())
                return
            results["routed"] += 1
            a_vars, b_vars, gw = found
            routed = subs + [(SET_LINE, a_vars), (LEG_LINE, b_vars), (GW, gw), (CREATED, created)]
            emit(proto["b.CHANNEL_CREATE"], routed + [(EVENT_TS, created)])
            if carrier_fails:
                gevent.sleep(0.05)
                now = b"%d" % int(time.time() * 1e6)
                t = routed + [(HUNGUP, now), (EVENT_TS, now), (BILLSEC, b"0"),
                              (BILLMSEC, b"0"), (ANSWERED, b"0")]
                for key in ("fail.b.CHANNEL_HANGUP", "fail.b.CHANNEL_HANGUP_COMPLETE",
                            "fail.a.CHANNEL_HANGUP", "fail.a.CHANNEL_HANGUP_COMPLETE"):
                    emit(proto[key], t)
                results["hangups"].append(time.perf_counter())
                return
            answered_s = time.time()
            answered = b"%d" % int(answered_s * 1e6)
            t = routed + [(ANSWERED, answered), (EVENT_TS, answered)]
            for key in ("b.CHANNEL_ANSWER", "a.CHANNEL_ANSWER", "a.CHANNEL_BRIDGE"):
                emit(proto[key], t)
            gevent.sleep(hold)
            end_s = time.time()
            msec = int((end_s - answered_s) * 1000)
            end = b"%d" % int(end_s * 1e6)
            t = routed + [(ANSWERED, answered), (HUNGUP, end), (EVENT_TS, end),
                          (BILLSEC, b"%d" % (msec // 1000)), (BILLMSEC, b"%d" % msec)]
            for key in ("b.CHANNEL_HANGUP", "b.CHANNEL_HANGUP_COMPLETE", "a.CHANNEL_HANGUP",
                        "a.CHANNEL_HANGUP_COMPLETE"):
                emit(proto[key], t)
            results["hangups"].append(time.perf_counter())

        def sample():
            while True:
                lag_samples.append(rx_queue())
                gevent.sleep(0.2)
        sampler = gevent.spawn(sample)
        wall0 = time.time()
        greenlets = [gevent.spawn(call, i, *c) for i, c in enumerate(calls)]
        gevent.joinall(greenlets)
        while not outq.empty():
            gevent.sleep(0.01)
        gevent.sleep(0.05)
        sampler.kill()
        elapsed = time.perf_counter() - start
        byte_rate = max(1.0, (state.get("sent_bytes", 0) - bytes0) / max(elapsed, 1e-3))
        lat = sorted(results["lat"])
        # The slowest lookups and when in the step they were due: a cluster is a stall
        # (of the controller, or of the machine), spread ones are a queue.
        slowest = sorted(zip(results["lat"], results["when"]), reverse=True)[:8]
        late = sorted(state["late"])
        out = {"calls": n, "routed": results["routed"], "refused": results["refused"],
               "failed_http": results["failed_http"],
               "p50_ms": round(lat[len(lat) // 2] * 1000, 2) if lat else None,
               "p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000, 2) if lat else None,
               "slowest": [[round(w, 3), round(l * 1000, 1)] for l, w in slowest],
               "write_late_max_s": round(late[-1], 3) if late else 0,
               "unread_max_s": round(max(lag_samples or [0]) / byte_rate, 3),
               "event_bytes_per_call": round((state.get("sent_bytes", 0) - bytes0) / max(n, 1)),
               "generator_cpu": round((time.process_time() - cpu0) / max(elapsed, 1e-3), 2),
               "start_wall": wall0 + 0.2, "last_hangup_wall": wall0 + (max(results["hangups"]) - start + 0.2)
               if results["hangups"] else wall0,
               "hangup_walls": [wall0 + 0.2 + (h - start) for h in sorted(results["hangups"])]}
        out["event_lag_s"] = round(out["write_late_max_s"] + out["unread_max_s"], 3)
        print(json.dumps(out), flush=True)


# === the naive controller (its own process) =================================================
def run_naive(spec_path: str) -> None:
    from gevent import monkey
    monkey.patch_all()
    import gevent
    import psycopg
    from gevent.pywsgi import WSGIServer
    from greenswitch.esl import InboundESL

    spec = json.loads(Path(spec_path).read_text())
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    answer = spec["answer"].encode()
    headers = [("Content-Type", "text/xml")]

    def app(environ, start_response):
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response("200 OK", headers)
        return [answer]
    server = WSGIServer(("127.0.0.1", spec["http_port"]), app, log=None)
    server.start()
    db = psycopg.connect(spec["db_url"], autocommit=True)

    def on_hangup(event):
        h = event.headers
        db.execute("INSERT INTO naive_cdrs (leg_uuid, call_uuid, gateway, hangup_cause, billsec) "
                   "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                   (h.get("Unique-ID"), h.get("Channel-Call-UUID"),
                    h.get("variable_sip_gateway_name"), h.get("Hangup-Cause"),
                    int(h.get("variable_billsec") or 0)))
    esl = InboundESL("127.0.0.1", spec["esl_port"], PASSWORD, timeout=10)
    esl.register_handle("CHANNEL_HANGUP_COMPLETE", on_hangup)
    esl.connect()
    esl.send("event plain " + " ".join(spec["events"]))
    print("ready", flush=True)
    gevent.wait()


# === the orchestrator ======================================================================

def setup(url: str, workdir: Path, prefixes: int) -> None:
    from switchd.adapters.db.migrate import apply_migrations
    from switchd.admin.provision import provision
    from switchd.admin.rates_import import import_rates
    from switchd.demo_world import WORLD_TOML
    import _decks
    import psycopg
    apply_migrations(url)
    # The demo world with room for the load: caps far above what a step holds (they are
    # still checked and taken for every call) and a budget that does not run out.
    world = (WORLD_TOML.replace("max_concurrent = 200", "max_concurrent = 1000000")
             .replace("max_channels = 100", "max_channels = 1000000")
             .replace('monthly_budget = "5000.00"', 'monthly_budget = "100000000.00"'))
    acme = world[:world.index("[[carriers]]")]
    world += "\n" + "".join(acme.replace('"acme"', f'"{t}"') for t in TENANTS[1:])
    path = workdir / "world.toml"
    path.write_text(world)
    provision(url, path)
    for seed, name in enumerate(CARRIERS, start=1):
        csv = workdir / f"{name}.csv"
        _decks.write_deck_csv(csv, prefixes, seed)
        import_rates(url, csv, name)
        csv.unlink()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS naive_cdrs (leg_uuid text PRIMARY KEY, "
                     "call_uuid text, gateway text, hangup_cause text, billsec int, "
                     "stored_at timestamptz DEFAULT now())")


_NEXT_PORT = [0]
PROFILE = [None]        # --profile FILE: switchd under _sampler.py, one step, no search


def free_port() -> int:
    """A free loopback port: from SWITCHD_TEST_PORT_BASE upwards when it is set (a shared
    machine's port plan), else one the kernel picks."""
    import socket
    base = int(os.environ.get("SWITCHD_TEST_PORT_BASE") or 0)
    while True:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", base + 900 + _NEXT_PORT[0] if base else 0))
            except OSError:
                _NEXT_PORT[0] += 1
                continue
            _NEXT_PORT[0] += 1
            return s.getsockname()[1]


class Generator:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, __file__, "--role", "generator"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.esl_port = json.loads(self.proc.stdout.readline())["esl_port"]

    def step(self, spec: dict) -> dict:
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        try:
            self.proc.stdin.write('{"cmd": "quit"}\n')
            self.proc.stdin.flush()
            self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


def wait_http(port: int, path: str = "/healthz", timeout: float = 60) -> None:
    import urllib.request
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"nothing answers 200 on {path} of port {port}")


def start_switchd(url: str, workdir: Path, esl_port: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = dict(os.environ, SWITCHD_DATABASE_URL=url, SWITCHD_ESL_HOST="127.0.0.1",
               SWITCHD_ESL_PORT=str(esl_port), SWITCHD_ESL_PASSWORD=PASSWORD,
               SWITCHD_HTTP_PORT=str(port), SWITCHD_DATA_DIR=str(workdir / "data"),
               SWITCHD_CONFIG=str(workdir / "none.toml"), PYTHONPATH=str(ROOT))
    (workdir / "none.toml").write_text("")
    errlog = open(workdir / "switchd.log", "w")
    profile = [str(HERE / "_sampler.py"), PROFILE[0]] if PROFILE[0] else []
    proc = subprocess.Popen(["taskset", "-c", "0", sys.executable, *profile, "-m", "switchd.cli",
                             "run"],
                            env=env, stdout=errlog, stderr=subprocess.STDOUT, cwd=str(ROOT))
    try:
        wait_http(port, "/readyz", 120)
    except RuntimeError:
        proc.kill()
        log((workdir / "switchd.log").read_text()[-3000:])
        raise
    return proc, port


def start_naive(url: str, workdir: Path, esl_port: int, answer: str) -> tuple[subprocess.Popen, int]:
    from switchd.adapters.esl.events import SUBSCRIBED_EVENTS
    port = free_port()
    spec = workdir / "naive.json"
    spec.write_text(json.dumps({"http_port": port, "esl_port": esl_port, "db_url": url,
                                "answer": answer, "events": list(SUBSCRIBED_EVENTS)}))
    proc = subprocess.Popen([sys.executable, __file__, "--role", "naive", str(spec)],
                            stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("the naive controller did not start")
    wait_http(port, "/healthz", 30)       # any path: the bare app answers 200
    return proc, port


def count_stored(conn, table: str, key: str, since: float) -> int:
    return conn.execute(f"SELECT count(*) FROM {table} WHERE {key} >= to_timestamp(%s)",
                        (since,)).fetchone()[0]


def run_step(gen: Generator, pid: int, http_port: int, url: str, rate: float, seconds: float,
             hold: float, naive: bool, offset: int) -> dict:
    """One step at `rate`; CDRs counted by the rows stored since the step began."""
    import threading
    import psycopg
    from _env import cpu_seconds
    conn = psycopg.connect(url, autocommit=True)
    if naive:
        table, key, per_call = "naive_cdrs", "stored_at", 2       # a row per leg
    else:
        table, key, per_call = "calls", "ended_at", 1
    started = time.time()
    cpu0 = cpu_seconds(pid)
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def poll():
        while not done.is_set():
            # Rows of this step only: its calls end (and the naive rows are stored) after
            # it started, every row of the step before is in before it ends.
            samples.append((time.time(), count_stored(conn, table, key, started)))
            time.sleep(0.2)
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    out = gen.step({"rate": rate, "seconds": seconds, "hold": hold, "http_port": http_port,
                    "accountcodes": list(TENANTS), "offset": offset})
    expected = out["calls"] * per_call
    deadline = out["last_hangup_wall"] + 5.0
    while time.time() < deadline and (not samples or samples[-1][1] < expected):
        time.sleep(0.05)
    done.set()
    poller.join()
    stored_at_end = samples[-1][1] if samples else 0
    cpu = cpu_seconds(pid) - cpu0
    conn.close()
    # Late CDRs: any sample that saw fewer rows than the hangups 2 s before it.
    hangups = out.pop("hangup_walls")
    late = 0
    for t, count in samples:
        due = sum(1 for h in hangups if h <= t - 2.0) * per_call
        late = max(late, due - count)
    out.update({"rate": rate, "cdrs_stored": stored_at_end // per_call, "cdrs_late": late,
                "cpu_ms_per_call": round(cpu * 1000 / max(out["calls"], 1), 3)})
    out["ok"] = (out["routed"] == out["calls"] and out["p99_ms"] is not None
                 and out["p99_ms"] < 20 and late == 0 and stored_at_end >= expected
                 and out["event_lag_s"] < 1.0)
    return out


# A fresh process pays one-off costs on its first calls (imports, number metadata loaded
# per region on first use, first statements, caches filling): each side first gets this
# long at --start, not counted, on numbers the search's steps do not reach, so that every
# step measures the steady state a long-running controller works in.
WARMUP_S = 2.0
WARMUP_OFFSET = 15000


def search(gen, pid, port, url, args, naive: bool) -> tuple[float, list[dict]]:
    run_step(gen, pid, port, url, args.start, WARMUP_S, args.hold, naive, WARMUP_OFFSET)
    steps, best, fail = [], 0.0, None
    rate = args.start
    offset = 0
    while True:
        res = run_step(gen, pid, port, url, rate, args.seconds, args.hold, naive, offset)
        offset += res["calls"]
        steps.append(res)
        log(f"  {'naive' if naive else 'switchd'} {rate:>6.0f}/s: "
            f"{'ok  ' if res['ok'] else 'FAIL'} routed {res['routed']}/{res['calls']}, "
            f"p99 {res['p99_ms']} ms, CDRs late {res['cdrs_late']}, lag {res['event_lag_s']} s, "
            f"{res['cpu_ms_per_call']} CPU ms/call, generator {res['generator_cpu']:.0%}")
        if not res["ok"]:
            log("    slowest lookups (s into the step, ms): "
                + ", ".join(f"{w} s {ms}" for w, ms in res["slowest"]))
        if res["ok"]:
            best = rate
        else:
            fail = rate
        if fail is None:
            if rate >= args.max_rate:
                break
            rate = min(rate * 2, args.max_rate)
        else:
            if fail - best <= max(args.precision * fail, 25) or len(steps) >= args.max_steps:
                break
            rate = round((best + fail) / 2)
        if res["generator_cpu"] > 0.9:
            log("  the generator is near 100 % of its core: it may be the ceiling")
    return best, steps


def sample_answer(port: int) -> str:
    """The daemon's answer to one real lookup: the naive controller answers the same bytes."""
    import urllib.request
    from _http import request_factory
    req = request_factory()("0b0b0b0b-0b0b-4b0b-8b0b-0b0b0b0b0b0b", "+442079460000", "acme")
    head, body = req.split(b"\r\n\r\n", 1)
    r = urllib.request.Request(f"http://127.0.0.1:{port}/fs/dialplan", data=body,
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(r, timeout=5) as resp:
        return resp.read().decode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--role", choices=("generator", "naive"))
    ap.add_argument("spec", nargs="?")
    ap.add_argument("--full", action="store_true", help="longer steps, finer search")
    ap.add_argument("--start", type=float, default=100)
    ap.add_argument("--max-rate", type=float, default=3200)
    ap.add_argument("--seconds", type=float, default=None, help="length of a step")
    ap.add_argument("--hold", type=float, default=1.0, help="seconds a call stays answered")
    ap.add_argument("--prefixes", type=int, default=20000, help="per carrier deck")
    ap.add_argument("--profile", help="sample switchd's stacks at --start into this file (benchmarks/_sampler.py)")
    ap.add_argument("--overload", metavar="RATES",
                    help="switchd only, past capacity: one step at each of these "
                         "comma-separated rates (e.g. 800,1100,1500), and what it shed")
    args = ap.parse_args()
    PROFILE[0] = args.profile and str(Path(args.profile).resolve())
    if args.role == "generator":
        return run_generator()
    if args.role == "naive":
        return run_naive(args.spec)
    args.seconds = args.seconds or (10.0 if args.full else 3.0)
    args.precision = 0.05 if args.full else 0.15
    args.max_steps = 12 if args.full else 6
    if args.full:
        args.prefixes = max(args.prefixes, 200000)
    from _env import scratch_database
    with tempfile.TemporaryDirectory(prefix="switchd-calls-") as tmp:
        workdir = Path(tmp)
        with scratch_database(workdir, "calls_bench") as url:
            t = time.perf_counter()
            setup(url, workdir, args.prefixes)
            log(f"world and {len(CARRIERS)} decks of {args.prefixes} prefixes in "
                f"{time.perf_counter() - t:.1f}s")
            if args.overload:
                result = overload_run(url, workdir, args)
            else:
                result = (profile_run if PROFILE[0] else measure)(url, workdir, args)
    log(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; controller on CPU 0, generator on CPU 1")
    # The last line: every figure, ending with the four the issue names.
    last = {k: v for k, v in result.items()
            if k not in ("calls_per_s", "cpu_ms_per_call", "baseline_cpu_ms_per_call", "ratio")}
    for key in ("calls_per_s", "cpu_ms_per_call", "baseline_cpu_ms_per_call", "ratio"):
        if key in result:
            last[key] = result[key]
    print(json.dumps(last))


def profile_run(url: str, workdir: Path, args) -> dict:
    """One step at --start with switchd sampled; the profile is written at its exit. A
    warm-up step first, then SIGUSR1 discards its samples and start-up's: steady state only."""
    import signal
    gen = Generator()
    proc, port = start_switchd(url, workdir, gen.esl_port)
    try:
        warm = run_step(gen, proc.pid, port, url, args.start, 2.0, args.hold, False, 0)
        os.kill(proc.pid, signal.SIGUSR1)
        res = run_step(gen, proc.pid, port, url, args.start, args.seconds, args.hold, False,
                       warm["calls"])
    finally:
        proc.terminate()
        proc.wait(60)
        gen.close()
    return res


def overload_run(url: str, workdir: Path, args) -> dict:
    """One switchd, a warm-up step at --start, then a step at each --overload rate (calls
    it takes must still pass every criterion; the rest should be refused at once): each
    step's line, and the lookups it shed by reason (docs/benchmarks.md, past capacity)."""
    import urllib.request
    gen = Generator()
    proc, port = start_switchd(url, workdir, gen.esl_port)
    steps = []
    try:
        offset = 10 ** 6
        run_step(gen, proc.pid, port, url, args.start, WARMUP_S, args.hold, False, offset)
        for rate in (float(r) for r in args.overload.split(",")):
            offset += 10 ** 5
            res = run_step(gen, proc.pid, port, url, rate, args.seconds, args.hold, False,
                           offset)
            log(f"  switchd {rate:6.0f}/s: routed {res['routed']}/{res['calls']}, p50 "
                f"{res['p50_ms']} ms, p99 {res['p99_ms']} ms, CDRs late {res['cdrs_late']}, "
                f"lag {res['event_lag_s']} s, {res['cpu_ms_per_call']} CPU ms/call")
            steps.append({k: res[k] for k in ("rate", "calls", "routed", "p50_ms", "p99_ms",
                                               "cdrs_late", "event_lag_s", "cpu_ms_per_call")})
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    finally:
        proc.terminate()
        proc.wait(60)
        gen.close()
    shed = {m.group(1): float(m.group(2)) for m in re.finditer(
        r'switchd_http_requests_shed_total\{endpoint="dialplan",reason="(\w+)"\} (\S+)',
        text.decode())}
    return {"steps": steps, "dialplan_shed": shed}


def measure(url: str, workdir: Path, args) -> dict:
    gen = Generator()
    procs = []
    try:
        proc, port = start_switchd(url, workdir, gen.esl_port)
        procs.append(proc)
        answer = sample_answer(port)
        ours, our_steps = search(gen, proc.pid, port, url, args, naive=False)
        proc.terminate()
        proc.wait(30)
        nproc, nport = start_naive(url, workdir, gen.esl_port, answer)
        procs.append(nproc)
        base, base_steps = search(gen, nproc.pid, nport, url, args, naive=True)
        # CPU per call at the same rate for both: the lower sustained one.
        common = min(r for r in (ours, base) if r) if (ours and base) else args.start
        ours_at = next((s for s in our_steps if s["rate"] == common and s["ok"]), None)
        base_at = next((s for s in base_steps if s["rate"] == common and s["ok"]), None)
        if base_at is None:
            base_at = run_step(gen, nproc.pid, nport, url, common, args.seconds, args.hold,
                               True, 10 ** 6)
        nproc.terminate()
        nproc.wait(10)
        if ours_at is None:
            proc, port = start_switchd(url, workdir, gen.esl_port)
            procs.append(proc)
            ours_at = run_step(gen, proc.pid, port, url, common, args.seconds, args.hold,
                               False, 2 * 10 ** 6)
            proc.terminate()
            proc.wait(30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        gen.close()
    for who, step in (("switchd", ours_at), ("naive", base_at)):
        if not step["ok"]:
            # Its CPU per call is of a step that failed a criterion (refused calls cost
            # less than routed ones): say so rather than compare it silently.
            log(f"  the compared {who} step at {common:.0f}/s failed: routed "
                f"{step['routed']}/{step['calls']}, p99 {step['p99_ms']} ms")
    # What one core could carry if CPU were the only limit (1,000 ms / CPU ms per call):
    # on a shared box the latency criteria can fail for want of the core, not of speed.
    return {"compared_steps_ok": ours_at["ok"] and base_at["ok"],
            "calls_per_s": ours, "cpu_ms_per_call": ours_at["cpu_ms_per_call"],
            "baseline_calls_per_s": base,
            "baseline_cpu_ms_per_call": base_at["cpu_ms_per_call"],
            "ratio": round(ours_at["cpu_ms_per_call"] / base_at["cpu_ms_per_call"], 2),
            "cpu_bound_calls_per_s": round(1000 / max(ours_at["cpu_ms_per_call"], 1e-3)),
            "baseline_cpu_bound_calls_per_s": round(1000 / max(base_at["cpu_ms_per_call"], 1e-3)),
            "compared_at_calls_per_s": common, "hold_s": args.hold,
            "p99_ms": ours_at["p99_ms"], "baseline_p99_ms": base_at["p99_ms"],
            "event_bytes_per_call": ours_at["event_bytes_per_call"]}


if __name__ == "__main__":
    main()
