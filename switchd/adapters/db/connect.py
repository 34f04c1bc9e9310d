"""Which PostgreSQL to use: the configured URL, else the embedded one in the data dir.

A command that had to start the embedded server stops it when it ends
(`release_embedded_servers`, called by the CLI), unless someone else (a daemon that started
meanwhile) is connected to it; a server that was already running is reused and left alone,
unless the process that started it is gone (it left it to us): then the last one out stops it.
"""
from __future__ import annotations

import logging

from switchd.config import Config

log = logging.getLogger(__name__)

_used: list = []        # (EmbeddedPostgres, started by this process) pairs


def database_url(config: Config, database: str = "switchd") -> str:
    url = config["database.url"]
    if url:
        return url
    from switchd.adapters.db.embedded import EmbeddedPostgres
    server = EmbeddedPostgres(config.data_dir)
    _used.append((server, server.start()))
    return server.url(database)


def release_embedded_servers() -> None:
    """Stop the embedded servers this process started, or found orphaned, unless another
    client is connected to one."""
    import psycopg
    from switchd.adapters.db.embedded import EmbeddedPostgresError
    while _used:
        server, started = _used.pop()
        try:
            if not server.status(with_size=False).running:
                continue                        # stopped meanwhile (`switchd db stop`)
            if not (started or server.orphaned()):
                continue                        # its starter (the daemon?) still runs
            others = server.other_clients()
            if others:
                if started:
                    log.warning("leaving the embedded PostgreSQL in %s running: %d other "
                                "client(s) connected (stop it with `switchd db stop`)",
                                server.pgdata, others)
                continue
            server.stop()
        except (psycopg.Error, EmbeddedPostgresError) as exc:
            log.error("embedded PostgreSQL in %s: %s", server.pgdata, exc)
