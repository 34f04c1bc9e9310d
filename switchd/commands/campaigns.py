"""CLI `switchd campaign ...` and `switchd dnc ...` (docs/campaigns.md): the same rules and
store as /v1/campaigns, straight on PostgreSQL. Running daemons pick up every change."""
from __future__ import annotations

import json
from pathlib import Path

from switchd.errors import CliError, InputError

_HERE = "switchd.commands.campaigns"
_ACTIONS = ("start", "pause", "resume", "stop")


def register(sub, formatter) -> None:
    camp = sub.add_parser("campaign", formatter_class=formatter, help="dialling campaigns",
                          description="Campaigns: contacts dialled at a pace, within calling "
                                      "hours in each contact's time zone,\nskipping the "
                                      "tenant's do-not-call list (docs/campaigns.md).")
    actions = camp.add_subparsers(dest="campaign_command", metavar="ACTION")
    actions.required = True
    p = actions.add_parser("create", formatter_class=formatter, help="create a campaign",
                           description="Create a campaign (state draft; --start runs it).")
    p.add_argument("name")
    p.add_argument("--tenant", required=True)
    p.add_argument("--csv", metavar="FILE", help="contacts: a CSV with a `number` column")
    p.add_argument("--pace", metavar="CPS", help="calls per second (default 1)")
    p.add_argument("--max-concurrent", type=int, help="calls at once at most (default 10)")
    p.add_argument("--hours", metavar="HH:MM-HH:MM", help="calling hours, contact's local time")
    p.add_argument("--days", metavar="DAYS", help="calling days, e.g. mon-fri (default: all)")
    p.add_argument("--timezone", metavar="ZONE",
                   help="zone of numbers whose own zone is unknown (default UTC)")
    p.add_argument("--caller-id", metavar="NUMBER")
    p.add_argument("--timeout", type=int, metavar="S", help="ring time per call (default 30)")
    p.add_argument("--min-answer-rate", metavar="RATE",
                   help="pause when the answer rate falls below this (0-1)")
    p.add_argument("--answer-rate-window", type=int, metavar="N",
                   help="attempts the answer rate is measured over (default 50)")
    p.add_argument("--start", action="store_true", help="start dialling at once")
    p.set_defaults(handler=f"{_HERE}:create")
    p = actions.add_parser("add", formatter_class=formatter, help="add contacts from a CSV")
    p.add_argument("name")
    p.add_argument("csv", metavar="FILE.csv")
    p.set_defaults(handler=f"{_HERE}:add")
    for action in _ACTIONS:
        p = actions.add_parser(action, formatter_class=formatter, help=f"{action} a campaign")
        p.add_argument("name")
        p.add_argument("--reason", help="shown in the campaign's state_reason")
        p.set_defaults(handler=f"{_HERE}:act", action=action)
    p = actions.add_parser("show", formatter_class=formatter, help="settings, state, progress")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=f"{_HERE}:show")
    p = actions.add_parser("list", formatter_class=formatter, help="campaigns and progress")
    p.add_argument("--tenant", help="only this tenant's")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=f"{_HERE}:list_")
    p = actions.add_parser("contacts", formatter_class=formatter, help="contacts and outcomes")
    p.add_argument("name")
    p.add_argument("--state", choices=("pending", "dialing", "live", "done"))
    p.add_argument("--outcome")
    p.add_argument("--json", action="store_true", help="print JSON lines")
    p.set_defaults(handler=f"{_HERE}:contacts")
    p = actions.add_parser("requeue-unknown", formatter_class=formatter,
                           help="dial again the contacts whose outcome is unknown",
                           description="Contacts a daemon claimed and then died with before "
                                       "the originate's result\nare `unknown` and never "
                                       "re-dialled by themselves; this puts them back.")
    p.add_argument("name")
    p.set_defaults(handler=f"{_HERE}:requeue_unknown")

    dnc = sub.add_parser("dnc", formatter_class=formatter, help="do-not-call lists",
                         description="A tenant's do-not-call list, checked when each contact "
                                     "is dialled.")
    actions = dnc.add_subparsers(dest="dnc_command", metavar="ACTION")
    actions.required = True
    p = actions.add_parser("add", formatter_class=formatter, help="add numbers")
    p.add_argument("numbers", nargs="+", metavar="NUMBER")
    p.add_argument("--tenant", required=True)
    p.add_argument("--note", default="")
    p.set_defaults(handler=f"{_HERE}:dnc_add")
    p = actions.add_parser("remove", formatter_class=formatter, help="remove a number")
    p.add_argument("number")
    p.add_argument("--tenant", required=True)
    p.set_defaults(handler=f"{_HERE}:dnc_remove")
    p = actions.add_parser("list", formatter_class=formatter, help="list numbers")
    p.add_argument("--tenant")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=f"{_HERE}:dnc_list")


def _connect(config):
    import psycopg
    from switchd.commands.admin import _db_url
    return psycopg.connect(_db_url(config), autocommit=True)


def _read_csv(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8") from None
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from None


def _spec_errors(func, *args, where: str = ""):
    from switchd.campaigns import spec, store
    try:
        return func(*args)
    except spec.SpecError as exc:
        raise InputError(f"{where}{exc}") from None
    except (store.NotFound, store.Conflict) as exc:
        raise CliError(str(exc)) from None


def create(config, args) -> int:
    from switchd.campaigns import spec, store
    body = {k: v for k, v in (("pace_cps", args.pace), ("max_concurrent", args.max_concurrent),
                              ("calling_hours", args.hours), ("calling_days", args.days),
                              ("default_timezone", args.timezone), ("caller_id", args.caller_id),
                              ("timeout_s", args.timeout),
                              ("min_answer_rate", args.min_answer_rate),
                              ("answer_rate_window", args.answer_rate_window)) if v is not None}
    settings = _spec_errors(spec.settings, body)
    with _connect(config) as conn:
        region = conn.execute("SELECT default_region FROM tenants WHERE name = %s",
                              (args.tenant,)).fetchone()
        if region is None:
            raise CliError(f"tenant: no tenant named {args.tenant!r}")
        contacts = []
        if args.csv:
            contacts = _spec_errors(spec.contacts_csv, _read_csv(args.csv), region[0] or "US",
                                    settings["default_timezone"], where=f"{args.csv}: ")
        with conn.transaction():
            row = _spec_errors(store.create, conn, args.tenant, args.name, settings)
            added = store.add_contacts(conn, row["id"], contacts) if contacts else None
            if args.start:
                row = store.act(conn, args.name, None, "start", None,
                                config["webhooks.give_up_after"])
    print(f"campaign {row['name']} ({row['tenant']}): {row['state']}"
          + (f", {added['added']} contact(s) added, {added['duplicates']} duplicate(s) skipped"
             if added else ""))
    return 0


def add(config, args) -> int:
    from switchd.campaigns import spec, store
    with _connect(config) as conn:
        row = _spec_errors(store.get, conn, args.name, None)
        contacts = _spec_errors(spec.contacts_csv, _read_csv(args.csv),
                                row["default_region"] or "US", row["default_timezone"],
                                where=f"{args.csv}: ")
        added = store.add_contacts(conn, row["id"], contacts)
    print(f"{args.name}: {added['added']} contact(s) added, {added['duplicates']} duplicate(s) "
          "skipped")
    return 0


def act(config, args) -> int:
    from switchd.campaigns import store
    reason = args.reason or (f"{args.action} from the CLI" if args.action in ("pause", "stop")
                             else None)
    with _connect(config) as conn:
        row = _spec_errors(store.act, conn, args.name, None, args.action, reason,
                           config["webhooks.give_up_after"])
    print(f"{row['name']}: {row['state']}")
    return 0


def _view(conn, row) -> dict:
    from switchd.campaigns import store
    return {**store.public(row), "progress": store.progress(conn, row["id"])}


def show(config, args) -> int:
    from switchd.campaigns import store
    with _connect(config) as conn:
        view = _view(conn, _spec_errors(store.get, conn, args.name, None))
    if args.json:
        print(json.dumps(view, default=str, indent=2))
        return 0
    p = view["progress"]
    print(f"{view['name']} ({view['tenant']}): {view['state']}"
          + (f" — {view['state_reason']}" if view["state_reason"] else ""))
    print(f"  pace {view['pace_cps']}/s, at most {view['max_concurrent']} at once, hours "
          f"{view['calling_hours'] or 'any'} on {view['calling_days']}")
    print(f"  contacts {p['contacts']}: pending {p['pending']}, dialing {p['dialing']}, "
          f"live {p['live']}, done {p['done']}; answer rate {p['answer_rate']}")
    print("  outcomes: " + ", ".join(f"{k} {v}" for k, v in p["outcomes"].items()))
    return 0


def list_(config, args) -> int:
    from switchd.campaigns import store
    with _connect(config) as conn:
        views = [_view(conn, r) for r in store.list_campaigns(conn, args.tenant)]
    if args.json:
        print(json.dumps(views, default=str, indent=2))
        return 0
    print(f"{'campaign':<20} {'tenant':<12} {'state':<10} {'pace':>7} {'done':>8} {'total':>8}")
    for v in views:
        print(f"{v['name']:<20} {v['tenant']:<12} {v['state']:<10} {v['pace_cps']!s:>7} "
              f"{v['progress']['done']:>8} {v['progress']['contacts']:>8}")
    return 0


def contacts(config, args) -> int:
    from switchd.campaigns import store
    with _connect(config) as conn:
        row = _spec_errors(store.get, conn, args.name, None)
        after = 0
        while True:
            page = store.list_contacts(conn, row["id"], args.state, args.outcome, after, 1000)
            for c in page:
                if args.json:
                    print(json.dumps(c, default=str))
                else:
                    print(f"{c['number']:<16} {c['state']:<8} {c['outcome'] or '-':<10} "
                          f"{c['hangup_cause'] or '-':<24} {c['call_uuid'] or '-'}")
            if len(page) < 1000:
                return 0
            after = page[-1]["id"]


def requeue_unknown(config, args) -> int:
    from switchd.campaigns import store
    with _connect(config) as conn:
        row = _spec_errors(store.get, conn, args.name, None)
        count = store.requeue_unknown(conn, row["id"])
    print(f"{args.name}: {count} contact(s) back to pending")
    return 0


def _e164(conn, tenant: str, raw: str) -> str:
    from dialplan import numbers
    region = conn.execute("SELECT default_region FROM tenants WHERE name = %s",
                          (tenant,)).fetchone()
    if region is None:
        raise CliError(f"tenant: no tenant named {tenant!r}")
    try:
        return numbers.normalise(raw, region[0] or "US").e164
    except numbers.NumberError as exc:
        raise InputError(f"{raw!r}: {exc}") from None


def dnc_add(config, args) -> int:
    from switchd.campaigns import store
    with _connect(config) as conn:
        e164 = [_e164(conn, args.tenant, n) for n in args.numbers]
        added = _spec_errors(store.dnc_add, conn, args.tenant, e164, args.note)
    print(f"{args.tenant}: {added} number(s) added to the do-not-call list")
    return 0


def dnc_remove(config, args) -> int:
    from switchd.campaigns import store
    with _connect(config) as conn:
        number = _e164(conn, args.tenant, args.number)
        if not _spec_errors(store.dnc_remove, conn, args.tenant, number):
            raise CliError(f"{number} is not on {args.tenant}'s do-not-call list")
    print(f"{args.tenant}: {number} removed")
    return 0


def dnc_list(config, args) -> int:
    from switchd.campaigns import store
    with _connect(config) as conn:
        rows = store.dnc_list(conn, args.tenant)
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
        return 0
    for r in rows:
        print(f"{r['tenant']:<16} {r['number']:<16} {r['note']}")
    return 0
