"""One-shot operator commands: migrate, rates import, calls, check-config (provision and
the inventory commands: switchd/commands/inventory.py; report and rerate:
switchd/commands/reports.py)."""
from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

from switchd.config import SETTINGS, Config, ConfigError
from switchd.errors import CliError, InputError, UnavailableError, UsageError


def _db_url(config: Config) -> str:
    """The database, migrated. Failures (unreachable, a failed migration) reach the CLI's
    one-line reporter (switchd/exitcodes.py) as they are."""
    from switchd.adapters.db.connect import database_url
    from switchd.adapters.db.migrate import apply_migrations
    url = database_url(config)
    apply_migrations(url)
    return url


def _parse_instant(text: str | None, flag: str) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{flag} {text!r}: not an ISO 8601 date/time "
                         "(e.g. 2027-01-31 or 2027-01-31T12:00:00+01:00)") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def migrate(config: Config, args) -> int:
    from switchd.adapters.db.connect import database_url
    from switchd.adapters.db.migrate import apply_migrations
    applied = apply_migrations(database_url(config))
    print(f"applied {', '.join(applied)}" if applied else "database is up to date")
    return 0


def rates_import(config: Config, args) -> int:
    from switchd.commands.inputs import check_csv_header, not_utf8
    from switchd.admin.rates_import import import_rates
    effective_from = _parse_instant(args.effective_from, "--effective-from")
    check_csv_header(args.file)
    url = _db_url(config)
    started = time.monotonic()
    shown = []

    def progress(rows: int) -> None:
        if sys.stderr.isatty():             # a counter for people, nothing in logs
            rate = rows / max(time.monotonic() - started, 1e-9)
            print(f"\r  {rows:,} rows read ({rate:,.0f}/s)", end="", file=sys.stderr, flush=True)
            shown.append(rows)

    try:
        summary = import_rates(url, args.file, args.carrier, effective_from=effective_from,
                               progress=progress)
    except UnicodeDecodeError:
        raise not_utf8(args.file) from None
    finally:
        if shown:
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
        if exc.code == 401:
            raise ConfigError(f"the daemon at {url} refused the API token ({reason}); set "
                              "http.api_token (SWITCHD_HTTP_API_TOKEN) to the daemon's") from None
        if exc.code == 400:
            raise InputError(f"the daemon refused the request: {reason}") from None
        raise CliError(f"{exc.code}: {reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UnavailableError(f"cannot reach the daemon at {url}: {reason}; is `switchd run` "
                               "running there? (http.host, http.port)") from None


def originate(config: Config, args) -> int:
    payload = {"tenant": args.tenant, "destination": args.to, "app": args.app,
               "timeout_s": args.timeout}
    for key in ("caller_id", "campaign"):
        if getattr(args, key):
            payload[key] = getattr(args, key)
    from switchd.commands import originate_wait
    payload.update(originate_wait.retry_payload(args))
    result = _daemon_request(config, "/v1/calls", payload, timeout=args.timeout + 30)
    if args.wait:
        return originate_wait.wait(config, args, result, _daemon_request)
    print(f"{result['call_uuid']} {result['result']} via {', '.join(result['gateways'])} "
          f"(max {result['max_duration']}s)")
    if result.get("next_attempt_at"):
        print(f"{result['outcome']}: attempt {result['attempt'] + 1} at {result['next_attempt_at']}")
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
