"""What every benchmark needs around it: a scratch PostgreSQL database and a line naming
the machine (figures are only comparable as ratios within one run on one machine)."""
from __future__ import annotations

import os
import platform
import uuid
from contextlib import contextmanager
from pathlib import Path

import psycopg


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far (/proc/<pid>/stat, fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} x {model}, Python {platform.python_version()}"


@contextmanager
def scratch_database(workdir: Path, name: str):
    """A scratch database URL: a new database on SWITCHD_TEST_DATABASE_URL's server
    (dropped afterwards), or an embedded server in `workdir`."""
    external = os.environ.get("SWITCHD_TEST_DATABASE_URL")
    if not external:
        from switchd.adapters.db.embedded import start_embedded_postgres
        yield start_embedded_postgres(workdir, database=name, cleanup="delete")
        return
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
    dbname = f"{name}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(external, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    try:
        yield make_conninfo(**{**conninfo_to_dict(external), "dbname": dbname})
    finally:
        with psycopg.connect(external, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                         .format(sql.Identifier(dbname)))
