"""`switchd run`: the daemon in the foreground."""
from __future__ import annotations

import logging

from switchd.config import Config
from switchd.errors import CliError
from switchd.logs import setup_logging

log = logging.getLogger("switchd")


def main(config: Config, args) -> int:
    setup_logging(config["log.level"], config["log.format"])
    from switchd.daemon import Daemon
    from switchd.db.connect import database_url
    # Database, migration and embedded-PostgreSQL failures reach the CLI's one-line
    # reporter (switchd/exitcodes.py) as they are; a port in use is an OSError here.
    db_url = database_url(config)
    try:
        daemon = Daemon(config, db_url).start()
    except OSError as exc:
        raise CliError(f"cannot start: {exc.strerror or exc} (HTTP {config['http.host']}:"
                       f"{config['http.port']}); is another switchd running there? "
                       "Set http.port (SWITCHD_HTTP_PORT) to a free port") from None
    return daemon.run_forever()
