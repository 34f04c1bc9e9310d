"""`switchd`: the command line. Each subcommand's --help says what it does and how.

gevent's monkey patching happens first thing in main(), once (STYLE.md §8), before psycopg,
redis or ssl are imported by any subcommand.
"""
from __future__ import annotations

import argparse
import signal
import sys

DESCRIPTION = """\
switchd routes, polices and bills every call of a FreeSWITCH server.

It answers FreeSWITCH's mod_xml_curl dialplan lookups with least-cost routes, follows the
calls over the event socket (ESL), enforces concurrency caps and maximum durations, and
writes rated CDRs to PostgreSQL. Configuration: a TOML file (--config or SWITCHD_CONFIG)
plus SWITCHD_* environment variables; `switchd check-config` shows the result.

Try it without FreeSWITCH:  switchd demo --calls 200
"""

EPILOG = """\
environment (each also a TOML key; see docs/configuration.md):
  SWITCHD_CONFIG        TOML file (default /etc/switchd/switchd.toml if present)
  SWITCHD_DATA_DIR      local state: embedded PostgreSQL, CDR spool
  SWITCHD_DATABASE_URL  PostgreSQL URL (unset: embedded PostgreSQL in the data dir)
  SWITCHD_REDIS_URL     Redis for cluster-wide caps (unset: in-process caps)
  SWITCHD_ESL_HOST / SWITCHD_ESL_PORT / SWITCHD_ESL_PASSWORD
  SWITCHD_HTTP_HOST / SWITCHD_HTTP_PORT

exit status (the same for every command; docs/cli.md):
  0 ok, 1 failed at run time, 2 usage, 3 configuration, 4 input data,
  5 unavailable dependency (PostgreSQL, the daemon), 130 interrupted, 143 terminated;
  `originate --wait`: 6 busy or declined, 7 no answer, 8 invalid number, 9 still not final
"""

# Commands that run gevent (monkey patching first); the others are plain one-shot programs.
GEVENT_COMMANDS = ("run", "demo")


def _formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, exit status 2, like every other failure."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("switchd")
    except PackageNotFoundError:
        return "unknown (not installed: running from a source tree)"


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    """--debug and --data-dir on every subcommand too, so they work after its name. Added
    here, once, to whatever subcommands exist (SUPPRESS: unset keeps the top level's)."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for sub in action.choices.values():
            if "--debug" not in sub._option_string_actions:
                sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                 help="on failure, print the traceback before the one-line reason")
            if "--data-dir" not in sub._option_string_actions:
                sub.add_argument("--data-dir", metavar="DIR", default=argparse.SUPPRESS,
                                 help="data directory (overrides SWITCHD_DATA_DIR)")
            _add_common_options(sub)


def build_parser() -> argparse.ArgumentParser:
    from switchd.commands import api, campaigns, inventory
    parser = _Parser(prog="switchd", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=_formatter)
    parser.add_argument("--version", action="version", version=f"switchd {_version()}")
    parser.add_argument("--config", metavar="FILE", help="TOML config file (overrides SWITCHD_CONFIG)")
    parser.add_argument("--data-dir", metavar="DIR", default=argparse.SUPPRESS,
                        help="data directory: embedded PostgreSQL, CDR spool (overrides SWITCHD_DATA_DIR)")
    parser.add_argument("--debug", action="store_true", default=False,
                        help="on failure, print the traceback before the one-line reason")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("run", formatter_class=_formatter, help="run the daemon",
                       description="Run the daemon in the foreground (systemd: Type=notify).\n\n"
                       "Connects to FreeSWITCH's event socket (reconnecting forever), serves\n"
                       "POST /fs/dialplan, /healthz, /readyz, /metrics and /v1 on the HTTP port\n"
                       "(/healthz from the first second, the rest once started), applies pending\n"
                       "migrations, loads tenants, carriers and rate decks.\n"
                       "SIGTERM drains and exits 0; SIGHUP reloads tenants, carriers, DIDs and rate\n"
                       "decks from PostgreSQL (the config file is read only at start).")
    p.set_defaults(handler="switchd.commands.run:main")

    p = sub.add_parser("demo", formatter_class=_formatter, help="run a self-contained demo",
                       description="Start an embedded PostgreSQL, provision a sample world (one tenant,\n"
                       "three carriers with different rate decks, DIDs), run the daemon and the\n"
                       "FreeSWITCH simulator in this process, place calls and print a summary read\n"
                       "back from PostgreSQL. Needs no FreeSWITCH, no root, no network.\n\n"
                       "By default everything lives in a temporary directory, removed at the end.\n"
                       "With --keep or --data-dir the data stays (PostgreSQL is stopped), and\n"
                       "`switchd report --data-dir DIR` reads the demo's calls.")
    p.add_argument("--calls", type=int, default=50, metavar="N", help="calls to place (default 50)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--seed", type=int, default=7, help="simulator seed (default 7): same seed, same calls")
    p.add_argument("--data-dir", metavar="DIR", default=argparse.SUPPRESS,
                   help="keep the demo's data here (a new directory, or one a demo made)")
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary directory and print where it is")
    p.set_defaults(handler="switchd.demo:main")

    p = sub.add_parser("migrate", formatter_class=_formatter, help="apply database migrations",
                       description="Apply the numbered migrations shipped with switchd that the database lacks.\n"
                       "Safe to run twice; `switchd run` does it at start as well.")
    p.set_defaults(handler="switchd.commands.admin:migrate")

    p = sub.add_parser("provision", formatter_class=_formatter, help="load tenants, carriers, DIDs from TOML",
                       description="Upsert tenants, carriers, gateways, DIDs, campaigns, caps and budgets\n"
                       "from a TOML file (see examples/provision.toml). Idempotent. Any error\n"
                       "names the file and key, and nothing is written. Keys the file leaves out\n"
                       "keep their stored values; nothing is deleted unless listed under [delete]\n"
                       "or --prune is given. Prints the diff (docs/provisioning.md).")
    p.add_argument("file", metavar="FILE.toml")
    p.set_defaults(handler="switchd.commands.inventory:provision")
    inventory.add_provision_flags(p)    # --dry-run, --prune

    rates = sub.add_parser("rates", formatter_class=_formatter, help="rate deck commands",
                           description="Rate deck commands.")
    rates_sub = rates.add_subparsers(dest="rates_command", metavar="ACTION")
    rates_sub.required = True
    p = rates_sub.add_parser("import", formatter_class=_formatter, help="import a carrier's rate deck CSV",
                             description="Import a rate deck CSV for one carrier, atomically: the old deck stays\n"
                             "live until the new one is complete; a bad row aborts the import with its\n"
                             "line number and nothing changes. Running daemons reload it at once.\n\n"
                             "CSV columns: prefix, rate_per_min (required); connect_fee,\n"
                             "initial_increment, subsequent_increment, effective_from, effective_to,\n"
                             "description (optional). Unknown columns are ignored.")
    p.add_argument("file", metavar="FILE.csv")
    p.add_argument("--carrier", required=True, metavar="NAME", help="carrier the deck belongs to")
    p.add_argument("--effective-from", metavar="ISO8601",
                   help="deck start (default: none, the carrier's base deck, live since always); "
                   "load a future deck ahead of its start")
    p.set_defaults(handler="switchd.commands.admin:rates_import")

    cdr = sub.add_parser("cdr", formatter_class=_formatter, help="FreeSWITCH CDR commands",
                         description="FreeSWITCH CDR commands (docs/storage.md).")
    cdr_sub = cdr.add_subparsers(dest="cdr_command", metavar="ACTION")
    cdr_sub.required = True
    p = cdr_sub.add_parser("import", formatter_class=_formatter,
                           help="replay mod_json_cdr's error directory",
                           description="Store the CDRs FreeSWITCH wrote to its err-log-dir when it could not\n"
                           "post them (*.cdr.json, sub-directories included). Idempotent by leg UUID;\n"
                           "stored files move to DIR/imported/, unreadable ones stay and are listed.\n"
                           "A daemon on the switch's host does this by itself when cdr.import_dir\n"
                           "names the directory.")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--keep", action="store_true", help="leave stored files where they are")
    p.set_defaults(handler="switchd.commands.cdr:cdr_import")

    p = sub.add_parser("prune", formatter_class=_formatter, help="remove old call data",
                       description="Remove calls, legs, call events and routing decisions older than a\n"
                       "cutoff: whole months are dropped (calls, legs and events are partitioned\n"
                       "by month), rows older than the cutoff in the month that straddles it are\n"
                       "deleted in chunks. Safe while the daemon runs (docs/operations.md).")
    p.add_argument("--older-than", required=True, metavar="AGE",
                   help="age of the data to remove: hours, days or weeks, e.g. 90d, 12h, 2w")
    p.add_argument("--only", metavar="WHAT",
                   help="comma-separated: cdrs (calls and legs), events, decisions (default: all)")
    p.add_argument("--dry-run", action="store_true", help="print what would be removed, change nothing")
    p.set_defaults(handler="switchd.commands.prune:prune")

    p = sub.add_parser("originate", formatter_class=_formatter, help="place an outbound call",
                       description="Ask the running daemon to place a call (POST /v1/calls): caps and\n"
                       "budget are checked, carriers chosen by LCR, then FreeSWITCH originates\n"
                       "through them in failover order with the max duration scheduled. Waits for\n"
                       "FreeSWITCH's answer and prints it; exits 1 if the call was refused or failed.")
    p.add_argument("--tenant", required=True, help="tenant placing (and paying for) the call")
    p.add_argument("--to", required=True, metavar="NUMBER", help="destination, any form the tenant dials")
    p.add_argument("--from", dest="caller_id", metavar="NUMBER", help="caller ID to present")
    p.add_argument("--campaign", metavar="NAME", help="campaign whose caps apply")
    p.add_argument("--app", default="&park()", help="FreeSWITCH application once answered (default &park())")
    p.add_argument("--timeout", type=int, default=60, metavar="S", help="ring time in seconds (default 60)")
    p.add_argument("--max-attempts", type=int, default=1, metavar="N",
                   help="attempts in all, retries included (1-10; default 1: no retry)")
    p.add_argument("--retry-on", metavar="OUTCOMES",
                   help="comma-separated outcomes to retry (default: all the retry table retries)")
    p.add_argument("--wait", action="store_true",
                   help="wait for the final outcome (retries, and an answered call's end) and print it; "
                   "exit 0 answered, 6 busy/declined, 7 no answer, 8 invalid number, 1 failed")
    p.add_argument("--wait-timeout", type=float, default=None, metavar="S",
                   help="with --wait: give up waiting after S seconds (exit 9)")
    p.add_argument("--json", action="store_true", help="with --wait: print the outcome as JSON")
    p.set_defaults(handler="switchd.commands.admin:originate")

    p = sub.add_parser("calls", formatter_class=_formatter, help="list live calls of the running daemon",
                       description="List the calls the running daemon is tracking: tenant, direction, legs,\n"
                       "gateway, state, age and max duration (asks GET /v1/calls on the HTTP port).")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler="switchd.commands.admin:calls")

    p = sub.add_parser("report", formatter_class=_formatter, help="costs and carrier quality",
                       description="Calls, minutes and cost by tenant, carrier or UTC day, with ASR, NER,\n"
                       "ACD, PDD, failure causes, unrated and provisional counts, and optionally\n"
                       "the savings against a reference carrier's deck (docs/reports.md).")
    p.add_argument("--by", choices=("tenant", "carrier", "day"), default="carrier")
    p.add_argument("--since", metavar="ISO8601",
                   help="first instant included (default: 30 days before now, or before --until if earlier)")
    p.add_argument("--until", metavar="ISO8601", help="first instant excluded (default: now)")
    p.add_argument("--tenant", metavar="NAME", help="only this tenant's calls")
    p.add_argument("--reference", metavar="CARRIER",
                   help="price the answered legs on this carrier's deck too (savings column)")
    p.add_argument("--top", type=int, default=3, metavar="N",
                   help="failure causes shown per row (default 3)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler="switchd.commands.reports:report")

    p = sub.add_parser("rerate", formatter_class=_formatter, help="price past legs on a candidate deck",
                       description="What the answered legs that ended in [--since, --until) would have cost\n"
                       "on a candidate rate deck (the CSV format of `rates import`, validated the\n"
                       "same way, never stored), per prefix and in total, against what they cost.")
    p.add_argument("--deck", required=True, metavar="FILE.csv", help="the candidate deck")
    p.add_argument("--carrier", required=True, metavar="NAME",
                   help="whose deck it is (its default increments and billing rounding apply)")
    p.add_argument("--since", required=True, metavar="ISO8601", help="first instant included")
    p.add_argument("--until", metavar="ISO8601", help="first instant excluded (default: now)")
    p.add_argument("--tenant", metavar="NAME", help="only this tenant's calls")
    p.add_argument("--from-carrier", metavar="NAME",
                   help="only the legs this carrier carried (default: every carrier's)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler="switchd.commands.reports:rerate")

    p = sub.add_parser("check-config", formatter_class=_formatter, help="print the effective configuration",
                       description="Validate the configuration (defaults < TOML file < SWITCHD_* environment)\n"
                       "and print every setting with where it came from. Secrets are masked.\n"
                       "Exits 3 with the offending key when something is wrong.")
    p.set_defaults(handler="switchd.commands.admin:check_config")
    inventory.register(sub, rates_sub, _formatter)    # tenants/carriers/dids list, rates list/export/delete

    db = sub.add_parser("db", formatter_class=_formatter, help="the embedded PostgreSQL",
                        description="Inspect or stop the embedded PostgreSQL of the data directory (used\n"
                        "when database.url is unset). Commands start it when they need it and stop\n"
                        "it when they end, unless it was already running (the daemon's).")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION")
    db_sub.required = True
    p = db_sub.add_parser("status", formatter_class=_formatter, help="is it running: pid, socket, data dir, size",
                          description="Show whether the embedded PostgreSQL of the data directory runs: its pid,\n"
                          "port and socket directory, the data directory, its size on disk and its log.")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler="switchd.commands.db:status")
    p = db_sub.add_parser("stop", formatter_class=_formatter, help="stop it",
                          description="Stop the embedded PostgreSQL of the data directory (fast shutdown).\n"
                          "Refuses while other clients are connected (a running daemon), unless --force.")
    p.add_argument("--force", action="store_true", help="stop it even if clients are connected")
    p.set_defaults(handler="switchd.commands.db:stop")

    api.register(sub, _formatter)       # keys, webhooks, route (docs/api.md)
    campaigns.register(sub, _formatter)  # campaign, dnc (docs/campaigns.md)

    _add_common_options(parser)
    return parser


def _command_name(args) -> str:
    """`rates import`, `db status`: the command and its action (any `*_command` dest)."""
    actions = [value for key, value in vars(args).items()
               if key.endswith("_command") and isinstance(value, str)]
    return " ".join([args.command, *actions])


def _terminate(signum, frame):
    print("switchd: terminated (SIGTERM)", file=sys.stderr)
    raise SystemExit(143)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in GEVENT_COMMANDS:
        from gevent import monkey
        monkey.patch_all()
    if args.command != "run":              # the daemon drains on SIGTERM by itself
        signal.signal(signal.SIGTERM, _terminate)
        if args.command in GEVENT_COMMANDS:
            # Ctrl-C is thrown into the main greenlet, which unwinds and cleans up, instead
            # of into whichever greenlet happened to run.
            import gevent
            gevent.signal_handler(signal.SIGINT, gevent.kill, gevent.getcurrent(), KeyboardInterrupt)
    from importlib import import_module
    from switchd.config import load_config
    from switchd.adapters.db.connect import release_embedded_servers
    from switchd.exitcodes import report_failure
    module_name, func_name = args.handler.split(":")
    try:
        config = load_config(args.config)
        if getattr(args, "data_dir", None) and args.command != "demo":
            config = config.with_overrides(data_dir=args.data_dir)
        handler = getattr(import_module(module_name), func_name)
        return handler(config, args) or 0
    except (Exception, KeyboardInterrupt) as exc:   # the one place a failure becomes one line
        return report_failure(exc, _command_name(args), debug=args.debug)
    finally:
        release_embedded_servers()      # the embedded PostgreSQL this command had to start


if __name__ == "__main__":
    sys.exit(main())
