"""switchd_database_up and switchd_redis_up come from real probes: a query on PostgreSQL
and a PING on Redis, against running servers and against ports where nothing listens."""
from __future__ import annotations

import socket

from switchd import metrics
from switchd.adapters.caps.local import LocalCaps
from switchd.config import load_config
from switchd.daemon import Daemon, live_metrics_state
from switchd.calls.policing import build_caps_backend, CapsGate


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]        # closed again when we return: nothing listens


def _daemon(db_url: str, redis_url: str | None = None) -> Daemon:
    env = {"SWITCHD_REDIS_URL": redis_url} if redis_url else {}
    config = load_config(environ=env)
    daemon = Daemon(config, db_url)
    daemon.caps = CapsGate(build_caps_backend(config) if redis_url else LocalCaps(), config)
    return daemon


def test_database_probe_follows_postgresql(pg_url):
    daemon = _daemon(pg_url)
    daemon._probe_backends()
    assert daemon.database_up is True and daemon.redis_up is None     # no Redis configured
    daemon.db_url = f"postgresql://switchd@127.0.0.1:{_closed_port()}/switchd"
    daemon._probe_conn.close()                   # as when the server goes away
    daemon._probe_backends()
    assert daemon.database_up is False
    daemon.caps.close()


def test_redis_probe_follows_redis(pg_url, redis_url):
    up = _daemon(pg_url, redis_url)
    up._probe_backends()
    assert up.redis_up is True
    down = _daemon(pg_url, f"redis://127.0.0.1:{_closed_port()}/0")
    down._probe_backends()
    assert down.redis_up is False
    for daemon in (up, down):
        daemon.caps.close()
        daemon._probe_conn.close()


def test_live_state_is_exposed_only_for_what_is_known():
    from dialplan.model import Carrier, Gateway, World
    from switchd.routing.books import HealthBook
    from datetime import datetime, timezone
    world = World(carriers={"alpha": Carrier("alpha", gateways=(Gateway("a1", "alpha"),))})
    state = live_metrics_state(world, {}, {}, HealthBook(), datetime.now(timezone.utc),
                               database_up=False, redis_up=None)
    metrics.LIVE.source = lambda: state
    try:
        names = {(s.name, tuple(s.labels.values())): s.value
                 for family in metrics.LIVE.collect() for s in family.samples}
    finally:
        metrics.LIVE.source = None
    assert names[("switchd_database_up", ())] == 0
    assert ("switchd_redis_up", ()) not in names
    assert names[("switchd_carrier_up", ("alpha",))] == 1
    assert names[("switchd_gateway_up", ("alpha", "a1"))] == 1
