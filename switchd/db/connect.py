"""Which PostgreSQL to use: the configured URL, else the embedded one in the data dir.

A command that had to start the embedded server stops it when it ends
(`stop_started_servers`, called by the CLI), unless someone else (a daemon that started
meanwhile) is connected to it; a server that was already running is reused and left alone.
"""
from __future__ import annotations

import logging

from switchd.config import Config

log = logging.getLogger(__name__)

_started: list = []        # EmbeddedPostgres servers this process started


def database_url(config: Config, database: str = "switchd") -> str:
    url = config["database.url"]
    if url:
        return url
    from switchd.db.embedded import EmbeddedPostgres
    server = EmbeddedPostgres(config.data_dir)
    if server.start():
        _started.append(server)
    return server.url(database)


def stop_started_servers() -> None:
    """Stop the embedded servers this process started, unless another client uses one."""
    import psycopg
    from switchd.db.embedded import EmbeddedPostgresError
    while _started:
        server = _started.pop()
        try:
            others = server.other_clients()
        except (psycopg.Error, EmbeddedPostgresError) as exc:   # cannot ask: stop anyway
            log.debug("could not count clients of %s: %s", server.pgdata, exc)
            others = 0
        if others:
            log.warning("leaving the embedded PostgreSQL in %s running: %d other client(s) "
                        "connected (stop it with `switchd db stop`)", server.pgdata, others)
            continue
        try:
            server.stop()
        except EmbeddedPostgresError as exc:
            log.error("%s", exc)
