"""What a provision file would change: read the stored world, diff it against the file
(created, changed field by field, deleted), check what deleting would break, and apply.

Deletion rules (docs/provisioning.md): a carrier takes its gateways and rate decks with it
(they belong to it); a tenant is never deleted while a DID or campaign that stays still
names it, and a carrier never while a tenant that stays lists it in allowed_carriers —
those are refused with the reason, so nothing disappears by surprise.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from dialplan import validate

ORDER = ("tenants", "carriers", "gateways", "dids", "campaigns")
KEY = {"tenants": "name", "carriers": "name", "gateways": "name", "dids": "number",
       "campaigns": "name"}
NOUN = {"tenants": "tenant", "carriers": "carrier", "gateways": "gateway", "dids": "DID",
        "campaigns": "campaign"}
# A reference column in the file (by name) and the table it points into.
_REF = {"tenant": ("tenant_id", "tenants"), "carrier": ("carrier_id", "carriers")}
_STAMPED = ("tenants", "carriers")           # tables with updated_at

_READ = {
    "tenants": "SELECT " + ", ".join(validate.TENANT) + " FROM tenants",
    "carriers": "SELECT " + ", ".join(f"c.{k}" for k in validate.CARRIER) +
                ", (SELECT count(*) FROM rate_decks d WHERE d.carrier_id = c.id) AS decks,"
                " (SELECT count(*) FROM gateways g WHERE g.carrier_id = c.id) AS gateway_count"
                " FROM carriers c",
    "gateways": "SELECT g.name, c.name AS carrier, g.profile, g.position, g.leg_timeout,"
                " g.media_timeout, g.enabled FROM gateways g JOIN carriers c ON c.id = g.carrier_id",
    "dids": "SELECT d.number, t.name AS tenant, d.destination_type, d.destination"
            " FROM dids d JOIN tenants t ON t.id = d.tenant_id",
    "campaigns": "SELECT c.name, t.name AS tenant, c.max_concurrent, c.cps_limit"
                 " FROM campaigns c JOIN tenants t ON t.id = c.tenant_id",
}


@dataclass(frozen=True)
class Change:
    op: str                 # "create" | "update" | "delete"
    section: str
    key: str
    fields: tuple = ()      # ((name, old, new), ...); old is None on create
    note: str = ""          # delete: why, and what goes with it

    def lines(self) -> list[str]:
        what = f"{NOUN[self.section]} {self.key}"
        if self.op == "create":
            return [f"+ {what}"] + [f"    {k} = {_show(new)}" for k, _, new in self.fields]
        if self.op == "update":
            return [f"~ {what}"] + [f"    {k}: {_show(old)} -> {_show(new)}"
                                    for k, old, new in self.fields]
        return [f"- {what} ({self.note})"]


@dataclass(frozen=True)
class ProvisionSummary:
    path: str
    changes: tuple = ()
    unchanged: dict = field(default_factory=dict)      # section -> count
    dry_run: bool = False

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        out = {s: {"inserted": 0, "updated": 0, "unchanged": self.unchanged.get(s, 0),
                   "deleted": 0} for s in ORDER}
        for c in self.changes:
            out[c.section][{"create": "inserted", "update": "updated",
                            "delete": "deleted"}[c.op]] += 1
        return out

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def diff(self) -> str:
        """The changes, one object per block: + created, ~ changed (field: old -> new),
        - deleted."""
        return "\n".join(line for c in self.changes for line in c.lines())

    def __str__(self) -> str:
        parts = [f"{t}: {c['inserted']} new, {c['updated']} updated, {c['unchanged']} unchanged"
                 + (f", {c['deleted']} deleted" if c["deleted"] else "")
                 for t, c in self.counts.items()]
        tail = " (dry run: nothing written)" if self.dry_run else ""
        return f"{self.path}: " + "; ".join(parts) + tail


def _show(value) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def _same(old, new) -> bool:
    if isinstance(old, (list, tuple)) or isinstance(new, (list, tuple)):
        return list(old or ()) == list(new or ())
    return old == new


def read_stored(conn: psycopg.Connection) -> dict[str, dict[str, dict]]:
    """section -> key -> stored row (references by name)."""
    out = {}
    with conn.cursor(row_factory=dict_row) as cur:
        for section in ORDER:
            cur.execute(_READ[section])
            out[section] = {r[KEY[section]]: r for r in cur.fetchall()}
    return out


def _desired(data: dict) -> dict[str, list[dict]]:
    out = {s: list(data.get(s, [])) for s in ("tenants", "dids", "campaigns")}
    out["carriers"] = [{k: v for k, v in c.items() if k != "gateways"}
                       for c in data.get("carriers", [])]
    out["gateways"] = [{**g, "carrier": c["name"]} for c in data.get("carriers", [])
                       for g in c.get("gateways", [])]
    return out


def diff(label: str, stored: dict, data: dict, prune: bool):
    """(changes, unchanged counts, errors) turning `stored` into what `data` says."""
    desired = _desired(data)
    changes: list[Change] = []
    unchanged = {s: 0 for s in ORDER}
    for section in ORDER:
        key = KEY[section]
        for obj in desired[section]:
            old = stored[section].get(obj[key])
            if old is None:
                changes.append(Change("create", section, obj[key],
                                      tuple((k, None, v) for k, v in obj.items() if k != key)))
                continue
            fields = tuple((k, old.get(k), v) for k, v in obj.items()
                           if k != key and not _same(old.get(k), v))
            if fields:
                changes.append(Change("update", section, obj[key], fields))
            else:
                unchanged[section] += 1
    deleting = _deletions(stored, data, desired, prune)
    for section in ORDER:
        for name, note in sorted(deleting[section].items()):
            changes.append(Change("delete", section, name, note=note))
    errors = _check_references(label, stored, desired, deleting)
    return changes, unchanged, errors


def _deletions(stored: dict, data: dict, desired: dict, prune: bool) -> dict[str, dict]:
    deleting: dict[str, dict[str, str]] = {s: {} for s in ORDER}
    for section, names in data.get("delete", {}).items():
        for name in names:
            if name in stored[section]:         # already absent: nothing to do (idempotent)
                deleting[section][name] = "[delete]"
    if prune:
        for section in ("tenants", "carriers", "dids", "campaigns"):
            if section not in data:
                continue                         # a section the file lacks is left alone
            listed = {o[KEY[section]] for o in desired[section]}
            for name in stored[section]:
                if name not in listed:
                    deleting[section].setdefault(name, "--prune")
        # Gateways of the carriers whose gateways the file lists.
        owners = {c["name"] for c in data.get("carriers", []) if "gateways" in c}
        listed = {g["name"] for g in desired["gateways"]}
        for name, row in stored["gateways"].items():
            if row["carrier"] in owners and name not in listed:
                deleting["gateways"].setdefault(name, "--prune")
    for name in list(deleting["carriers"]):
        row = stored["carriers"][name]
        deleting["carriers"][name] += (f"; with its {row['gateway_count']} gateway(s) and "
                                       f"{row['decks']} rate deck(s)")
        for gw, g in stored["gateways"].items():
            if g["carrier"] == name:
                deleting["gateways"].pop(gw, None)      # goes with its carrier
    return deleting


def _check_references(label: str, stored: dict, desired: dict, deleting: dict) -> list[str]:
    errors = []
    final = {s: (set(stored[s]) | {o[KEY[s]] for o in desired[s]}) - set(deleting[s])
             for s in ORDER}
    for section in ("dids", "campaigns"):
        for i, item in enumerate(desired[section]):
            tenant = item.get("tenant")
            if tenant in deleting["tenants"]:
                errors.append(f"{label}: {section}[{i}].tenant: tenant {tenant!r} is being deleted")
            elif tenant is not None and tenant not in final["tenants"]:
                errors.append(f"{label}: {section}[{i}].tenant: no tenant named {tenant!r}")
    users_of = {key: {row[key]: name for name, row in stored["tenants"].items()
                      if row[key] is not None} for key in ("accountcode", "domain")}
    for i, t in enumerate(desired["tenants"]):
        for name in t.get("allowed_carriers", []):
            if name not in final["carriers"]:
                why = "is being deleted" if name in deleting["carriers"] else "does not exist"
                errors.append(f"{label}: tenants[{i}].allowed_carriers: carrier {name!r} {why}")
        for key in ("accountcode", "domain"):
            other = users_of[key].get(t.get(key))
            if other is not None and other != t["name"] and other not in deleting["tenants"]:
                errors.append(f"{label}: tenants[{i}].{key}: {t[key]!r} already used by "
                              f"tenant {other!r} in the database")
    # Deleting something still referenced by what stays is refused, with the reason.
    final_tenant = {s: {k: r["tenant"] for k, r in stored[s].items()}
                    for s in ("dids", "campaigns")}
    for s in ("dids", "campaigns"):
        final_tenant[s].update({o[KEY[s]]: o["tenant"] for o in desired[s]})
    for tenant in sorted(deleting["tenants"]):
        users = [f"{NOUN[s]} {k}" for s in ("dids", "campaigns")
                 for k, owner in sorted(final_tenant[s].items())
                 if owner == tenant and k not in deleting[s]]
        if users:
            errors.append(f"{label}: cannot delete tenant {tenant!r}: still used by "
                          f"{', '.join(users)} (delete those too, or move them to another tenant)")
    allowed = {k: r["allowed_carriers"] for k, r in stored["tenants"].items()}
    allowed.update({t["name"]: t["allowed_carriers"] for t in desired["tenants"]
                    if "allowed_carriers" in t})
    for carrier in sorted(deleting["carriers"]):
        users = sorted(t for t, names in allowed.items()
                       if carrier in (names or ()) and t not in deleting["tenants"])
        if users:
            errors.append(f"{label}: cannot delete carrier {carrier!r}: tenant(s) "
                          f"{', '.join(users)} list it in allowed_carriers (remove it there first)")
    return errors


def apply(conn: psycopg.Connection, changes) -> None:
    """Write `changes` (inside the caller's transaction): deletions first, so a name or an
    accountcode freed by one can be taken by another; then creates and updates in
    dependency order."""
    for section in reversed(ORDER):
        names = [c.key for c in changes if c.op == "delete" and c.section == section]
        if names:
            conn.execute(sql.SQL("DELETE FROM {} WHERE {} = ANY(%s)").format(
                sql.Identifier(section), sql.Identifier(KEY[section])), (names,))
    for section in ORDER:
        for c in changes:
            if c.section == section and c.op in ("create", "update"):
                _write(conn, c)


def _column(name: str, value):
    """(column, SQL value expression, parameter) for one field of the file."""
    if name in _REF:
        column, table = _REF[name]
        return column, sql.SQL("(SELECT id FROM {} WHERE name = %s)").format(
            sql.Identifier(table)), value
    if isinstance(value, dict):          # a table value (tenants.retry) is stored as jsonb
        value = Jsonb(value)
    return name, sql.SQL("%s"), value


def _write(conn: psycopg.Connection, change: Change) -> None:
    table, ident = change.section, sql.Identifier
    cols = [_column(k, new) for k, _, new in change.fields]
    params = [p for _, _, p in cols]
    if change.op == "create":
        names = [KEY[table]] + [c for c, _, _ in cols]
        query = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            ident(table), sql.SQL(", ").join(ident(c) for c in names),
            sql.SQL(", ").join([sql.SQL("%s")] + [e for _, e, _ in cols]))
        conn.execute(query, [change.key] + params)
        return
    sets = [sql.SQL("{} = {}").format(ident(c), e) for c, e, _ in cols]
    if table in _STAMPED:
        sets.append(sql.SQL("updated_at = now()"))
    conn.execute(sql.SQL("UPDATE {} SET {} WHERE {} = %s").format(
        ident(table), sql.SQL(", ").join(sets), ident(KEY[table])), params + [change.key])
