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
    from switchd.adapters.db.connect import database_url
    daemon = Daemon(config, None)
    try:
        # HTTP first: /healthz answers (and /readyz names what is starting) while the
        # database starts and the rate decks load, which takes seconds with large decks.
        daemon.listen()
    except OSError as exc:
        raise CliError(f"cannot start: {exc.strerror or exc} (HTTP {config['http.host']}:"
                       f"{config['http.port']}); is another switchd running there? "
                       "Set http.port (SWITCHD_HTTP_PORT) to a free port") from None
    try:
        # Database, migration and embedded-PostgreSQL failures reach the CLI's one-line
        # reporter (switchd/exitcodes.py) as they are.
        daemon.starting = "starting the database"
        daemon.db_url = database_url(config)
        daemon.start()
    except BaseException:
        daemon.stop(drain_timeout=2)
        raise
    return daemon.run_forever()
