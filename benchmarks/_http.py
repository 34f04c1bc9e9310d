"""HTTP side of the LCR benchmark: the captured mod_xml_curl request, a load generator and
a bare gevent.pywsgi server to compare against.

    python benchmarks/_http.py bare ANSWER_FILE          # bare server; prints its port
    python benchmarks/_http.py load SPEC_JSON            # load generator; prints one JSON

The load generator is its own process (run by lcr.py), loopback only, raw gevent sockets,
one new TCP connection per request, as libcurl does for mod_xml_curl. Two modes:
  closed: `concurrency` connections back to back for `seconds` -> requests/s
  paced:  requests started at a fixed `rate` for `seconds` (open loop, at most
          `concurrency` in flight); latency counted from the scheduled start, so a stall
          shows up in the percentiles instead of slowing the schedule down.
"""
from __future__ import annotations

import json
import os
import random
import socket
import struct
import sys
import uuid
from pathlib import Path

FIXTURE = (Path(__file__).resolve().parents[1]
           / "tests/fixtures/freeswitch-1.10/xml-curl-dialplan-request.txt")
# Fields of the capture that carry the dialled number (value "1001" in http1).
DEST_FIELDS = ("Caller-Destination-Number", "Hunt-Destination-Number",
               "variable_sip_req_user", "variable_sip_to_user", "variable_sip_to_display")


def captured_request(conn: str = "http1") -> tuple[bytes, bytes]:
    """(header block without Content-Length, body) of the first C>S block of `conn`."""
    data = FIXTURE.read_bytes()
    pos = 0
    while True:
        end = data.index(b"\n", pos)
        line = data[pos:end].decode()
        pos = end + 1
        if line.startswith("@@ note"):
            continue
        fields = dict(f.split("=", 1) for f in line[3:].split() if "=" in f)
        n = int(fields["len"])
        block = data[pos:pos + n]
        pos += n + 1
        if fields["conn"] == conn and fields["dir"] == "C>S":
            head, body = block.split(b"\r\n\r\n", 1)
            lines = [h for h in head.split(b"\r\n")
                     if not h.lower().startswith(b"content-length:")]
            return b"\r\n".join(lines), body


def request_factory(conn: str = "http1"):
    """A function (unique_id, destination, accountcode) -> request bytes: the captured
    request with its UUID everywhere it appears, the dialled number in each destination
    field, and variable_accountcode (which a tenant's channel carries) appended."""
    head, body = captured_request(conn)
    text = body.decode()
    old_uuid = dict(p.split("=", 1) for p in text.split("&"))["Unique-ID"]
    pairs = text.split("&")
    parts: list = []          # str pieces and markers: 'U' uuid, 'D' destination
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key in DEST_FIELDS:
            parts.append(key + "=")
            parts.append(("D",))
        elif old_uuid in value:
            for j, piece in enumerate(pair.split(old_uuid)):
                if j:
                    parts.append(("U",))
                parts.append(piece)
        else:
            parts.append(pair)
        parts.append("&")
    parts[-1] = "&variable_accountcode="
    parts.append(("A",))

    def build(unique_id: str, destination: str, accountcode: str) -> bytes:
        sub = {"U": unique_id, "D": _quote(destination), "A": accountcode}
        payload = "".join(p if isinstance(p, str) else sub[p[0]] for p in parts).encode()
        return (head + b"\r\nContent-Length: " + str(len(payload)).encode() + b"\r\n\r\n"
                + payload)
    return build


def _quote(value: str) -> str:
    # mod_xml_curl %-encodes; a leading '+' of an E.164 number stays a literal '+'.
    return value.replace("%", "%25").replace(" ", "%20").replace("&", "%26")


# --- load generator (its own process) ------------------------------------------------------
_LINGER_RESET = struct.pack("ii", 1, 0)


def close_without_time_wait(sock) -> None:
    """Close a client socket with a reset instead of a FIN. The client closes first (as
    libcurl does), so every request would leave a TIME_WAIT on the generator's side: at a
    few hundred requests a second, tens of thousands in the 60 s they last, and connect()
    then spends ever longer finding a free local port. The server, which has answered by
    then, sees its next read end as at a close. Without this, the p99 of the same rate
    climbed from 7.5 to 24 ms over six 8 s steps (benchmarks/calls.py, naive controller)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass
    sock.close()


def _one(sock_mod, port: int, request: bytes, timeout: float) -> bool:
    s = sock_mod.socket(sock_mod.AF_INET, sock_mod.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(("127.0.0.1", port))
        s.sendall(request)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                return False
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            return False
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:                 # chunked or close-delimited: read to close
            while s.recv(65536):
                pass
            return True
        while len(rest) < length:
            chunk = s.recv(65536)
            if not chunk:
                return False
            rest += chunk
        return True
    except OSError:
        return False
    finally:
        close_without_time_wait(s)


def run_load(spec: dict) -> dict:
    import gevent
    from gevent import socket as gsocket
    from gevent.pool import Pool
    from time import perf_counter

    if spec.get("cpu") is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {spec["cpu"]})
    port, seconds, concurrency = spec["port"], spec["seconds"], spec["concurrency"]
    requests = [bytes.fromhex(r) for r in spec["requests"]] if "requests" in spec \
        else _requests(spec)
    timeout = spec.get("timeout", 5.0)
    latencies: list[float] = []
    errors = 0
    count = len(requests)
    state = {"n": 0}

    def next_request() -> bytes:
        state["n"] += 1
        return requests[state["n"] % count]

    for r in requests[:concurrency]:                       # warm-up, not counted
        _one(gsocket, port, r, timeout)
    cpu0 = os.times()
    start = perf_counter()
    deadline = start + seconds
    if spec["mode"] == "closed":
        def worker():
            nonlocal errors
            while perf_counter() < deadline:
                t = perf_counter()
                ok = _one(gsocket, port, next_request(), timeout)
                latencies.append(perf_counter() - t)
                errors += not ok
        gevent.joinall([gevent.spawn(worker) for _ in range(concurrency)])
    else:
        rate = spec["rate"]
        pool = Pool(concurrency)
        late = 0

        def timed(scheduled: float, request: bytes):
            nonlocal errors
            ok = _one(gsocket, port, request, timeout)
            latencies.append(perf_counter() - scheduled)
            errors += not ok
        k = 0
        while True:
            scheduled = start + k / rate
            if scheduled >= deadline:
                break
            delay = scheduled - perf_counter()
            if delay > 0:
                gevent.sleep(delay)
            elif delay < -0.001:
                late += 1
            pool.spawn(timed, scheduled, next_request())   # blocks only when pool is full
            k += 1
        pool.join()
    wall = perf_counter() - start
    cpu1 = os.times()
    elapsed = wall if spec["mode"] == "closed" else seconds
    latencies.sort()
    n = len(latencies)

    def pct(q: float) -> float:
        return round(latencies[min(n - 1, int(q * n))] * 1000, 3) if n else None
    # The generator's own CPU share of its core: near 1.0 it, not the server, is the limit.
    out = {"requests": n, "errors": errors, "rps": round((n - errors) / elapsed),
           "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": pct(1.0),
           "generator_cpu": round((cpu1.user - cpu0.user + cpu1.system - cpu0.system) / wall, 2)}
    if spec["mode"] != "closed":
        out["offered_rps"] = spec["rate"]
        out["late_starts"] = late
    return out


def _requests(spec: dict) -> list[bytes]:
    build = request_factory()
    rng = random.Random(spec.get("seed", 7))
    dests, accounts = spec["destinations"], spec["accountcodes"]
    return [build(str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                  dests[i % len(dests)], accounts[i % len(accounts)])
            for i in range(spec.get("distinct", 5000))]


# --- bare server (its own process) --------------------------------------------------------
def run_bare(answer_file: str, cpu: int | None) -> None:
    import gevent
    from gevent.pywsgi import WSGIServer

    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    answer = Path(answer_file).read_bytes()
    headers = [("Content-Type", "text/xml")]

    def app(environ, start_response):
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response("200 OK", headers)
        return [answer]
    server = WSGIServer(("127.0.0.1", 0), app, log=None)
    server.start()
    print(server.server_port, flush=True)
    gevent.wait()


if __name__ == "__main__":
    if sys.argv[1] == "bare":
        run_bare(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
    elif sys.argv[1] == "load":
        print(json.dumps(run_load(json.loads(Path(sys.argv[2]).read_text()))), flush=True)
