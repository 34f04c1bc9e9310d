"""`switchd db status|stop`: the embedded PostgreSQL of the data directory."""
from __future__ import annotations

import json

from switchd.config import Config
from switchd.errors import CliError


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def status(config: Config, args) -> int:
    from switchd.adapters.db.embedded import EmbeddedPostgres
    state = EmbeddedPostgres(config.data_dir).status()
    external = bool(config["database.url"])
    if args.json:
        print(json.dumps({**state.as_dict(), "database_url_set": external}))
        return 0
    print(f"data dir   {state.data_dir}")
    if not state.initialised:
        print("state      no embedded PostgreSQL here yet (the first command that needs it creates it)")
    elif state.running:
        print(f"state      running, pid {state.pid}")
        print(f"socket     {state.socket_dir} (port {state.port}, no TCP)")
    else:
        print("state      stopped")
    print(f"size       {_size(state.size_bytes)}")
    print(f"log        {state.log}")
    if external:
        print("note       database.url is set: switchd uses that server, not this one")
    return 0


def stop(config: Config, args) -> int:
    from switchd.adapters.db.embedded import EmbeddedPostgres
    server = EmbeddedPostgres(config.data_dir)
    state = server.status(with_size=False)
    if not state.running:
        print(f"no embedded PostgreSQL is running in {state.pgdata}")
        return 0
    if not args.force:
        others = server.other_clients()
        if others:
            raise CliError(f"{others} client(s) are connected to the embedded PostgreSQL in "
                           f"{state.pgdata} (a running `switchd run`?); stop them first, "
                           "or use --force")
    server.stop()
    print(f"stopped the embedded PostgreSQL in {state.pgdata} (pid {state.pid})")
    return 0
