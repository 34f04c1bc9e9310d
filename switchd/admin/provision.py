"""``switchd provision FILE.toml``: idempotent upsert of tenants, carriers, gateways, DIDs
and campaigns from one TOML file, with a diff, a dry run and explicit deletion
(format and semantics: docs/provisioning.md).

Everything is validated before anything is written, with the rules of
dialplan/validate.py — the same the XML renderer enforces — and every problem is reported
(not just the first), each naming the file, the section, the index and the key. Unknown
keys are errors so a typo never silently falls back to a default. The writes run in one
transaction; ``NOTIFY switchd_world`` is queued inside it, so PostgreSQL delivers it only
if the transaction commits and running daemons reload exactly the committed state.

Semantics of a key: present in the file, it sets the stored value (``""`` clears an
optional limit); absent, the stored value is kept (a new object gets the schema default).
Objects are deleted only when asked: listed under ``[delete]``, or with ``prune`` (objects
of a section the file has but does not list). The diff is computed in provision_diff.py.
"""
from __future__ import annotations

import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

from dialplan import validate
from switchd.admin import provision_diff, toml_lines
from switchd.admin.provision_diff import ProvisionSummary

__all__ = ["ProvisionError", "ProvisionSummary", "parse", "parse_doc", "provision", "SECTIONS"]

_LOCK_KEY = 0x5157_1C50  # serialises concurrent provision runs ("switchd provision")
SECTIONS = ("tenants", "carriers", "dids", "campaigns")
DELETABLE = ("tenants", "carriers", "gateways", "dids", "campaigns")


class ProvisionError(ValueError):
    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


# --- parsing and validation ---------------------------------------------------------------
def parse(path: str | Path) -> dict[str, Any]:
    """Read and validate the file alone (no database). Raises ProvisionError.

    Returns {section: [object, ...]} for the sections present (an object holds only the
    keys the file sets, checked and normalised), plus "delete": {section: [key, ...]}."""
    label = str(path)
    try:
        data = Path(path).read_bytes()
        text = data.decode("utf-8")
    except OSError as exc:
        raise ProvisionError([f"{label}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ProvisionError([f"{label}: not UTF-8 text: byte 0x{data[exc.start]:02x} at offset "
                              f"{exc.start} (line {line}); save it as UTF-8"]) from None
    try:
        doc = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        # The message carries "(at line N, column M)".
        raise ProvisionError([f"{label}: TOML syntax error: {exc}"]) from None
    return parse_doc(label, doc, toml_lines.key_lines(text))


class _Place:
    """Names a value in an error: `file:LINE: tenants[0].name` when the line is known."""

    def __init__(self, label: str, lines: dict[str, int] | None):
        self.label, self.lines = label, lines or {}

    def __call__(self, path: str) -> str:
        line = toml_lines.line_of(self.lines, path)
        return f"{self.label}:{line}: {path}" if line else f"{self.label}: {path}"


def parse_doc(label: str, doc: dict, lines: dict[str, int] | None = None) -> dict[str, Any]:
    """What parse() returns, for a document already decoded (the REST API's JSON bodies
    go through here, so they are checked exactly as a provision file is). `lines`: where
    each key is in the file (toml_lines.key_lines), for errors that name the line."""
    at = _Place(label, lines)
    errors: list[str] = []
    out: dict[str, Any] = {"delete": {}}
    for key in doc:
        if key not in SECTIONS and key != "delete":
            errors.append(f"{at(key)}: unknown key (expected "
                          + ", ".join(f"[[{s}]]" for s in SECTIONS) + " or [delete])")
    for section in SECTIONS:
        if section not in doc:
            continue
        items = doc[section]
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            errors.append(f"{at(section)}: must be an array of tables ([[{section}]])")
            continue
        out[section] = [_carrier(at, i, item, errors) if section == "carriers"
                        else _check(at, f"{section}[{i}]", item, section, errors)
                        for i, item in enumerate(items)]
    _parse_delete(at, doc.get("delete"), out, errors)
    _unique(at, out, errors)
    if errors:
        raise ProvisionError(errors)
    return out


def _check(at: _Place, where: str, item: dict, section: str, errors: list[str]) -> dict:
    spec = validate.SPECS[section]
    clean: dict[str, Any] = {}
    for key, value in item.items():
        if key not in spec:
            errors.append(f"{at(where + '.' + key)}: unknown key (expected one of {', '.join(spec)})")
            continue
        try:
            clean[key] = validate.check_field(spec[key], value)
        except validate.Invalid as exc:
            errors.append(f"{at(where + '.' + key)}: {exc}")
    for key, reason in validate.record_problems(section, clean):
        if key == "destination":                # the one check across keys (by type)
            errors.append(f"{at(where + '.' + key)}: {reason}")
    for key, field in spec.items():
        if field.required and key not in item:
            errors.append(f"{at(where)}.{key}: required")
    return clean


def _carrier(at: _Place, i: int, raw: dict, errors: list[str]) -> dict:
    gateways = raw.get("gateways")
    carrier = _check(at, f"carriers[{i}]", {k: v for k, v in raw.items() if k != "gateways"},
                     "carriers", errors)
    if gateways is None:
        return carrier                          # gateways not named: stored ones kept
    where = f"carriers[{i}].gateways"
    if not isinstance(gateways, list) or not all(isinstance(g, dict) for g in gateways):
        errors.append(f"{at(where)}: must be an array of tables ([[carriers.gateways]])")
        gateways = []
    checked = [_check(at, f"{where}[{j}]", g, "gateways", errors) for j, g in enumerate(gateways)]
    for j, g in enumerate(checked):
        g.setdefault("position", j)   # file order is failover order unless stated
    carrier["gateways"] = checked
    return carrier


_DELETE_KEY = {"tenants": validate.name, "carriers": validate.name, "gateways": validate.name,
               "dids": validate.did_number, "campaigns": validate.name}


def _parse_delete(at: _Place, table, out: dict, errors: list[str]) -> None:
    if table is None:
        return
    if not isinstance(table, dict):
        errors.append(f"{at('delete')}: must be a table ([delete])")
        return
    for section, names in table.items():
        where = at(f"delete.{section}")
        if section not in DELETABLE:
            errors.append(f"{where}: unknown key (expected one of {', '.join(DELETABLE)})")
            continue
        try:
            out["delete"][section] = validate.list_of(_DELETE_KEY[section])(names)
        except validate.Invalid as exc:
            errors.append(f"{where}{exc}" if str(exc).startswith("[") else f"{where}: {exc}")


def _unique(at: _Place, out: dict, errors: list[str]) -> None:
    checks = [("tenants", "name"), ("tenants", "accountcode"), ("tenants", "domain"),
              ("carriers", "name"), ("dids", "number"), ("campaigns", "name")]
    for section, key in checks:
        seen: dict[Any, int] = {}
        for i, item in enumerate(out.get(section, [])):
            value = item.get(key)
            if value is None:
                continue
            if value in seen:
                errors.append(f"{at(f'{section}[{i}].{key}')}: {value!r} already used by "
                              f"{section}[{seen[value]}]")
            seen.setdefault(value, i)
    seen_gw: dict[str, str] = {}
    for i, carrier in enumerate(out.get("carriers", [])):
        for j, gw in enumerate(carrier.get("gateways", [])):
            name, here = gw.get("name"), f"carriers[{i}].gateways[{j}]"
            if name in seen_gw:
                errors.append(f"{at(here + '.name')}: {name!r} already used by {seen_gw[name]}")
            elif name is not None:
                seen_gw[name] = here
    listed = {"tenants": {t.get("name") for t in out.get("tenants", [])},
              "carriers": {c.get("name") for c in out.get("carriers", [])},
              "gateways": set(seen_gw),
              "dids": {d.get("number") for d in out.get("dids", [])},
              "campaigns": {c.get("name") for c in out.get("campaigns", [])}}
    for section, names in out["delete"].items():
        for name in names:
            if name in listed[section]:
                errors.append(f"{at(f'delete.{section}')}: {name!r} is also listed in the "
                              f"file; keep it or delete it, not both")


# --- entry point ------------------------------------------------------------------------
def provision(conn_or_url: psycopg.Connection | str, path: str | Path, *,
              dry_run: bool = False, prune: bool = False) -> ProvisionSummary:
    """Validate ``path``, diff it against the database, and (unless ``dry_run``) apply the
    diff in one transaction. Raises ProvisionError (nothing written)."""
    data = parse(path)
    try:
        if isinstance(conn_or_url, str):
            with psycopg.connect(conn_or_url) as conn:
                return _provision(conn, str(path), data, dry_run, prune)
        return _provision(conn_or_url, str(path), data, dry_run, prune)
    except psycopg.errors.IntegrityError as exc:
        # Validation should leave nothing for the database to refuse (e.g. two tenants
        # swapping accountcodes in one file); if it still does, one line, and nothing
        # was written (the transaction rolled back).
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ProvisionError([f"{path}: database refused the change: {reason}"]) from None


def provision_data(conn: psycopg.Connection, label: str, data: dict) -> ProvisionSummary:
    """Apply an already parsed document (parse_doc) in one transaction; what provision()
    does after reading its file. Raises ProvisionError (nothing written)."""
    try:
        return _provision(conn, label, data, False, False)
    except psycopg.errors.IntegrityError as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ProvisionError([f"{label}: database refused the change: {reason}"]) from None


def _provision(conn: psycopg.Connection, label: str, data: dict, dry_run: bool,
               prune: bool) -> ProvisionSummary:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        stored = provision_diff.read_stored(conn)
        changes, unchanged, errors = provision_diff.diff(label, stored, data, prune)
        if errors:
            raise ProvisionError(errors)
        summary = ProvisionSummary(label, tuple(changes), unchanged, dry_run)
        if dry_run or not summary.changed:
            return summary
        provision_diff.apply(conn, changes)
        # Queued now, delivered by PostgreSQL only when this transaction commits.
        conn.execute("SELECT pg_notify('switchd_world', %s)", (label,))
    return summary
