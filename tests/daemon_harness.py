"""Run `switchd run` as a real subprocess for end-to-end tests, as systemd would.

The daemon gets its own monkey-patched interpreter (switchd/cli.py), while the test process
hosts the FreeSWITCH simulator. Synchronisation is on HTTP readiness and on PostgreSQL rows,
never on fixed sleeps.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import gevent
import psycopg
from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaemonProcess:
    def __init__(self, db_url: str, esl_port: int, esl_password: str, data_dir: Path,
                 redis_url: str | None = None, extra_env: dict | None = None):
        self.http_port = free_port()
        self.data_dir = data_dir
        self.log_path = data_dir / f"switchd-{self.http_port}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHD_")}
        env.update({
            "SWITCHD_DATABASE_URL": db_url, "SWITCHD_DATA_DIR": str(data_dir),
            "SWITCHD_ESL_HOST": "127.0.0.1", "SWITCHD_ESL_PORT": str(esl_port),
            "SWITCHD_ESL_PASSWORD": esl_password, "SWITCHD_ESL_BACKOFF_MAX": "1",
            "SWITCHD_HTTP_PORT": str(self.http_port), "SWITCHD_LOG_FORMAT": "json",
            "SWITCHD_LOG_LEVEL": "info",
        })
        if redis_url:
            env["SWITCHD_REDIS_URL"] = redis_url
        env.update(extra_env or {})
        self.env = env
        self.proc: subprocess.Popen | None = None
        # What runs `-m switchd.cli run`: a benchmark puts a profiler script after python.
        self.python = [sys.executable]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, ready_timeout: float = 30.0, require_ready: bool = True) -> "DaemonProcess":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*self.python, "-m", "switchd.cli", "run"], env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + ready_timeout
        path = "/readyz" if require_ready else "/healthz"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"switchd exited with {self.proc.returncode}:\n{self.log()}")
            if self.get(path)[0] == 200:
                return self
            gevent.sleep(0.1)
        raise RuntimeError(f"switchd not ready after {ready_timeout}s:\n{self.log()}")

    def get(self, path: str) -> tuple[int, dict | str]:
        def fetch():
            try:
                with urllib.request.urlopen(self.base_url + path, timeout=5) as response:
                    body = response.read().decode()
                    status = response.status
            except urllib.error.HTTPError as exc:
                body, status = exc.read().decode(), exc.code
            except (urllib.error.URLError, OSError):
                return 0, ""
            try:
                return status, json.loads(body)
            except ValueError:
                return status, body
        # urllib blocks; run it in gevent's threadpool so simulator greenlets keep running.
        return gevent.get_hub().threadpool.apply(fetch)

    def wait_until(self, predicate, timeout: float = 30.0, what: str = "condition"):
        return wait_for(predicate, timeout, what, self)

    def terminate(self, timeout: float = 20.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self._wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self._wait(10)

    def _wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            gevent.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def wait_for(predicate, timeout: float, what: str, daemon: DaemonProcess | None = None):
    """Poll `predicate` until it returns something truthy; fail with the daemon's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        gevent.sleep(0.05)
    log = daemon.log()[-4000:] if daemon else ""
    raise AssertionError(f"timed out waiting for {what}\n--- daemon log ---\n{log}")


def rows(url: str, query: str, *args) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, args).fetchall()


def failover_steps(daemon: DaemonProcess, url: str, call_uuid: str) -> list[tuple]:
    """The call's `failover: ...` rows of the routing log, once there is one: [(reason,)]."""
    return daemon.wait_until(lambda: rows(
        url, "SELECT reason FROM routing_decisions WHERE call_uuid = %s "
             "AND reason LIKE 'failover%%'", call_uuid), what="the failover step")


def metric(daemon: DaemonProcess, name: str, **labels) -> float:
    """Sum of the samples of `name` on /metrics whose labels include `labels`."""
    status, text = daemon.get("/metrics")
    assert status == 200
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
