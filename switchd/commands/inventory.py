"""Operator commands over the provisioned world: `provision --dry-run/--prune`,
`tenants|carriers|dids list`, `rates list|export|delete` (docs/provisioning.md, docs/rates.md).

`register` adds them to the parser built in switchd/cli.py; nothing heavy is imported
until a handler runs (gevent patching happens first, in cli.main).
"""
from __future__ import annotations

import json
import sys
from decimal import Decimal

from switchd.errors import InputError

_HERE = "switchd.commands.inventory"


def add_provision_flags(parser) -> None:
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would be created, changed (field by field) and "
                             "deleted; write nothing")
    parser.add_argument("--prune", action="store_true",
                        help="delete the objects of each section the file has but does not "
                             "list (see docs/provisioning.md)")


def register(sub, rates_sub, formatter) -> None:
    for noun, what in (("tenants", "tenants: account code, domain, limits, budget"),
                       ("carriers", "carriers: gateways, priority, health, rate decks"),
                       ("dids", "DIDs: tenant and destination")):
        group = sub.add_parser(noun, formatter_class=formatter, help=f"list {noun}",
                               description=f"Provisioned {noun} (change them with "
                                           "`switchd provision`).")
        actions = group.add_subparsers(dest=f"{noun}_command", metavar="ACTION")
        actions.required = True
        p = actions.add_parser("list", formatter_class=formatter, help=f"list {what}",
                               description=f"List {what}: a table, or --json for scripts.")
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        p.set_defaults(handler=f"{_HERE}:{noun}_list")

    p = rates_sub.add_parser("list", formatter_class=formatter, help="list a carrier's decks",
                             description="A carrier's rate decks: id, start, import time, rows "
                                         "and state\n(live now, future, superseded).")
    p.add_argument("--carrier", required=True, metavar="NAME")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=f"{_HERE}:rates_list")

    p = rates_sub.add_parser("export", formatter_class=formatter, help="write a deck as CSV",
                             description="Write the deck live at --at (default now), or deck "
                                         "--deck, to stdout\nas a CSV that `switchd rates "
                                         "import` reads back to the same rows.")
    p.add_argument("--carrier", required=True, metavar="NAME")
    p.add_argument("--at", metavar="ISO8601", help="the deck live at this time (default now)")
    p.add_argument("--deck", type=int, metavar="ID", help="this deck (see rates list)")
    p.set_defaults(handler=f"{_HERE}:rates_export")

    p = rates_sub.add_parser("delete", formatter_class=formatter, help="delete one deck",
                             description="Delete one deck of a carrier; running daemons "
                                         "reload the carrier at once.\nThe previous deck "
                                         "(if any) becomes live again.")
    p.add_argument("--carrier", required=True, metavar="NAME")
    p.add_argument("--deck", required=True, type=int, metavar="ID")
    p.set_defaults(handler=f"{_HERE}:rates_delete")


# --- handlers ---------------------------------------------------------------------------
def _connect(config):
    import psycopg
    from switchd.commands.admin import _db_url
    return psycopg.connect(_db_url(config))


def provision(config, args) -> int:
    import psycopg
    from switchd.commands.admin import _db_url
    from switchd.commands.inputs import not_utf8
    from switchd.admin.provision import provision as run_provision
    url = _db_url(config)
    try:
        # A ProvisionError (every problem, each naming the file and the key) goes to
        # switchd/exitcodes.py as it is: the first problems on one line, status 4.
        summary = run_provision(url, args.file, dry_run=args.dry_run, prune=args.prune)
    except UnicodeDecodeError:
        raise not_utf8(args.file) from None
    except psycopg.DataError as exc:
        reason = str(exc).strip().splitlines()[0]
        raise InputError(f"{args.file}: the database refused a value ({reason}); nothing was "
                         "written: check the file's numbers and amounts") from exc
    if summary.changes:
        print(summary.diff())
    print(summary)
    return 0


def _json(rows) -> None:
    print(json.dumps(rows, indent=2, default=lambda v: str(v) if isinstance(v, Decimal)
                     else v.isoformat() if hasattr(v, "isoformat") else str(v)))


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "-"
    if hasattr(value, "isoformat"):
        return value.isoformat(timespec="seconds")
    return str(value)


def _table(rows: list[dict], columns: dict[str, str], empty: str) -> None:
    if not rows:
        print(empty)
        return
    from switchd.commands.admin import _print_table
    _print_table([tuple(columns.values())]
                 + [tuple(_cell(r[c]) for c in columns) for r in rows])


def tenants_list(config, args) -> int:
    from switchd.admin import inventory
    with _connect(config) as conn:
        rows = inventory.tenants(conn)
    if args.json:
        _json(rows)
        return 0
    _table(rows, {"name": "NAME", "accountcode": "ACCOUNTCODE", "domain": "DOMAIN",
                  "default_region": "REGION", "max_concurrent": "MAX CALLS",
                  "monthly_budget": "BUDGET", "max_rate_per_min": "MAX RATE",
                  "enabled": "ENABLED"}, "no tenants (load some with switchd provision)")
    return 0


def carriers_list(config, args) -> int:
    from switchd.admin import inventory
    with _connect(config) as conn:
        rows = inventory.carriers(conn)
    if args.json:
        _json(rows)
        return 0
    for r in rows:
        r["gateway_names"] = [g["name"] for g in r["gateways"]]
    _table(rows, {"name": "NAME", "enabled": "ENABLED", "priority": "PRIORITY",
                  "max_channels": "MAX CH", "health": "HEALTH", "gateway_names": "GATEWAYS",
                  "decks": "DECKS"}, "no carriers (load some with switchd provision)")
    return 0


def dids_list(config, args) -> int:
    from switchd.admin import inventory
    with _connect(config) as conn:
        rows = inventory.dids(conn)
    if args.json:
        _json(rows)
        return 0
    _table(rows, {"number": "NUMBER", "tenant": "TENANT", "destination_type": "TYPE",
                  "destination": "DESTINATION"}, "no DIDs (load some with switchd provision)")
    return 0


def rates_list(config, args) -> int:
    from switchd.admin import inventory
    with _connect(config) as conn:
        try:
            rows = inventory.decks(conn, args.carrier)
        except inventory.InventoryError as exc:
            raise InputError(str(exc)) from None
    if args.json:
        _json(rows)
        return 0
    for r in rows:
        r["start"] = r["effective_from"] or "(base: always)"
    _table(rows, {"id": "DECK", "start": "EFFECTIVE FROM", "imported_at": "IMPORTED",
                  "row_count": "ROWS", "state": "STATE", "source": "SOURCE"},
           f"carrier {args.carrier} has no rate decks (switchd rates import)")
    return 0


def rates_export(config, args) -> int:
    from switchd.admin import inventory
    from switchd.commands.admin import _parse_instant
    at = _parse_instant(args.at, "--at")
    with _connect(config) as conn:
        try:
            rows = inventory.export_deck(conn, args.carrier, sys.stdout, at=at, deck_id=args.deck)
        except inventory.InventoryError as exc:
            raise InputError(str(exc)) from None
    print(f"exported {rows} rate(s) of carrier {args.carrier}", file=sys.stderr)
    return 0


def rates_delete(config, args) -> int:
    from switchd.admin import inventory
    with _connect(config) as conn:
        try:
            deck = inventory.delete_deck(conn, args.carrier, args.deck)
            now = inventory.decks(conn, args.carrier)
        except inventory.InventoryError as exc:
            raise InputError(str(exc)) from None
    live = next((d for d in now if d["state"] == "live"), None)
    start = deck["effective_from"].isoformat() if deck["effective_from"] else "the base deck"
    print(f"deleted deck {deck['id']} of carrier {args.carrier} ({start}, "
          f"{deck['row_count']} rows); live now: "
          + (f"deck {live['id']}" if live else "none (the carrier routes nowhere)"))
    return 0
