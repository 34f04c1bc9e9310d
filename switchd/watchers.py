"""Small long-lived loops of the daemon: a periodic job runner and the reload listener."""
from __future__ import annotations

import logging
import random
from typing import Callable

import gevent
from gevent.event import Event
import psycopg

from switchd import metrics
from switchd.adapters.db import green

log = logging.getLogger(__name__)


class Periodic:
    """Run `job` every `interval` seconds. A failing run is logged and counted, never fatal:
    the next tick tries again (a dead watchdog would be worse than a noisy one)."""

    def __init__(self, interval: float, job: Callable[[], None], name: str):
        self.interval = interval
        self.job = job
        self.name = name

    def run(self) -> None:
        while True:
            gevent.sleep(self.interval)
            try:
                self.job()
            except Exception:   # greenlet boundary
                log.exception("periodic job %r failed", self.name)


class WorldReloader:
    """LISTEN for provisioning changes (`switchd provision` sends NOTIFY switchd_world) and
    reload tenants, carriers and DIDs without a restart. Rate decks have their own listener
    (deck_loader.DeckReloader). A lost connection is retried with backoff; on reconnect the
    world is reloaded once, since notifications sent meanwhile were missed."""

    def __init__(self, url: str, on_world: Callable[[], None], poll_timeout: float = 5.0):
        self.url = url
        self.on_world = on_world
        self.poll_timeout = poll_timeout
        self.listening = Event()

    def run(self) -> None:
        backoff = 0.5
        first = True
        while True:
            try:
                with green.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute("LISTEN switchd_world")
                    if not first:
                        self._safely(self.on_world)
                    first = False
                    backoff = 0.5
                    self.listening.set()
                    while True:
                        for _ in conn.notifies(timeout=self.poll_timeout):
                            self._safely(self.on_world)
            except psycopg.Error as exc:
                self.listening.clear()
                metrics.DB_ERRORS.labels("listen").inc()
                log.warning("reload listener lost PostgreSQL (%s); retrying in %.1fs", exc, backoff)
                gevent.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, 30.0)

    @staticmethod
    def _safely(func) -> None:
        try:
            func()
        except Exception:
            log.exception("reload failed; keeping the previous data")
