"""The /v1 route table and the handlers for keys and webhooks; build_app() wires it all."""
from __future__ import annotations

from decimal import Decimal, InvalidOperation

from switchd.api import calls, campaigns, keys, openapi, resources, webhooks
from switchd.api.app import ApiApp, ApiError, Request, route
from switchd.api.calls import Live


# --- keys ---------------------------------------------------------------------------------------
def list_keys(req: Request):
    return {"keys": keys.list_keys(req.conn, req.scope(req.query.get("tenant")))}


def create_key(req: Request):
    body = req.json()
    admin = body.get("admin", False)
    if not isinstance(admin, bool):
        raise ApiError(400, "true or false", "admin")
    if admin and not req.admin:
        raise ApiError(403, "only an admin key creates admin keys", "admin")
    tenant = None if admin else req.scope(body.get("tenant"))
    if tenant is None and not admin:
        raise ApiError(400, "required (the tenant the key belongs to)", "tenant")
    rate, burst = body.get("rate_per_s"), body.get("burst")
    if rate is not None:
        try:
            rate = Decimal(str(rate))
            if not Decimal("0.001") <= rate <= Decimal(10000):
                raise InvalidOperation
        except (InvalidOperation, ValueError):
            raise ApiError(400, "a number from 0.001 to 10000", "rate_per_s") from None
    if burst is not None and (not isinstance(burst, int) or isinstance(burst, bool)
                              or not 1 <= burst <= 100000):
        raise ApiError(400, "an integer from 1 to 100000", "burst")
    label = body.get("label", "")
    if not isinstance(label, str) or len(label) > 200:
        raise ApiError(400, "a string of at most 200 characters", "label")
    try:
        token, row = keys.create(req.conn, tenant=tenant, admin=admin, label=label,
                                 rate_per_s=rate, burst=burst)
    except keys.KeyError_ as exc:
        field, _, msg = str(exc).partition(": ")
        raise ApiError(404 if field == "tenant" else 400, msg or str(exc), field) from None
    return 201, {**row, "key": token}


def revoke_key(req: Request):
    try:
        return keys.revoke(req.conn, req.params["prefix"], req.tenant)
    except keys.KeyError_ as exc:
        raise ApiError(404, str(exc).partition(": ")[2], "prefix") from None


# --- webhooks -----------------------------------------------------------------------------------
def _tenant_param(req: Request) -> str:
    name = req.scope(req.params["name"])
    if req.conn.execute("SELECT 1 FROM tenants WHERE name = %s", (name,)).fetchone() is None:
        raise ApiError(404, f"no tenant named {name!r}", "name")
    return name


def get_webhook(req: Request):
    found = webhooks.get_webhook(req.conn, _tenant_param(req))
    if found is None:
        raise ApiError(404, "this tenant has no webhook", "name")
    return found


def put_webhook(req: Request):
    tenant = _tenant_param(req)
    body = req.json()
    unknown = set(body) - {"url", "secret", "enabled"}
    if unknown:
        raise ApiError(400, "unknown key (expected url, secret, enabled)", sorted(unknown)[0])
    if not isinstance(body.get("enabled", True), bool):
        raise ApiError(400, "true or false", "enabled")
    try:
        return webhooks.set_webhook(req.conn, tenant, body.get("url"), body.get("secret"),
                                    body.get("enabled", True))
    except ValueError as exc:
        field, _, msg = str(exc).partition(": ")
        raise ApiError(400, msg, field) from None


def delete_webhook(req: Request):
    if not webhooks.delete_webhook(req.conn, _tenant_param(req)):
        raise ApiError(404, "this tenant has no webhook", "name")
    return 204, None


def call_events(req: Request):
    return {"events": webhooks.call_events(req.conn, calls._uuid(req), req.tenant)}


def replay(horizon_s: float):
    def handler(req: Request):
        count = webhooks.replay(req.conn, calls._uuid(req), req.tenant, horizon_s)
        if not count:
            raise ApiError(404, "no events recorded for this call (no webhook then?)",
                           "call_uuid")
        return 202, {"queued": count}
    return handler


def build_routes(live: Live, horizon_s: float = 86400.0) -> list:
    tenants = resources.Section("tenants")
    carriers = resources.Section("carriers")
    gateways = resources.Section("gateways")
    dids = resources.Section("dids", owned=True)
    return [
        route("GET", "/v1/openapi.json", lambda req: openapi.document(), "public"),
        route("GET", "/v1/keys", list_keys, "tenant"),
        route("POST", "/v1/keys", create_key, "tenant"),
        route("DELETE", "/v1/keys/{prefix}", revoke_key, "tenant"),
        route("GET", "/v1/calls", calls.list_calls(live), "tenant"),
        route("POST", "/v1/calls", calls.create_call(live), "tenant"),
        route("GET", "/v1/calls/{call_uuid}", calls.get_call(live), "tenant"),
        route("POST", "/v1/calls/{call_uuid}/hangup", calls.hangup_call(live), "tenant"),
        route("GET", "/v1/calls/{call_uuid}/events", call_events, "tenant"),
        route("POST", "/v1/calls/{call_uuid}/events/replay", replay(horizon_s), "tenant"),
        route("GET", "/v1/stats", calls.stats, "tenant"),
        route("POST", "/v1/routing/test", calls.routing_test(live), "tenant"),
        route("GET", "/v1/rates/{number}", calls.rates_for(live), "tenant"),
        route("GET", "/v1/tenants", tenants.list, "tenant"),
        route("POST", "/v1/tenants", tenants.create, "admin"),
        route("GET", "/v1/tenants/{name}", tenants.get, "tenant"),
        route("PATCH", "/v1/tenants/{name}", tenants.update, "admin"),
        route("DELETE", "/v1/tenants/{name}", tenants.delete, "admin"),
        route("GET", "/v1/tenants/{name}/webhook", get_webhook, "tenant"),
        route("PUT", "/v1/tenants/{name}/webhook", put_webhook, "tenant"),
        route("DELETE", "/v1/tenants/{name}/webhook", delete_webhook, "tenant"),
        route("GET", "/v1/carriers", carriers.list, "admin"),
        route("POST", "/v1/carriers", carriers.create, "admin"),
        route("GET", "/v1/carriers/{name}", carriers.get, "admin"),
        route("PATCH", "/v1/carriers/{name}", carriers.update, "admin"),
        route("DELETE", "/v1/carriers/{name}", carriers.delete, "admin"),
        route("GET", "/v1/carriers/{name}/health", calls.carrier_health(live), "admin"),
        route("POST", "/v1/carriers/{name}/health/reset", calls.reset_health(live), "admin"),
        route("GET", "/v1/carriers/{name}/rates", resources.list_decks, "admin"),
        route("POST", "/v1/carriers/{name}/rates", resources.upload_deck, "admin"),
        route("GET", "/v1/carriers/{name}/rates/export", resources.export_deck, "admin"),
        route("DELETE", "/v1/carriers/{name}/rates/{deck_id}", resources.delete_deck, "admin"),
        route("GET", "/v1/gateways", gateways.list, "admin"),
        route("POST", "/v1/gateways", gateways.create, "admin"),
        route("GET", "/v1/gateways/{name}", gateways.get, "admin"),
        route("PATCH", "/v1/gateways/{name}", gateways.update, "admin"),
        route("DELETE", "/v1/gateways/{name}", gateways.delete, "admin"),
        route("GET", "/v1/dids", dids.list, "tenant"),
        route("POST", "/v1/dids", dids.create, "admin"),
        route("GET", "/v1/dids/{number}", dids.get, "tenant"),
        route("PATCH", "/v1/dids/{number}", dids.update, "tenant"),
        route("DELETE", "/v1/dids/{number}", dids.delete, "admin"),
        *campaigns.routes(horizon_s),
    ]


def build_app(db_url: str, live: Live | None = None, admin_token: str | None = None,
              horizon_s: float = 86400.0, buckets=None) -> ApiApp:
    return ApiApp(db_url, build_routes(live or Live(), horizon_s), admin_token, buckets=buckets)
