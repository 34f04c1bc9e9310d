"""Apply the numbered migrations in switchd/adapters/db/migrations/ in order, each once, recorded in
schema_migrations. They ship inside the package, so a plain `pip install` can migrate.

Safe to run twice and from two processes at once: an advisory lock serialises runners.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import psycopg

log = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
_LOCK_KEY = 0x5157_1C4D  # arbitrary, constant: "switchd migrations"


class MigrationError(RuntimeError):
    pass


def migrations_dir() -> Path:
    """The migrations shipped with this package (SWITCHD_SQL_DIR overrides it, for tests)."""
    override = os.environ.get("SWITCHD_SQL_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent / "migrations"


def pending_files(directory: Path | None = None) -> list[tuple[str, Path]]:
    directory = directory or migrations_dir()
    if not directory.is_dir():
        raise MigrationError(f"migrations directory {directory} not found "
                             "(reinstall switchd, or unset SWITCHD_SQL_DIR)")
    found = []
    for path in sorted(directory.iterdir()):
        match = _MIGRATION_NAME.match(path.name)
        if match:
            found.append((match.group(1), path))
        elif path.suffix == ".sql":
            raise MigrationError(f"{path}: migration names must look like 001_name.sql")
    return found


def apply_migrations(url: str, directory: Path | None = None) -> list[str]:
    """Apply what is missing; return the versions applied now (empty when up to date)."""
    applied_now = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute("""CREATE TABLE IF NOT EXISTS schema_migrations (
                                version text PRIMARY KEY,
                                name text NOT NULL,
                                applied_at timestamptz NOT NULL DEFAULT now())""")
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for version, path in pending_files(directory):
                if version in done:
                    continue
                log.info("applying migration %s", path.name)
                try:
                    with conn.transaction():
                        conn.execute(path.read_text())
                        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                                     (version, path.name))
                except psycopg.Error as exc:
                    raise MigrationError(f"{path.name}: {exc}") from exc
                applied_now.append(version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now
