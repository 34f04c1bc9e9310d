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
    daemon = Daemon(config, None)
    try:
        # HTTP first: /healthz answers (and /readyz names what is starting) while the
        # database starts and the rate decks load, which takes seconds with large decks.
        daemon.listen()
        daemon.starting = "starting the database"
        daemon.db_url = database_url(config)
        daemon.start()
    except (DaemonStartError, EmbeddedPostgresError, MigrationError, OSError) as exc:
        daemon.stop(drain_timeout=2)
        raise CliError(f"cannot start: {exc}") from None
    return daemon.run_forever()
