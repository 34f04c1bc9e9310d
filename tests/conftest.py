"""Shared fixtures: a real PostgreSQL and a real Redis, started by the suite (DESIGN.md §9).

SWITCHD_TEST_DATABASE_URL / SWITCHD_TEST_REDIS_URL point at existing servers instead.
The daemon's own SWITCHD_DATABASE_URL is never used here.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "freeswitch-1.10"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory) -> str:
    """URL of a PostgreSQL server (maintenance database) for the whole session."""
    external = os.environ.get("SWITCHD_TEST_DATABASE_URL")
    if external:
        return external
    from switchd.adapters.db.embedded import start_embedded_postgres
    return start_embedded_postgres(tmp_path_factory.mktemp("pg"), database="postgres",
                                   cleanup="delete")


@pytest.fixture
def pg_url(pg_admin_url) -> str:
    """A brand-new empty database for one test, dropped afterwards."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    params = conninfo_to_dict(pg_admin_url)
    params["dbname"] = name
    yield make_conninfo(**params)
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def migrated_pg_url(pg_url) -> str:
    """A fresh database with every migration in switchd/adapters/db/migrations/ applied."""
    from switchd.adapters.db.migrate import apply_migrations
    apply_migrations(pg_url)
    return pg_url


@pytest.fixture(scope="session")
def redis_server_url() -> str:
    external = os.environ.get("SWITCHD_TEST_REDIS_URL")
    if external:
        yield external
        return
    from switchd.adapters.devredis import RedisProcess
    server = RedisProcess().start()
    yield server.url
    server.stop()


@pytest.fixture
def redis_url(redis_server_url) -> str:
    """The session's Redis, flushed before each test."""
    import redis
    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    client.close()
    return redis_server_url


# --- end to end: the demo world, the simulator and `switchd run` ------------------------------
E2E_PASSWORD = "e2e-secret"


@pytest.fixture
def world_url(migrated_pg_url, tmp_path):
    """A fresh database holding the demo world (switchd/demo_world.py) and its decks."""
    from switchd.demo_world import write_decks, write_world
    from switchd.admin.provision import provision
    from switchd.admin.rates_import import import_rates
    provision(migrated_pg_url, write_world(tmp_path))
    for carrier, path in write_decks(tmp_path / "decks").items():
        import_rates(migrated_pg_url, path, carrier)
    return migrated_pg_url


@pytest.fixture
def start_switch(tmp_path):
    """Start a simulator and a `switchd run` against `db_url`; both stop after the test,
    and the daemon must then exit 0 on SIGTERM."""
    from daemon_harness import DaemonProcess
    from switchd.sim import GatewayBehaviour, Simulator
    started = []

    def start(db_url, *, seed=11, time_scale=50.0, answer_delay_s=1.0, extra_env=None):
        sim = Simulator(password=E2E_PASSWORD, seed=seed, time_scale=time_scale,
                        heartbeat_interval=None,
                        default_gateway=GatewayBehaviour(answer_delay_s=answer_delay_s))
        _, port = sim.start()
        daemon = DaemonProcess(db_url, port, E2E_PASSWORD, tmp_path, extra_env=extra_env)
        started.append((sim, daemon))
        daemon.start()
        sim.dialplan_url = daemon.base_url + "/fs/dialplan"
        return sim, daemon
    yield start
    for sim, daemon in started:
        rc = daemon.terminate()
        sim.stop()
        assert rc == 0, daemon.log()[-3000:]


@pytest.fixture
def switch(world_url, start_switch):
    """The demo world on a simulator and a daemon; tests set gateway behaviours first."""
    return start_switch(world_url)
