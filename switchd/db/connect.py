"""Which PostgreSQL to use: the configured URL, else the embedded one in the data dir."""
from __future__ import annotations

import logging

from switchd.config import Config

log = logging.getLogger(__name__)


def database_url(config: Config) -> str:
    url = config["database.url"]
    if url:
        return url
    from switchd.db.embedded import start_embedded_postgres
    # Left running on exit ('cleanup=None'): the next command or daemon start reuses it.
    return start_embedded_postgres(config.data_dir, cleanup=None)
