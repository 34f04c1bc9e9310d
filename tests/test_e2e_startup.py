"""`switchd run` serves /healthz from the start, before the rate decks are loaded, and its
HTTP limits come from the configuration.

The deck load is held back for real: the test takes an exclusive lock on rate_decks in
PostgreSQL, so the daemon's first deck query waits (pg_locks shows it waiting) until the
test lets go. Meanwhile /healthz is 200, /readyz is 503 naming the phase, and a dialplan
lookup gets 503 (mod_xml_curl then uses the static fallback, which refuses the call).
"""
from __future__ import annotations

import time
import urllib.request

import gevent
import psycopg
from gevent import socket

from conftest import E2E_PASSWORD
from daemon_harness import DaemonProcess, rows


def _post_dialplan(daemon) -> int:
    def post():
        request = urllib.request.Request(daemon.base_url + "/fs/dialplan", method="POST",
                                         data=b"section=dialplan&Caller-Destination-Number=1000")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
    return gevent.get_hub().threadpool.apply(post)


def test_healthz_answers_while_the_decks_load_and_readyz_names_the_phase(world_url, tmp_path):
    from switchd.sim import Simulator
    sim = Simulator(password=E2E_PASSWORD, seed=3, heartbeat_interval=None)
    _, esl_port = sim.start()
    daemon = DaemonProcess(world_url, esl_port, E2E_PASSWORD, tmp_path,
                           extra_env={"SWITCHD_HTTP_READ_TIMEOUT": "1"})
    lock = psycopg.connect(world_url)
    try:
        lock.execute("LOCK TABLE rate_decks IN ACCESS EXCLUSIVE MODE")
        daemon.start(require_ready=False)           # returns on the first /healthz 200
        status, body = daemon.wait_until(
            lambda: (lambda r: r if r[1] and r[1].get("problems", {}).get("startup") ==
                     "loading rate decks" else None)(daemon.get("/readyz")),
            what="/readyz naming the deck load")
        assert status == 503 and body["status"] == "not ready"
        # The daemon really is held at the deck load, not past it: its query waits on the
        # lock (it names the phase just before it sends the query, so wait for the query).
        daemon.wait_until(
            lambda: rows(world_url, "SELECT count(*) FROM pg_locks l JOIN pg_class c "
                                    "ON c.oid = l.relation WHERE c.relname = 'rate_decks' "
                                    "AND NOT l.granted")[0][0] >= 1,
            what="the deck load waiting on the lock")
        assert daemon.get("/readyz")[1]["problems"]["startup"] == "loading rate decks"
        assert daemon.get("/healthz") == (200, {"status": "ok"})
        assert _post_dialplan(daemon) == 503
        assert daemon.get("/v1/calls") == (200, {"calls": []})
        lock.rollback()                              # the decks load now
        daemon.wait_until(lambda: daemon.get("/readyz")[0] == 200, what="ready after the decks")
        assert _post_dialplan(daemon) == 200

        # http.read_timeout reaches the running daemon: half a request is cut after 1 s.
        sock = socket.create_connection(("127.0.0.1", daemon.http_port), timeout=10)
        sock.sendall(b"POST /fs/dialplan HTTP/1.1\r\nHost: switchd\r\nContent-Length: 9\r\n")
        started = time.monotonic()
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408 ") and time.monotonic() - started < 3, answer
        sock.close()
    finally:
        lock.close()
        rc = daemon.terminate()
        sim.stop()
    assert rc == 0, daemon.log()[-3000:]
