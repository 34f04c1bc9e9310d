"""`switchd run`: the daemon in the foreground."""
from __future__ import annotations

import logging

from switchd.config import Config
from switchd.errors import CliError
from switchd.logs import setup_logging

log = logging.getLogger("switchd")


def main(config: Config, args) -> int:
    setup_logging(config["log.level"], config["log.format"])
    from switchd.daemon import Daemon, DaemonStartError
    from switchd.db.connect import database_url
    from switchd.db.embedded import EmbeddedPostgresError
    from switchd.db.migrate import MigrationError
    try:
        db_url = database_url(config)
        daemon = Daemon(config, db_url).start()
    except (DaemonStartError, EmbeddedPostgresError, MigrationError, OSError) as exc:
        raise CliError(f"cannot start: {exc}") from None
    return daemon.run_forever()
