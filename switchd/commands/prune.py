"""`switchd prune --older-than 90d`: drop old call data (whole months where possible)."""
from __future__ import annotations

import sys
import time
from datetime import datetime, timedelta, timezone

from switchd.config import Config
from switchd.errors import UsageError


def prune(config: Config, args) -> int:
    import psycopg

    from switchd.adapters.db import partitions
    from switchd.commands.admin import _db_url
    try:
        age_s = partitions.parse_age(args.older_than)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    groups = [g.strip() for g in (args.only or ",".join(partitions.GROUPS)).split(",") if g.strip()]
    unknown = [g for g in groups if g not in partitions.GROUPS]
    if unknown or not groups:
        raise UsageError(f"--only {args.only!r}: choose from {', '.join(partitions.GROUPS)}")
    tables = [t for g in partitions.GROUPS if g in groups for t in partitions.GROUPS[g]]
    cutoff = datetime.now(timezone.utc) - timedelta(seconds=age_s)
    url = _db_url(config)
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        steps = partitions.plan(conn, cutoff, tables)
        head = "would remove" if args.dry_run else "removing"
        print(f"{head} {', '.join(groups)} older than {cutoff:%Y-%m-%d %H:%M:%S} UTC "
              f"({args.older_than})")
        for step in steps:
            print(f"  {'would ' if args.dry_run else ''}{step}")
        total = sum(s.rows for s in steps)
        if args.dry_run or not steps:
            print(f"{total:,} rows {'would be' if args.dry_run else 'were'} removed"
                  if steps else "nothing to remove")
            return 0
        started = time.monotonic()

        def progress(step, done: int, finished: bool) -> None:
            rate = done / max(time.monotonic() - started, 1e-9)
            verb = "dropped" if step.action == "drop" else "deleted"
            print(f"\r  {step.target}: {verb} {done:,}/{step.rows:,} rows ({rate:,.0f}/s)",
                  end="\n" if finished else "", file=sys.stderr, flush=True)

        removed = partitions.execute(conn, steps, cutoff, progress=progress)
    print(f"{removed:,} rows removed")
    return 0
