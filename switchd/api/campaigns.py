"""/v1/campaigns and /v1/dnc (docs/api.md, docs/campaigns.md). Handlers write PostgreSQL
only; every daemon's dialer reads campaign state from there, so a pause answered here
holds for every daemon's next claim."""
from __future__ import annotations

from dialplan import numbers, validate
from dialplan.campaigns import OUTCOMES
from switchd.api.app import ApiError, Request, route
from switchd.campaigns import spec, store

_CREATE_KEYS = {"name", "tenant", "contacts", "start", *spec.SETTINGS}


def _errors(func):
    def handler(req: Request):
        try:
            return func(req)
        except spec.SpecError as exc:
            raise ApiError(400, exc.message, exc.field) from None
        except store.NotFound as exc:
            field, _, msg = str(exc).partition(": ")
            raise ApiError(404, msg, field) from None
        except store.Conflict as exc:
            field, _, msg = str(exc).partition(": ")
            raise ApiError(409, msg, field) from None
    return handler


def _campaign(req: Request) -> dict:
    return store.get(req.conn, req.params["name"], req.tenant)


def _view(req: Request, row: dict) -> dict:
    return {**store.public(row), "progress": store.progress(req.conn, row["id"])}


def _region(req: Request, tenant: str) -> str:
    row = req.conn.execute("SELECT default_region FROM tenants WHERE name = %s",
                           (tenant,)).fetchone()
    if row is None:
        raise ApiError(404, f"no tenant named {tenant!r}", "tenant")
    return row[0] or "US"


def _contacts(req: Request, row: dict, items=None) -> list:
    region = row["default_region"] or "US"
    if items is not None:
        return spec.contacts_json(items, region, row["default_timezone"])
    if req.headers.get("content-type", "").split(";")[0].strip() == "text/csv":
        try:
            text = req.raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "the CSV is not UTF-8", "body") from None
        return spec.contacts_csv(text, region, row["default_timezone"])
    body = req.json()
    unknown = set(body) - {"contacts"}
    if unknown:
        raise ApiError(400, "unknown key (expected contacts)", sorted(unknown)[0])
    return spec.contacts_json(body.get("contacts"), region, row["default_timezone"])


@_errors
def list_campaigns(req: Request):
    rows = store.list_campaigns(req.conn, req.scope(req.query.get("tenant")))
    return {"campaigns": [_view(req, r) for r in rows]}


def create_campaign(horizon_s: float):
    @_errors
    def handler(req: Request):
        body = req.json()
        unknown = set(body) - _CREATE_KEYS
        if unknown:
            raise ApiError(400, "unknown key", sorted(unknown)[0])
        tenant = req.scope(body.get("tenant"))
        if tenant is None:
            raise ApiError(400, "required (the tenant the campaign belongs to)", "tenant")
        name = body.get("name")
        try:
            validate.name(name)
        except validate.Invalid as exc:
            raise ApiError(400, str(exc), "name") from None
        if not isinstance(body.get("start", False), bool):
            raise ApiError(400, "true or false", "start")
        settings = spec.settings(body)
        region = _region(req, tenant)
        contacts = (spec.contacts_json(body["contacts"], region, settings["default_timezone"])
                    if "contacts" in body else [])
        with req.conn.transaction():
            row = store.create(req.conn, tenant, name, settings)
            added = store.add_contacts(req.conn, row["id"], contacts) if contacts else None
            if body.get("start"):
                row = store.act(req.conn, name, None, "start", None, horizon_s)
        return 201, {**_view(req, row), **({"import": added} if added else {})}
    return handler


@_errors
def get_campaign(req: Request):
    return _view(req, _campaign(req))


@_errors
def update_campaign(req: Request):
    row = _campaign(req)               # another tenant's: 404 before anything else
    body = req.json()
    unknown = set(body) - set(spec.SETTINGS)
    if unknown:
        raise ApiError(400, "unknown key (name and tenant cannot change)", sorted(unknown)[0])
    if ("calling_hours" in body) != ("calling_days" in body):
        # hours and days are one rule: the one left out keeps its stored value
        stored = store.public(row)
        body = {"calling_hours": stored["calling_hours"], "calling_days": stored["calling_days"],
                **body}
    return _view(req, store.update(req.conn, req.params["name"], req.tenant,
                                   spec.settings(body, partial=True)))


@_errors
def add_contacts(req: Request):
    row = _campaign(req)
    if row["state"] in ("stopped", "completed"):
        raise ApiError(409, f"the campaign is {row['state']}", "state")
    added = store.add_contacts(req.conn, row["id"], _contacts(req, row))
    return 201, added


@_errors
def list_contacts(req: Request):
    row = _campaign(req)
    state, outcome = req.query.get("state"), req.query.get("outcome")
    if state is not None and state not in ("pending", "dialing", "live", "done"):
        raise ApiError(400, "one of pending, dialing, live, done", "state")
    if outcome is not None and outcome not in OUTCOMES:
        raise ApiError(400, f"one of {', '.join(OUTCOMES)}", "outcome")
    limit = req.int_query("limit", 100, 1, 1000)
    after = req.int_query("cursor", 0, 0, 2**62)
    rows = store.list_contacts(req.conn, row["id"], state, outcome, after, limit)
    out = {"contacts": rows}
    if len(rows) == limit:
        out["next_cursor"] = str(rows[-1]["id"])
    return out


def action(name: str, horizon_s: float):
    @_errors
    def handler(req: Request):
        reason = None
        if req.raw:
            body = req.json()
            reason = body.get("reason")
            if reason is not None and (not isinstance(reason, str) or len(reason) > 200):
                raise ApiError(400, "a string of at most 200 characters", "reason")
        row = store.act(req.conn, req.params["name"], req.tenant, name,
                        reason or (f"{name} by the API" if name in ("pause", "stop") else None),
                        horizon_s)
        return _view(req, row)
    return handler


# --- do not call -------------------------------------------------------------------------------
@_errors
def list_dnc(req: Request):
    return {"numbers": store.dnc_list(req.conn, req.scope(req.query.get("tenant")))}


@_errors
def add_dnc(req: Request):
    body = req.json()
    unknown = set(body) - {"tenant", "numbers", "note"}
    if unknown:
        raise ApiError(400, "unknown key (expected tenant, numbers, note)", sorted(unknown)[0])
    tenant = req.scope(body.get("tenant"))
    if tenant is None:
        raise ApiError(400, "required (whose list)", "tenant")
    items = body.get("numbers")
    if not isinstance(items, list) or not items or not all(isinstance(n, str) for n in items):
        raise ApiError(400, "a non-empty list of numbers (strings)", "numbers")
    note = body.get("note", "")
    if not isinstance(note, str) or len(note) > 200:
        raise ApiError(400, "a string of at most 200 characters", "note")
    region = _region(req, tenant)
    e164 = []
    for i, raw in enumerate(items):
        try:
            e164.append(numbers.normalise(raw, region).e164)
        except numbers.NumberError as exc:
            raise ApiError(400, f"{raw!r}: {exc}", f"numbers[{i}]") from None
    added = store.dnc_add(req.conn, tenant, e164, note)
    return 201, {"tenant": tenant, "added": added, "numbers": e164}


@_errors
def delete_dnc(req: Request):
    tenant = req.scope(req.query.get("tenant"))
    if tenant is None:
        raise ApiError(400, "required (whose list)", "tenant")
    raw = req.params["number"]
    try:
        number = numbers.normalise(raw, _region(req, tenant)).e164
    except numbers.NumberError as exc:
        raise ApiError(400, f"{raw!r}: {exc}", "number") from None
    if not store.dnc_remove(req.conn, tenant, number):
        raise ApiError(404, f"{number} is not on the list", "number")
    return 204, None


def routes(horizon_s: float) -> list:
    out = [
        route("GET", "/v1/campaigns", list_campaigns, "tenant"),
        route("POST", "/v1/campaigns", create_campaign(horizon_s), "tenant"),
        route("GET", "/v1/campaigns/{name}", get_campaign, "tenant"),
        route("PATCH", "/v1/campaigns/{name}", update_campaign, "tenant"),
        route("GET", "/v1/campaigns/{name}/contacts", list_contacts, "tenant"),
        route("POST", "/v1/campaigns/{name}/contacts", add_contacts, "tenant"),
    ]
    out += [route("POST", f"/v1/campaigns/{{name}}/{name}", action(name, horizon_s), "tenant")
            for name in ("start", "pause", "resume", "stop")]
    out += [route("GET", "/v1/dnc", list_dnc, "tenant"),
            route("POST", "/v1/dnc", add_dnc, "tenant"),
            route("DELETE", "/v1/dnc/{number}", delete_dnc, "tenant")]
    return out
