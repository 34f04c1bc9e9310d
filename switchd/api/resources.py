"""Tenants, carriers, gateways and DIDs over REST, through provision's own rules: a JSON
body is checked by provision.parse_doc (dialplan/validate.py), diffed and written by
provision_diff, deletions keep their reference checks, and running daemons reload on the
same NOTIFY. So the API accepts and refuses exactly what `switchd provision` does.

Rate decks: upload (CSV body, rates_import), list, export (inventory).
"""
from __future__ import annotations

import io
import re
import tempfile
from datetime import datetime
from pathlib import Path

from dialplan import validate
from switchd.admin import inventory, provision, provision_diff, rates_import
from switchd.api.app import ApiError, Request

# "body: carriers[0].gateways[1].leg_timeout: reason" -> ("leg_timeout", "reason")
_FIELD = re.compile(r"^body: (?:delete\.)?[a-z]+(?:\[\d+\])?(?:\.gateways(?:\[\d+\])?)?"
                    r"(?:\.(\w+))?: (.*)$")


def _refusal(exc: provision.ProvisionError, status: int = 400) -> ApiError:
    errors = []
    for line in exc.errors:
        m = _FIELD.match(line)
        errors.append({"field": m.group(1), "error": m.group(2)} if m and m.group(1)
                      else {"error": line.removeprefix("body: ")})
    first = errors[0]
    if first["error"].startswith("cannot delete"):
        status = 409
    return ApiError(status, first["error"], first.get("field"), extra={"errors": errors})


def _apply(req: Request, doc: dict) -> None:
    try:
        data = provision.parse_doc("body", doc)
        provision.provision_data(req.conn, "body", data)
    except provision.ProvisionError as exc:
        raise _refusal(exc) from None


def _stored(req: Request, section: str) -> dict:
    return provision_diff.read_stored(req.conn)[section]


def _clean(row: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in row.items()
            if k not in ("decks", "gateway_count")}


class Section:
    """CRUD of one provision section; `owned`: rows carry a tenant a tenant key must own."""

    def __init__(self, section: str, owned: bool = False):
        self.section = section
        self.key = provision_diff.KEY[section]
        self.owned = owned
        self.param = "number" if section == "dids" else "name"     # the path parameter

    def _visible(self, req: Request, row: dict) -> bool:
        if req.tenant is None:
            return True
        if self.section == "tenants":
            return row["name"] == req.tenant
        return self.owned and row.get("tenant") == req.tenant

    def _one(self, req: Request) -> dict:
        name = req.params[self.param]
        row = _stored(req, self.section).get(name)
        if row is None or not self._visible(req, row):
            raise ApiError(404, f"no {provision_diff.NOUN[self.section]} {name!r}", self.key)
        return row

    def list(self, req: Request):
        rows = [_clean(r) for _, r in sorted(_stored(req, self.section).items())
                if self._visible(req, r)]
        tenant = req.query.get("tenant")
        if tenant and self.owned:
            rows = [r for r in rows if r.get("tenant") == tenant]
        return {self.section: rows}

    def get(self, req: Request):
        return _clean(self._one(req))

    def create(self, req: Request):
        body = dict(req.json())
        key = body.get(self.key)
        if key is None:
            raise ApiError(400, "required", self.key)
        if key in _stored(req, self.section):
            raise ApiError(409, f"{provision_diff.NOUN[self.section]} {key!r} already exists "
                                "(PATCH it instead)", self.key)
        _apply(req, self._doc(req, body, None))
        return 201, _clean(_stored(req, self.section)[key])

    def update(self, req: Request):
        row = self._one(req)
        body = dict(req.json())
        name = req.params[self.param]
        if body.get(self.key, name) != name:
            raise ApiError(400, "cannot be changed (create a new one and delete this)", self.key)
        if req.tenant is not None and "tenant" in body and body["tenant"] != req.tenant:
            raise ApiError(403, "a tenant key cannot move objects to another tenant", "tenant")
        body[self.key] = name
        for key, spec in validate.SPECS[self.section].items():
            if spec.required and key not in body and row.get(key) is not None:
                body[key] = row[key]    # a provision document always names these
        _apply(req, self._doc(req, body, row))
        return _clean(_stored(req, self.section)[name])

    def delete(self, req: Request):
        self._one(req)
        _apply(req, {"delete": {self.section: [req.params[self.param]]}})
        return 204, None

    def _doc(self, req: Request, body: dict, row: dict | None) -> dict:
        if self.section != "gateways":
            return {self.section: [body]}
        # A gateway lives under its carrier in a provision document.
        carrier = body.pop("carrier", None) if row is None else row["carrier"]
        if row is not None and "carrier" in body:
            if body.pop("carrier") != row["carrier"]:
                raise ApiError(400, "cannot be changed (delete and create)", "carrier")
        if carrier is None:
            raise ApiError(400, "required", "carrier")
        if not isinstance(carrier, str) or carrier not in _stored(req, "carriers"):
            raise ApiError(400, f"no carrier named {carrier!r}", "carrier")
        if row is not None:
            body.setdefault("position", row["position"])    # parse_doc defaults it to 0
        else:
            body.setdefault("position", sum(1 for g in _stored(req, "gateways").values()
                                            if g["carrier"] == carrier))
        return {"carriers": [{"name": carrier, "gateways": [body]}]}


# --- rate decks -------------------------------------------------------------------------
def _when(req: Request, name: str) -> datetime | None:
    text = req.query.get(name)
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(400, f"{text!r} is not an ISO 8601 date/time", name) from None


def _carrier(req: Request) -> str:
    name = req.params["name"]
    if name not in _stored(req, "carriers"):
        raise ApiError(404, f"no carrier {name!r}", "name")
    return name


def upload_deck(req: Request):
    carrier = _carrier(req)
    if not req.raw:
        raise ApiError(400, "a CSV body is required (docs/rates.md has the columns)", "body")
    with tempfile.TemporaryDirectory(prefix="switchd-deck-") as tmp:
        path = Path(tmp) / "upload.csv"
        path.write_bytes(req.raw)
        try:
            summary = rates_import.import_rates(req.conn, path, carrier,
                                                effective_from=_when(req, "effective_from"))
        except rates_import.RatesImportError as exc:
            raise ApiError(400, str(exc).replace(str(path), "body"), "body") from None
    return 201, {"carrier": carrier, "rows": summary.rows, "deck_id": summary.deck_id}


def list_decks(req: Request):
    carrier = _carrier(req)
    return {"carrier": carrier, "decks": inventory.decks(req.conn, carrier)}


def export_deck(req: Request):
    carrier = _carrier(req)
    out = io.StringIO()
    deck = req.int_query("deck_id", 0, 0, 2**31 - 1) or None
    try:
        inventory.export_deck(req.conn, carrier, out, at=_when(req, "at"), deck_id=deck)
    except inventory.InventoryError as exc:
        raise ApiError(404, str(exc), "deck_id" if deck else "at") from None
    return 200, out.getvalue(), [("Content-Type", "text/csv")]


def delete_deck(req: Request):
    carrier = _carrier(req)
    try:
        deck_id = int(req.params["deck_id"])
    except ValueError:
        raise ApiError(400, f"{req.params['deck_id']!r} is not a deck id", "deck_id") from None
    try:
        return inventory.delete_deck(req.conn, carrier, deck_id)
    except inventory.InventoryError as exc:
        raise ApiError(404, str(exc), "deck_id") from None
