"""``switchd provision FILE.toml``: idempotent upsert of tenants, carriers, gateways, DIDs
and campaigns from one TOML file (format: docs/storage.md).

Everything is validated before anything is written, and every problem is reported (not
just the first), each naming the file, the table, the index and the key. Unknown keys are
errors so a typo never silently falls back to a default. The writes run in one
transaction; ``NOTIFY switchd_world`` is queued inside it, so PostgreSQL delivers it only
if the transaction commits and running daemons reload exactly the committed state.

An object in the file is its whole desired state: a key left out takes the schema default
(so deleting a line from the file resets that setting). Objects not in the file are left
alone; nothing is ever deleted (set ``enabled = false`` instead).
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Callable

import psycopg
from psycopg import sql

_LOCK_KEY = 0x5157_1C50  # serialises concurrent provision runs ("switchd provision")


class ProvisionError(ValueError):
    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


# --- validators: value -> normalised value, or raise ValueError("must be ...") ----------
def _str(v):
    if not isinstance(v, str) or not v.strip():
        raise ValueError("must be a non-empty string")
    return v


def _int(minimum: int, what: str) -> Callable:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ValueError(f"must be {what}")
        return v
    return check


def _dec(minimum_exclusive: bool, what: str) -> Callable:
    def check(v):
        # Floats never reach here: the file is parsed with parse_float=Decimal, so
        # 0.0125 is exactly 0.0125. Strings are accepted too ("0.0125").
        if isinstance(v, bool) or not isinstance(v, (int, Decimal, str)):
            raise ValueError(f"must be {what}")
        try:
            d = Decimal(v)
        except InvalidOperation:
            raise ValueError(f"must be {what}") from None
        if not d.is_finite() or d < 0 or (minimum_exclusive and d == 0):
            raise ValueError(f"must be {what}")
        return d
    return check


def _bool(v):
    if not isinstance(v, bool):
        raise ValueError("must be true or false")
    return v


def _enum(*choices: str) -> Callable:
    def check(v):
        if v not in choices:
            raise ValueError("must be one of " + ", ".join(repr(c) for c in choices))
        return v
    return check


def _match(pattern: str, what: str) -> Callable:
    rx = re.compile(pattern)

    def check(v):
        if not isinstance(v, str) or not rx.fullmatch(v):
            raise ValueError(f"must be {what}")
        return v
    return check


def _list(item: Callable, what: str) -> Callable:
    def check(v):
        if not isinstance(v, list):
            raise ValueError(f"must be a list of {what}")
        try:
            return [item(x) for x in v]
        except ValueError:
            raise ValueError(f"must be a list of {what}") from None
    return check


_POS_INT = _int(1, "a positive integer")
_NONNEG_INT = _int(0, "a non-negative integer")
_ANY_INT = _int(-(2 ** 31), "an integer")
_POS_DEC = _dec(True, "a positive decimal number")
_NONNEG_DEC = _dec(False, "a non-negative decimal number")
_REGION = _match(r"[A-Z]{2}", "an ISO 3166 region code like 'GB'")
_DIGITS = _match(r"[0-9]{1,16}", "digits (an E.164 prefix without '+')")

# table -> key -> (validator, required). Column names are the keys.
TENANT = {
    "name": (_str, True), "accountcode": (_str, False), "domain": (_str, False),
    "default_region": (_REGION, False), "max_call_seconds": (_POS_INT, False),
    "max_concurrent": (_NONNEG_INT, False), "cps_limit": (_POS_DEC, False),
    "monthly_budget": (_NONNEG_DEC, False),
    "allowed_countries": (_list(_REGION, "ISO 3166 region codes like 'GB'"), False),
    "allowed_prefixes": (_list(_DIGITS, "digit prefixes"), False),
    "blocked_prefixes": (_list(_DIGITS, "digit prefixes"), False),
    "max_rate_per_min": (_NONNEG_DEC, False),
    "allowed_carriers": (_list(_str, "carrier names"), False),
    "routing_mode": (_enum("cost", "priority"), False), "enabled": (_bool, False),
}
CARRIER = {
    "name": (_str, True), "enabled": (_bool, False), "priority": (_ANY_INT, False),
    "max_channels": (_NONNEG_INT, False), "cps_limit": (_POS_DEC, False),
    "default_initial_increment": (_POS_INT, False),
    "default_subsequent_increment": (_POS_INT, False),
    "gateways": (lambda v: v, False),   # checked on its own below
}
GATEWAY = {
    "name": (_match(r"[A-Za-z0-9_.\-]+", "a sofia gateway name (letters, digits, _ . -)"), True),
    "profile": (_match(r"[A-Za-z0-9_.\-]+", "a sofia profile name"), False),
    "position": (_NONNEG_INT, False), "leg_timeout": (_POS_INT, False),
    "enabled": (_bool, False),
}
DID = {
    "number": (_match(r"\+[0-9]{4,16}", "an E.164 number with '+' (e.g. '+442079460000')"), True),
    "tenant": (_str, True),
    "destination_type": (_enum("extension", "sip_uri", "number"), True),
    "destination": (_str, True),
    "profile": (_match(r"[A-Za-z0-9_.\-]+", "a sofia profile name"), False),
}
CAMPAIGN = {
    "name": (_str, True), "tenant": (_str, True),
    "max_concurrent": (_NONNEG_INT, False), "cps_limit": (_POS_DEC, False),
}
# Schema defaults, so that a key left out of the file resets the column (see module doc).
DEFAULTS = {
    "tenants": {"accountcode": None, "domain": None, "default_region": "US",
                "max_call_seconds": 3600, "max_concurrent": None, "cps_limit": None,
                "monthly_budget": None, "allowed_countries": [], "allowed_prefixes": [],
                "blocked_prefixes": [], "max_rate_per_min": None, "allowed_carriers": [],
                "routing_mode": "cost", "enabled": True},
    "carriers": {"enabled": True, "priority": 100, "max_channels": None, "cps_limit": None,
                 "default_initial_increment": 60, "default_subsequent_increment": 60},
    "gateways": {"profile": "external", "leg_timeout": 30, "enabled": True},
    "campaigns": {"max_concurrent": None, "cps_limit": None},
}
SECTIONS = {"tenants": TENANT, "carriers": CARRIER, "dids": DID, "campaigns": CAMPAIGN}


@dataclass(frozen=True)
class ProvisionSummary:
    path: str
    # table -> {"inserted": n, "updated": n, "unchanged": n}
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return any(c["inserted"] or c["updated"] for c in self.counts.values())

    def __str__(self) -> str:
        parts = [f"{t}: {c['inserted']} new, {c['updated']} updated, {c['unchanged']} unchanged"
                 for t, c in self.counts.items()]
        return f"{self.path}: " + "; ".join(parts)


# --- parsing and validation ---------------------------------------------------------------
def parse(path: str | Path) -> dict[str, list[dict]]:
    """Read and validate the file alone (no database). Raises ProvisionError."""
    label = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ProvisionError([f"{label}: cannot read: {exc.strerror or exc}"]) from None
    try:
        doc = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        # The message carries "(at line N, column M)".
        raise ProvisionError([f"{label}: TOML syntax error: {exc}"]) from None
    errors: list[str] = []
    out: dict[str, list[dict]] = {}
    for key in doc:
        if key not in SECTIONS:
            errors.append(f"{label}: {key}: unknown key (expected "
                          + ", ".join(f"[[{s}]]" for s in SECTIONS) + ")")
    for section, spec in SECTIONS.items():
        items = doc.get(section, [])
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            errors.append(f"{label}: {section}: must be an array of tables ([[{section}]])")
            continue
        out[section] = [_check(f"{label}: {section}[{i}]", item, spec, errors)
                        for i, item in enumerate(items)]
    for i, (raw, carrier) in enumerate(zip(doc.get("carriers", []) or [], out.get("carriers", []))):
        gws = raw.get("gateways", []) if isinstance(raw, dict) else []
        where = f"{label}: carriers[{i}].gateways"
        if not isinstance(gws, list) or not all(isinstance(g, dict) for g in gws):
            errors.append(f"{where}: must be an array of tables ([[carriers.gateways]])")
            gws = []
        checked = [_check(f"{where}[{j}]", g, GATEWAY, errors) for j, g in enumerate(gws)]
        for j, g in enumerate(checked):
            g.setdefault("position", j)   # file order is failover order unless stated
        carrier["gateways"] = checked
    _unique(label, out, errors)
    if errors:
        raise ProvisionError(errors)
    return out


def _check(where: str, item: dict, spec: dict, errors: list[str]) -> dict:
    clean: dict[str, Any] = {}
    for key, value in item.items():
        if key not in spec:
            errors.append(f"{where}.{key}: unknown key (expected one of {', '.join(spec)})")
            continue
        try:
            clean[key] = spec[key][0](value)
        except ValueError as exc:
            errors.append(f"{where}.{key}: {exc}")
    for key, (_, required) in spec.items():
        if required and key not in item:
            errors.append(f"{where}.{key}: required")
    return clean


def _unique(label: str, out: dict, errors: list[str]) -> None:
    checks = [("tenants", "name"), ("tenants", "accountcode"), ("tenants", "domain"),
              ("carriers", "name"), ("dids", "number"), ("campaigns", "name")]
    for section, key in checks:
        seen: dict[Any, int] = {}
        for i, item in enumerate(out.get(section, [])):
            value = item.get(key)
            if value is None:
                continue
            if value in seen:
                errors.append(f"{label}: {section}[{i}].{key}: {value!r} already used by "
                              f"{section}[{seen[value]}]")
            seen.setdefault(value, i)
    seen_gw: dict[str, str] = {}
    for i, carrier in enumerate(out.get("carriers", [])):
        for j, gw in enumerate(carrier.get("gateways", [])):
            name, here = gw.get("name"), f"carriers[{i}].gateways[{j}]"
            if name in seen_gw:
                errors.append(f"{label}: {here}.name: {name!r} already used by {seen_gw[name]}")
            elif name is not None:
                seen_gw[name] = here


def _check_references(label: str, conn: psycopg.Connection, data: dict) -> list[str]:
    """Cross-references and uniqueness against what the database already holds."""
    errors = []
    tenants = {r[0] for r in conn.execute("SELECT name FROM tenants")}
    tenants |= {t["name"] for t in data["tenants"]}
    carriers = {r[0] for r in conn.execute("SELECT name FROM carriers")}
    carriers |= {c["name"] for c in data["carriers"]}
    for section in ("dids", "campaigns"):
        for i, item in enumerate(data[section]):
            if item["tenant"] not in tenants:
                errors.append(f"{label}: {section}[{i}].tenant: no tenant named {item['tenant']!r}")
    for i, t in enumerate(data["tenants"]):
        for name in t.get("allowed_carriers", []):
            if name not in carriers:
                errors.append(f"{label}: tenants[{i}].allowed_carriers: no carrier named {name!r}")
        for key in ("accountcode", "domain"):
            if t.get(key) is None:
                continue
            row = conn.execute(sql.SQL("SELECT name FROM tenants WHERE {} = %s AND name <> %s")
                               .format(sql.Identifier(key)), (t[key], t["name"])).fetchone()
            if row:
                errors.append(f"{label}: tenants[{i}].{key}: {t[key]!r} already used by "
                              f"tenant {row[0]!r} in the database")
    return errors


# --- writing ----------------------------------------------------------------------------
def _upsert(conn, table: str, key: str, row: dict) -> str:
    """INSERT or UPDATE-if-different; returns 'inserted', 'updated' or 'unchanged'."""
    cols = list(row)
    others = [c for c in cols if c != key]
    ident = sql.Identifier
    query = sql.SQL(
        "INSERT INTO {t} ({cols}) VALUES ({vals}) ON CONFLICT ({key}) DO UPDATE SET {sets}"
        " WHERE ({old}) IS DISTINCT FROM ({new}) RETURNING (xmax = 0)").format(
        t=ident(table), cols=sql.SQL(", ").join(map(ident, cols)),
        vals=sql.SQL(", ").join(sql.Placeholder(c) for c in cols), key=ident(key),
        sets=sql.SQL(", ").join(sql.SQL("{} = EXCLUDED.{}").format(ident(c), ident(c))
                                for c in others)
        + (sql.SQL(", updated_at = now()") if table in ("tenants", "carriers") else sql.SQL("")),
        old=sql.SQL(", ").join(sql.SQL("{}.{}").format(ident(table), ident(c)) for c in others),
        new=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(ident(c)) for c in others))
    result = conn.execute(query, row).fetchone()
    if result is None:
        return "unchanged"
    return "inserted" if result[0] else "updated"


def _ids(conn, table: str) -> dict[str, int]:
    return {name: id_ for id_, name in conn.execute(
        sql.SQL("SELECT id, name FROM {}").format(sql.Identifier(table)))}


def provision(conn_or_url: psycopg.Connection | str, path: str | Path) -> ProvisionSummary:
    """Validate ``path`` then upsert it in one transaction. Raises ProvisionError."""
    data = parse(path)
    if isinstance(conn_or_url, str):
        with psycopg.connect(conn_or_url) as conn:
            return _provision(conn, path, data)
    return _provision(conn_or_url, path, data)


def _provision(conn: psycopg.Connection, path, data: dict) -> ProvisionSummary:
    label = str(path)
    counts = {t: {"inserted": 0, "updated": 0, "unchanged": 0}
              for t in ("tenants", "carriers", "gateways", "dids", "campaigns")}
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        errors = _check_references(label, conn, data)
        if errors:
            raise ProvisionError(errors)
        for t in data["tenants"]:
            counts["tenants"][_upsert(conn, "tenants", "name",
                                      {"name": t["name"], **DEFAULTS["tenants"], **t})] += 1
        for c in data["carriers"]:
            row = {"name": c["name"], **DEFAULTS["carriers"],
                   **{k: v for k, v in c.items() if k != "gateways"}}
            counts["carriers"][_upsert(conn, "carriers", "name", row)] += 1
        carrier_ids, tenant_ids = _ids(conn, "carriers"), _ids(conn, "tenants")
        for c in data["carriers"]:
            for g in c["gateways"]:
                row = {"name": g["name"], "carrier_id": carrier_ids[c["name"]],
                       **DEFAULTS["gateways"], **g}
                counts["gateways"][_upsert(conn, "gateways", "name", row)] += 1
        for d in data["dids"]:
            row = {"number": d["number"], "tenant_id": tenant_ids[d["tenant"]],
                   "destination_type": d["destination_type"], "destination": d["destination"],
                   "profile": d.get("profile")}
            counts["dids"][_upsert(conn, "dids", "number", row)] += 1
        for c in data["campaigns"]:
            row = {"name": c["name"], "tenant_id": tenant_ids[c["tenant"]],
                   **DEFAULTS["campaigns"],
                   **{k: v for k, v in c.items() if k != "tenant"}}
            counts["campaigns"][_upsert(conn, "campaigns", "name", row)] += 1
        summary = ProvisionSummary(label, counts)
        if summary.changed:
            # Queued now, delivered by PostgreSQL only when this transaction commits.
            conn.execute("SELECT pg_notify('switchd_world', %s)", (label,))
    return summary
