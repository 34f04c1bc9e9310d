"""One-shot operator commands: migrate, provision, rates import, calls, report, check-config."""
from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

from switchd.config import SETTINGS, Config
from switchd.errors import CliError


def _db_url(config: Config) -> str:
    from switchd.db.connect import database_url
    from switchd.db.migrate import MigrationError, apply_migrations
    url = database_url(config)
    try:
        apply_migrations(url)
    except MigrationError as exc:
        raise CliError(f"migration failed: {exc}") from None
    return url


def _parse_instant(text: str | None, flag: str) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"{flag} {text!r}: not an ISO 8601 date/time") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def migrate(config: Config, args) -> int:
    from switchd.db.connect import database_url
    from switchd.db.migrate import MigrationError, apply_migrations
    try:
        applied = apply_migrations(database_url(config))
    except MigrationError as exc:
        raise CliError(str(exc)) from None
    print(f"applied {', '.join(applied)}" if applied else "database is up to date")
    return 0


def provision(config: Config, args) -> int:
    from switchd.provision import ProvisionError, provision as run_provision
    url = _db_url(config)
    try:
        summary = run_provision(url, args.file)
    except ProvisionError as exc:
        raise CliError(str(exc)) from None
    print(summary)
    return 0


def rates_import(config: Config, args) -> int:
    from switchd.rates_import import RatesImportError, import_rates
    url = _db_url(config)
    started = time.monotonic()

    def progress(rows: int) -> None:
        rate = rows / max(time.monotonic() - started, 1e-9)
        print(f"\r  {rows:,} rows read ({rate:,.0f}/s)", end="", file=sys.stderr, flush=True)

    try:
        summary = import_rates(url, args.file, args.carrier,
                               effective_from=_parse_instant(args.effective_from, "--effective-from"),
                               progress=progress)
    except RatesImportError as exc:
        print(file=sys.stderr)
        raise CliError(str(exc)) from None
    print(file=sys.stderr)
    print(summary)
    return 0


def _daemon_request(config: Config, path: str, payload: dict | None = None, timeout: float = 5):
    host = config["http.host"]
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    url = f"http://{host}:{config['http.port']}{path}"
    headers = {"Content-Type": "application/json"}
    if config["http.api_token"]:
        headers["Authorization"] = f"Bearer {config['http.api_token']}"
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        try:
            reason = json.load(exc).get("error", exc.reason)
        except ValueError:
            reason = exc.reason
        raise CliError(f"{exc.code}: {reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(f"cannot reach the daemon at {url}: {exc}") from None


def originate(config: Config, args) -> int:
    payload = {"tenant": args.tenant, "destination": args.to, "app": args.app,
               "timeout_s": args.timeout}
    for key in ("caller_id", "campaign"):
        if getattr(args, key):
            payload[key] = getattr(args, key)
    result = _daemon_request(config, "/v1/calls", payload, timeout=args.timeout + 30)
    print(f"{result['call_uuid']} {result['result']} via {', '.join(result['gateways'])} "
          f"(max {result['max_duration']}s)")
    return 0 if result.get("answered") else 1


def calls(config: Config, args) -> int:
    rows = _daemon_request(config, "/v1/calls").get("calls", [])
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("CALL UUID", "TENANT", "DIR", "LEGS", "GATEWAY", "STATE", "AGE", "MAX")
    table = [header] + [(c["call_uuid"], c.get("tenant") or "-", c.get("direction") or "-",
                         str(c.get("legs", 0)), c.get("gateway") or "-", c.get("state") or "-",
                         f"{c.get('age_s', 0):.0f}s", f"{c['max_duration']}s" if c.get("max_duration") else "-")
                        for c in rows]
    _print_table(table)
    print(f"{len(rows)} live call(s)")
    return 0


def report(config: Config, args) -> int:
    from switchd.db import store
    import psycopg
    until = _parse_instant(args.until, "--until") or datetime.now(timezone.utc)
    since = _parse_instant(args.since, "--since") or until - timedelta(days=30)
    with psycopg.connect(_db_url(config)) as conn:
        rows = store.report(conn, group_by=args.by, since=since, until=until)
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
        return 0
    if not rows:
        print("no calls in that period")
        return 0
    columns = list(rows[0].keys())
    _print_table([tuple(c.upper() for c in columns)] + [tuple(str(r[c]) for c in columns) for r in rows])
    return 0


def check_config(config: Config, args) -> int:
    masked = config.masked()
    width = max(len(s.dotted) for s in SETTINGS)
    print(f"# config file: {config.file or '(none)'}")
    for setting in SETTINGS:
        value = masked[setting.dotted]
        shown = "(unset)" if value in (None, "") else json.dumps(value) if isinstance(value, str) else value
        print(f"{setting.dotted:<{width}} = {shown}    # {config.sources[setting.dotted]}")
    table = config.values.get("failover")
    if table is not None:     # docs/routing.md §4a: the effective failover table
        source = config.sources.get("failover", "default")
        for key, action in table.rows.items():
            origin = source if key in table.overrides else "default"
            print(f"{'failover.' + key:<{width}} = {json.dumps(action)}    # {origin}")
    for note in config.warnings():
        print(f"warning: {note}", file=sys.stderr)
    return 0


def _print_table(rows) -> None:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
