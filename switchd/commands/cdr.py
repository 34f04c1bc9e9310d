"""`switchd cdr import DIR`: replay FreeSWITCH's mod_json_cdr error directory."""
from __future__ import annotations

import sys
import time

from switchd.config import Config
from switchd.errors import CliError


def cdr_import(config: Config, args) -> int:
    import psycopg

    from switchd.accounting.cdrs.importer import CdrImportError, import_dir
    from switchd.accounting.cdrs.ingest import CdrIngest
    from switchd.commands.admin import _db_url
    from switchd.adapters.db import store
    url = _db_url(config)
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            world = store.load_world(conn)
    except psycopg.Error as exc:
        raise CliError(f"cannot read carriers from PostgreSQL: {str(exc).strip()}") from None
    rounding = {name: c.billing_rounding for name, c in world.carriers.items()}
    ingest = CdrIngest(url, None, precision=config["rating.precision"],
                       rounding_of=lambda carrier: rounding.get(carrier or "", "billsec"),
                       encoded_values=config["cdr.encoded_values"])
    started = time.monotonic()

    def progress(n: int, total: int) -> None:
        if n == total or n % 100 == 0:
            rate = n / max(time.monotonic() - started, 1e-9)
            print(f"\r  {n:,}/{total:,} CDRs ({rate:,.0f}/s)", end="", file=sys.stderr,
                  flush=True)

    try:
        summary = import_dir(ingest, args.directory, keep=args.keep, progress=progress)
    except CdrImportError as exc:
        raise CliError(str(exc)) from None
    except psycopg.Error as exc:
        print(file=sys.stderr)
        raise CliError(f"PostgreSQL failed during the import (files not yet stored stay in "
                       f"{args.directory}; run again): {str(exc).strip()}") from None
    finally:
        ingest.close()
    print(file=sys.stderr)
    print(summary)
    return 1 if summary.refused else 0
