"""Commands of the application side (docs/api.md): `keys create|list|revoke`,
`webhooks set|show|delete`, and `route NUMBER --tenant T` (asks the running daemon, whose
live health and decks make the decision)."""
from __future__ import annotations

import json
import sys
from decimal import Decimal, InvalidOperation

from switchd.errors import CliError

_HERE = "switchd.commands.api"


def register(sub, formatter) -> None:
    keys = sub.add_parser("keys", formatter_class=formatter, help="API keys (create, list, revoke)",
                          description="API keys for /v1 (docs/api.md). A tenant key sees and "
                                      "changes only its tenant;\nan admin key manages everything. "
                                      "Only a hash is stored: the key is printed once.")
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION")
    actions.required = True
    p = actions.add_parser("create", formatter_class=formatter, help="create a key, print it once")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--tenant", help="the tenant the key belongs to")
    who.add_argument("--admin", action="store_true", help="an admin key (every tenant)")
    p.add_argument("--label", default="", help="a note shown in lists")
    p.add_argument("--rate", metavar="PER_S", help="requests per second (default 10)")
    p.add_argument("--burst", type=int, help="requests allowed at once (default 20)")
    p.set_defaults(handler=f"{_HERE}:keys_create")
    p = actions.add_parser("list", formatter_class=formatter, help="list keys (never the secret)")
    p.add_argument("--tenant", help="only this tenant's keys")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=f"{_HERE}:keys_list")
    p = actions.add_parser("revoke", formatter_class=formatter, help="revoke a key by its id")
    p.add_argument("prefix", help="the key's public id (sk_xxxxxxxx, as listed)")
    p.add_argument("--tenant", help="refuse unless the key is this tenant's")
    p.set_defaults(handler=f"{_HERE}:keys_revoke")

    hooks = sub.add_parser("webhooks", formatter_class=formatter, help="tenant webhooks",
                           description="Where a tenant's call events are POSTed, signed "
                                       "(docs/api.md, Webhooks).")
    actions = hooks.add_subparsers(dest="webhooks_command", metavar="ACTION")
    actions.required = True
    p = actions.add_parser("set", formatter_class=formatter, help="set URL (and secret)")
    p.add_argument("--tenant", required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--secret", help="signing secret (default: a new random one, printed)")
    p.set_defaults(handler=f"{_HERE}:webhooks_set")
    for name, what in (("show", "show URL and state"), ("delete", "remove the webhook")):
        p = actions.add_parser(name, formatter_class=formatter, help=what)
        p.add_argument("--tenant", required=True)
        p.set_defaults(handler=f"{_HERE}:webhooks_{name}")

    p = sub.add_parser("route", formatter_class=formatter, help="explain a routing decision",
                       description="The decision the running daemon would make for NUMBER "
                                   "dialled by TENANT now:\ncarriers in order with rates, max "
                                   "duration, why each other carrier was skipped.\nPlaces no "
                                   "call and takes no cap slot (POST /v1/routing/test).")
    p.add_argument("number")
    p.add_argument("--tenant", required=True)
    p.add_argument("--json", action="store_true", help="print the JSON answer")
    p.set_defaults(handler=f"{_HERE}:route")


def _connect(config):
    from switchd.commands.inventory import _connect as connect
    return connect(config)


def keys_create(config, args) -> int:
    from switchd.api import keys
    rate = None
    if args.rate is not None:
        try:
            rate = Decimal(args.rate)
        except InvalidOperation:
            raise CliError(f"--rate: {args.rate!r} is not a number") from None
    with _connect(config) as conn:
        try:
            token, row = keys.create(conn, tenant=args.tenant, admin=args.admin,
                                     label=args.label, rate_per_s=rate, burst=args.burst)
        except keys.KeyError_ as exc:
            raise CliError(str(exc)) from None
    print(token)
    print(f"{row['prefix']}: {'admin' if row['is_admin'] else 'tenant ' + row['tenant']}, "
          f"{row['rate_per_s']}/s burst {row['burst']} (shown once: store it now)",
          file=sys.stderr)
    return 0


def keys_list(config, args) -> int:
    from switchd.api import keys
    with _connect(config) as conn:
        rows = keys.list_keys(conn, args.tenant)
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
        return 0
    print(f"{'id':<12} {'tenant':<16} {'rate':>8} {'burst':>6} {'created':<20} state  label")
    for r in rows:
        print(f"{r['prefix']:<12} {('(admin)' if r['is_admin'] else r['tenant']):<16} "
              f"{r['rate_per_s']!s:>8} {r['burst']:>6} {r['created_at']:%Y-%m-%d %H:%M:%S}  "
              f"{'revoked' if r['revoked_at'] else 'active ':<7}{r['label']}")
    return 0


def keys_revoke(config, args) -> int:
    from switchd.api import keys
    with _connect(config) as conn:
        try:
            row = keys.revoke(conn, args.prefix, args.tenant)
        except keys.KeyError_ as exc:
            raise CliError(str(exc)) from None
    print(f"{row['prefix']} revoked at {row['revoked_at']:%Y-%m-%d %H:%M:%S%z}")
    return 0


def webhooks_set(config, args) -> int:
    from switchd.api import webhooks
    with _connect(config) as conn:
        try:
            row = webhooks.set_webhook(conn, args.tenant, args.url, args.secret)
        except (ValueError, LookupError) as exc:
            raise CliError(str(exc)) from None
    print(f"{row['tenant']}: {row['url']}")
    print(f"secret: {row['secret']}")
    return 0


def webhooks_show(config, args) -> int:
    from switchd.api import webhooks
    with _connect(config) as conn:
        row = webhooks.get_webhook(conn, args.tenant)
    if row is None:
        raise CliError(f"tenant {args.tenant!r} has no webhook")
    print(f"{row['tenant']}: {row['url']} ({'enabled' if row['enabled'] else 'disabled'})")
    return 0


def webhooks_delete(config, args) -> int:
    from switchd.api import webhooks
    with _connect(config) as conn:
        if not webhooks.delete_webhook(conn, args.tenant):
            raise CliError(f"tenant {args.tenant!r} has no webhook")
    print(f"{args.tenant}: webhook removed")
    return 0


def route(config, args) -> int:
    from switchd.commands.admin import _daemon_request
    answer = _daemon_request(config, "/v1/routing/test",
                             {"tenant": args.tenant, "number": args.number})
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    print(f"{answer.get('number', answer['dialled'])} for {answer['tenant']}: "
          f"{answer['result']} ({answer['reason']})"
          + (f", max {answer['max_duration']}s" if answer.get("max_duration") else ""))
    for c in answer.get("carriers", []):
        where = (f"#{c['position'] + 1}" if c["position"] is not None
                 else f"skipped: {c['skipped']}")
        rate = f"{c['rate_per_min']}/min" if c["rate_per_min"] is not None else "no rate"
        print(f"  {c['carrier']:<16} {rate:<16} health {c['health']:>3}  {where}")
    return 0
