"""The /v1 REST API in-process against real PostgreSQL: keys and tenancy (every endpoint
across two tenants), validation that names the field and changes nothing, rate limits,
CRUD through provision's rules, rate decks, webhooks management, stats, the OpenAPI
document. What needs the running daemon (originate, live calls, routing) is in
test_e2e_api.py."""
from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from api_helpers import call
from switchd.api import keys, openapi
from switchd.api.limits import TokenBuckets
from switchd.api.routes import build_app

ADMIN = "admin-token-for-tests-0123456789"


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def world(world_url):
    """The demo world (tenant acme) plus a second tenant, beta, with its own DID; a key
    for each tenant."""
    clock = Clock()
    app = build_app(world_url, admin_token=ADMIN, buckets=TokenBuckets(clock))
    status, _, body = call(app, "POST", "/v1/tenants", ADMIN,
                           {"name": "beta", "accountcode": "beta", "default_region": "US"})
    assert status == 201, body
    status, _, body = call(app, "POST", "/v1/dids", ADMIN,
                           {"number": "+12025550100", "tenant": "beta",
                            "destination_type": "extension", "destination": "200"})
    assert status == 201, body
    with psycopg.connect(world_url, autocommit=True) as conn:
        acme, _ = keys.create(conn, tenant="acme")
        beta, _ = keys.create(conn, tenant="beta")
    return {"app": app, "url": world_url, "acme": acme, "beta": beta, "clock": clock}


def snapshot(url):
    with psycopg.connect(url) as conn:
        return [conn.execute(f"SELECT x::text FROM {t} x ORDER BY 1").fetchall()
                for t in ("tenants", "carriers", "gateways", "dids", "rate_decks", "webhooks",
                          "api_keys")]


# --- keys --------------------------------------------------------------------------------------
def test_keys_are_stored_hashed_and_shown_once(world):
    app, acme = world["app"], world["acme"]
    with psycopg.connect(world["url"]) as conn:
        stored = conn.execute("SELECT prefix, secret_hash FROM api_keys").fetchall()
    assert all(acme not in (p, h) for p, h in stored)
    assert (acme[:11], hashlib.sha256(acme.encode()).hexdigest()) in stored
    status, _, body = call(app, "GET", "/v1/keys", acme)
    assert status == 200 and {k["tenant"] for k in body["keys"]} == {"acme"}
    assert all("key" not in k and "secret_hash" not in k for k in body["keys"])


def test_tenant_key_creates_and_revokes_only_its_own(world):
    app, acme, beta = world["app"], world["acme"], world["beta"]
    status, _, body = call(app, "POST", "/v1/keys", acme, {"label": "ci"})
    assert status == 201 and body["tenant"] == "acme" and body["key"].startswith("sk_")
    new = body["key"]
    assert call(app, "GET", "/v1/tenants/acme", new)[0] == 200
    # a tenant key cannot mint a key for another tenant, nor an admin key
    assert call(app, "POST", "/v1/keys", acme, {"tenant": "beta"})[0] == 404
    status, _, body = call(app, "POST", "/v1/keys", acme, {"admin": True})
    assert status == 403 and body["field"] == "admin"
    # beta cannot revoke acme's key; acme can
    prefix = new[:11]
    status, _, body = call(app, "DELETE", f"/v1/keys/{prefix}", beta)
    assert status == 404 and body["field"] == "prefix"
    assert call(app, "DELETE", f"/v1/keys/{prefix}", acme)[0] == 200
    status, headers, body = call(app, "GET", "/v1/tenants/acme", new)
    assert status == 401 and body["field"] == "Authorization"


def test_admin_manages_keys_of_every_tenant(world):
    app = world["app"]
    status, _, body = call(app, "POST", "/v1/keys", ADMIN, {"tenant": "beta"})
    assert status == 201 and body["tenant"] == "beta"
    status, _, body = call(app, "POST", "/v1/keys", ADMIN, {"admin": True, "label": "ops"})
    assert status == 201 and body["is_admin"]
    assert call(app, "GET", "/v1/carriers", body["key"])[0] == 200
    status, _, body = call(app, "GET", "/v1/keys", ADMIN)
    assert {k["tenant"] for k in body["keys"]} == {"acme", "beta", None}
    status, _, body = call(app, "POST", "/v1/keys", ADMIN, {"tenant": "nope"})
    assert status == 404 and body["field"] == "tenant"


@pytest.mark.parametrize("header", [None, "Bearer nonsense", "Bearer sk_deadbeef_xxxx", "Basic x"])
def test_missing_or_wrong_key_is_401(world, header):
    environ_headers = {"Authorization": header} if header else {}
    status, headers, body = call(world["app"], "GET", "/v1/tenants", headers=environ_headers)
    assert status == 401 and body["field"] == "Authorization"
    assert headers["WWW-Authenticate"] == "Bearer"


# --- tenancy: every endpoint across two tenants ---------------------------------------------------
ADMIN_ONLY = [
    ("POST", "/v1/tenants", {"name": "gamma"}),
    ("PATCH", "/v1/tenants/beta", {"max_concurrent": 1}),
    ("DELETE", "/v1/tenants/beta", None),
    ("GET", "/v1/carriers", None), ("POST", "/v1/carriers", {"name": "x"}),
    ("GET", "/v1/carriers/primo", None), ("PATCH", "/v1/carriers/primo", {"priority": 1}),
    ("DELETE", "/v1/carriers/primo", None),
    ("GET", "/v1/carriers/primo/health", None), ("POST", "/v1/carriers/primo/health/reset", None),
    ("GET", "/v1/carriers/primo/rates", None), ("POST", "/v1/carriers/primo/rates", None),
    ("GET", "/v1/carriers/primo/rates/export", None),
    ("DELETE", "/v1/carriers/primo/rates/1", None),
    ("GET", "/v1/gateways", None), ("POST", "/v1/gateways", {"name": "g"}),
    ("GET", "/v1/gateways/primo_gw1", None), ("PATCH", "/v1/gateways/primo_gw1", {"enabled": False}),
    ("DELETE", "/v1/gateways/primo_gw1", None),
    ("POST", "/v1/dids", {"number": "+12025550199"}), ("DELETE", "/v1/dids/+12025550100", None),
]


@pytest.mark.parametrize("method,path,body", ADMIN_ONLY)
def test_operator_endpoints_refuse_tenant_keys(world, method, path, body):
    before = snapshot(world["url"])
    status, _, answer = call(world["app"], method, path, world["acme"], body)
    assert status == 403, answer
    assert answer["error"] == "this endpoint needs an admin key"
    assert snapshot(world["url"]) == before


# (method, path of beta's object, body): acme's key must get 404 as if it did not exist,
# beta's own key gets it.
BETA_OBJECTS = [
    ("GET", "/v1/tenants/beta", None),
    ("GET", "/v1/dids/+12025550100", None),
    ("PATCH", "/v1/dids/+12025550100", {"destination": "201"}),
    ("GET", "/v1/tenants/beta/webhook", None),
    ("PUT", "/v1/tenants/beta/webhook", {"url": "http://127.0.0.1:9/x"}),
    ("DELETE", "/v1/tenants/beta/webhook", None),
]


@pytest.mark.parametrize("method,path,body", BETA_OBJECTS)
def test_a_tenant_key_never_reaches_another_tenants_objects(world, method, path, body):
    app = world["app"]
    call(app, "PUT", "/v1/tenants/beta/webhook", ADMIN, {"url": "http://127.0.0.1:9/hook"})
    before = snapshot(world["url"])
    status, _, answer = call(app, method, path, world["acme"], body)
    assert status == 404, answer
    assert snapshot(world["url"]) == before
    status, _, answer = call(app, method, path, world["beta"], body)
    assert status in (200, 204), answer


def test_lists_show_only_the_keys_tenant(world):
    app, acme, beta = world["app"], world["acme"], world["beta"]
    assert [t["name"] for t in call(app, "GET", "/v1/tenants", acme)[2]["tenants"]] == ["acme"]
    assert [t["name"] for t in call(app, "GET", "/v1/tenants", beta)[2]["tenants"]] == ["beta"]
    assert {t["name"] for t in call(app, "GET", "/v1/tenants", ADMIN)[2]["tenants"]} == {"acme", "beta"}
    assert {d["tenant"] for d in call(app, "GET", "/v1/dids", acme)[2]["dids"]} == {"acme"}
    assert [d["number"] for d in call(app, "GET", "/v1/dids", beta)[2]["dids"]] == ["+12025550100"]
    assert [d["number"] for d in call(app, "GET", "/v1/dids?tenant=beta", ADMIN)[2]["dids"]] == ["+12025550100"]
    assert call(app, "GET", "/v1/dids?tenant=acme", beta)[0] == 200
    assert call(app, "GET", "/v1/dids?tenant=acme", beta)[2]["dids"] == []


def test_calls_stats_and_events_are_scoped(world):
    app, acme, beta = world["app"], world["acme"], world["beta"]
    with psycopg.connect(world["url"]) as conn:
        for i, tenant in enumerate(("acme", "acme", "beta")):
            conn.execute("""INSERT INTO calls (call_uuid, tenant, direction, destination,
                                started_at, answered_at, ended_at, carrier, billed_seconds, cost)
                            VALUES (%s, %s, 'outbound', '+441', %s, %s, %s, 'primo', 60, 0.15)""",
                         (f"0000000{i}-0000-4000-8000-000000000000", tenant,
                          datetime(2026, 11, 1, 10, i, tzinfo=timezone.utc),
                          datetime(2026, 11, 1, 10, i, 5, tzinfo=timezone.utc) if i != 1 else None,
                          datetime(2026, 11, 1, 10, i, 30, tzinfo=timezone.utc)))
    beta_call = "00000002-0000-4000-8000-000000000000"
    status, _, body = call(app, "GET", "/v1/calls?source=records", acme)
    assert status == 200 and {c["tenant"] for c in body["calls"]} == {"acme"} and len(body["calls"]) == 2
    assert call(app, "GET", f"/v1/calls/{beta_call}", acme)[0] == 404
    assert call(app, "GET", f"/v1/calls/{beta_call}", beta)[2]["cost"] == "0.150000"
    assert call(app, "GET", f"/v1/calls/{beta_call}/events", acme)[2]["events"] == []
    assert call(app, "POST", f"/v1/calls/{beta_call}/events/replay", acme)[0] == 404
    status, _, body = call(app, "GET", "/v1/stats?group_by=tenant", acme)
    assert [(r["tenant"], r["calls"], r["answered"], r["asr"]) for r in body["stats"]] == \
        [("acme", 2, 1, "0.5000")]
    status, _, body = call(app, "GET", "/v1/stats?group_by=tenant,carrier,day", ADMIN)
    assert {(r["tenant"], r["carrier"], r["calls"]) for r in body["stats"]} == \
        {("acme", "primo", 2), ("beta", "primo", 1)}
    assert body["stats"][0]["acd_seconds"] == "60.0" and body["stats"][0]["cost"] == "0.300000"
    assert call(app, "GET", "/v1/stats?tenant=beta", acme)[0] == 404


def test_a_calls_legs_are_listed_in_the_order_they_were_tried(world):
    """FreeSWITCH stamps times from its timer thread's tick: on a loaded switch the caller's
    leg and a failover's legs can share a start time. The caller's leg comes first, then
    the attempts in the order they ended, whatever their UUIDs."""
    call_uuid = "0000000a-0000-4000-8000-000000000000"
    t = datetime(2026, 11, 1, 10, 0, tzinfo=timezone.utc)
    legs = [("0000000f-0000-4000-8000-000000000000", "inbound", None, 6),   # the caller
            ("0000000e-0000-4000-8000-000000000000", "outbound", "alpha", 0),   # its 503
            ("0000000d-0000-4000-8000-000000000000", "outbound", "bravo", 6)]   # answered
    with psycopg.connect(world["url"]) as conn:
        conn.execute("""INSERT INTO calls (call_uuid, tenant, direction, destination, started_at,
                            ended_at) VALUES (%s, 'acme', 'outbound', '+441', %s, %s)""",
                     (call_uuid, t, t + timedelta(seconds=6)))
        for leg_uuid, direction, carrier, seconds in reversed(legs):
            conn.execute("""INSERT INTO call_legs (leg_uuid, call_uuid, direction, carrier,
                                started_at, ended_at) VALUES (%s, %s, %s, %s, %s, %s)""",
                         (leg_uuid, call_uuid, direction, carrier, t,
                          t + timedelta(seconds=seconds, microseconds=0 if seconds else 1)))
    status, _, body = call(world["app"], "GET", f"/v1/calls/{call_uuid}", world["acme"])
    assert status == 200, body
    assert [leg["leg_uuid"] for leg in body["legs"]] == [leg[0] for leg in legs]


def test_call_records_page_with_a_cursor(world):
    app = world["app"]
    with psycopg.connect(world["url"]) as conn:
        for i in range(5):
            conn.execute("""INSERT INTO calls (call_uuid, tenant, direction, started_at)
                            VALUES (%s, 'acme', 'outbound', %s)""",
                         (f"1000000{i}-0000-4000-8000-000000000000",
                          datetime(2026, 11, 2, 10, i, tzinfo=timezone.utc)))
    seen, cursor = [], ""
    for _ in range(4):
        status, _, body = call(app, "GET", f"/v1/calls?source=records&limit=2{cursor}", world["acme"])
        assert status == 200
        seen += [c["call_uuid"] for c in body["calls"]]
        if not body["next_cursor"]:
            break
        from urllib.parse import quote
        cursor = "&cursor=" + quote(body["next_cursor"])
    assert seen == [f"1000000{i}-0000-4000-8000-000000000000" for i in reversed(range(5))]


# --- validation: the field is named, nothing changes ----------------------------------------------
BAD = [
    ("POST", "/v1/tenants", {"name": "gamma", "max_call_seconds": 0}, "max_call_seconds"),
    ("POST", "/v1/tenants", {"name": "gamma", "colour": "red"}, "colour"),
    ("POST", "/v1/tenants", {"name": "bad name!"}, "name"),
    ("POST", "/v1/tenants", {"accountcode": "x"}, "name"),
    ("POST", "/v1/tenants", {"name": "acme"}, "name"),
    ("PATCH", "/v1/tenants/beta", {"monthly_budget": "-1"}, "monthly_budget"),
    ("PATCH", "/v1/tenants/beta", {"monthly_budget": "1.1234567"}, "monthly_budget"),
    ("PATCH", "/v1/tenants/beta", {"accountcode": "acme"}, "accountcode"),
    ("PATCH", "/v1/tenants/beta", {"allowed_carriers": ["nope"]}, "allowed_carriers"),
    ("PATCH", "/v1/tenants/beta", {"name": "other"}, "name"),
    ("POST", "/v1/carriers", {"name": "newco", "gateways": [{"name": "g1", "leg_timeout": 0}]},
     "leg_timeout"),
    ("PATCH", "/v1/carriers/primo", {"enabled": "yes"}, "enabled"),
    ("POST", "/v1/gateways", {"name": "g9"}, "carrier"),
    ("POST", "/v1/gateways", {"name": "g9", "carrier": "nope"}, "carrier"),
    ("POST", "/v1/gateways", {"name": "g;9", "carrier": "primo"}, "name"),
    ("PATCH", "/v1/gateways/primo_gw1", {"carrier": "globex"}, "carrier"),
    ("POST", "/v1/dids", {"number": "442079460199", "tenant": "acme",
                          "destination_type": "extension", "destination": "1"}, "number"),
    ("POST", "/v1/dids", {"number": "+442079460199", "tenant": "zzz",
                          "destination_type": "extension", "destination": "1"}, "tenant"),
    ("POST", "/v1/dids", {"number": "+442079460199", "tenant": "acme",
                          "destination_type": "sip_uri", "destination": "not a uri"}, "destination"),
    ("DELETE", "/v1/tenants/beta", None, None),     # beta still owns a DID: 409
    ("POST", "/v1/tenants", None, "body"),
    ("GET", "/v1/calls?source=records&limit=0", None, "limit"),
    ("GET", "/v1/calls?source=everything", None, "source"),
    ("GET", "/v1/calls?source=records&from=yesterday", None, "from"),
    ("GET", "/v1/stats?group_by=colour", None, "group_by"),
    ("PUT", "/v1/tenants/beta/webhook", {"url": "ftp://x"}, "url"),
    ("PUT", "/v1/tenants/beta/webhook", {"url": "http://x.example", "secret": "short"}, "secret"),
    ("POST", "/v1/keys", {"tenant": "beta", "burst": 0}, "burst"),
    ("GET", "/v1/calls/not-a-uuid!", None, "call_uuid"),
]


@pytest.mark.parametrize("method,path,body,field", BAD)
def test_bad_requests_name_the_field_and_change_nothing(world, method, path, body, field):
    before = snapshot(world["url"])
    status, headers, answer = call(world["app"], method, path, ADMIN, body)
    assert 400 <= status < 500 and status not in (401, 403), answer
    assert headers["Content-Type"] == "application/json"
    assert answer["error"]
    assert answer.get("field") == field, answer
    assert snapshot(world["url"]) == before


def test_not_json_and_unknown_endpoints(world):
    app = world["app"]
    status, _, body = call(app, "POST", "/v1/tenants", ADMIN, raw=b"{nope")
    assert status == 400 and body["field"] == "body"
    status, _, body = call(app, "GET", "/v1/nothing", ADMIN)
    assert status == 404 and "no such endpoint" in body["error"]
    status, headers, body = call(app, "PUT", "/v1/carriers", ADMIN, {})
    assert status == 405 and headers["Allow"] == "GET, POST"


# --- CRUD with provision's semantics -------------------------------------------------------------
def test_carrier_gateway_did_tenant_lifecycle(world):
    app = world["app"]
    status, _, body = call(app, "POST", "/v1/carriers", ADMIN,
                           {"name": "newco", "priority": 5, "cps_limit": "2.5",
                            "gateways": [{"name": "newco_a", "leg_timeout": 15}]})
    assert status == 201 and body["priority"] == 5 and body["cps_limit"] == "2.500"
    status, _, body = call(app, "POST", "/v1/gateways", ADMIN, {"name": "newco_b", "carrier": "newco"})
    assert status == 201 and body["position"] == 1 and body["carrier"] == "newco"
    status, _, body = call(app, "PATCH", "/v1/gateways/newco_a", ADMIN, {"leg_timeout": 25})
    assert status == 200 and body["leg_timeout"] == 25 and body["position"] == 0
    # partial update keeps what the body leaves out (provision's rule)
    status, _, body = call(app, "PATCH", "/v1/carriers/newco", ADMIN, {"max_channels": 7})
    assert body["priority"] == 5 and body["max_channels"] == 7
    status, _, body = call(app, "PATCH", "/v1/carriers/newco", ADMIN, {"max_channels": ""})
    assert body["max_channels"] is None
    # a carrier a tenant lists in allowed_carriers cannot go (reference check)
    assert call(app, "PATCH", "/v1/tenants/beta", ADMIN, {"allowed_carriers": ["newco"]})[0] == 200
    status, _, body = call(app, "DELETE", "/v1/carriers/newco", ADMIN)
    assert status == 409 and "allowed_carriers" in body["error"]
    assert call(app, "PATCH", "/v1/tenants/beta", ADMIN, {"allowed_carriers": []})[0] == 200
    assert call(app, "DELETE", "/v1/gateways/newco_b", ADMIN)[0] == 204
    assert call(app, "DELETE", "/v1/carriers/newco", ADMIN)[0] == 204
    assert call(app, "GET", "/v1/gateways/newco_a", ADMIN)[0] == 404
    # a tenant updates its own DID, cannot hand it to another tenant
    status, _, body = call(app, "PATCH", "/v1/dids/+12025550100", world["beta"],
                           {"destination": "300"})
    assert status == 200 and body["destination"] == "300"
    status, _, body = call(app, "PATCH", "/v1/dids/+12025550100", world["beta"], {"tenant": "acme"})
    assert status == 403 and body["field"] == "tenant"
    assert call(app, "DELETE", "/v1/dids/+12025550100", ADMIN)[0] == 204
    assert call(app, "DELETE", "/v1/tenants/beta", ADMIN)[0] == 204
    assert call(app, "GET", "/v1/tenants/beta", ADMIN)[0] == 404


def test_writes_notify_running_daemons(world):
    with psycopg.connect(world["url"], autocommit=True) as listener:
        listener.execute("LISTEN switchd_world")
        assert call(world["app"], "PATCH", "/v1/carriers/primo", ADMIN, {"priority": 11})[0] == 200
        notes = list(listener.notifies(timeout=5, stop_after=1))
    assert notes and notes[0].channel == "switchd_world"


def test_rate_deck_upload_list_export(world):
    app = world["app"]
    csv = b"prefix,rate_per_min,connect_fee,initial_increment,subsequent_increment\n44,0.0123,0,60,60\n447,0.0456,0,60,60\n"
    status, _, body = call(app, "POST", "/v1/carriers/primo/rates?effective_from=2030-01-01T00:00:00%2B00:00",
                           ADMIN, raw=csv)
    assert status == 201 and body["rows"] == 2, body
    status, _, body = call(app, "GET", "/v1/carriers/primo/rates", ADMIN)
    assert status == 200 and len(body["decks"]) == 2
    status, headers, text = call(app, "GET", "/v1/carriers/primo/rates/export?at=2030-02-01T00:00:00%2B00:00", ADMIN)
    assert status == 200 and headers["Content-Type"] == "text/csv"
    assert "447,0.045600" in text and "81," not in text
    before = snapshot(world["url"])
    status, _, body = call(app, "POST", "/v1/carriers/primo/rates", ADMIN,
                           raw=b"prefix,rate_per_min,connect_fee,initial_increment,subsequent_increment\n44,abc,0,60,60\n")
    assert status == 400 and body["field"] == "body" and body["error"].startswith("body:2: rate_per_min"), body
    assert snapshot(world["url"]) == before
    assert call(app, "POST", "/v1/carriers/nope/rates", ADMIN, raw=csv)[0] == 404


def test_webhook_secret_shown_on_set_only(world):
    app, beta = world["app"], world["beta"]
    status, _, body = call(app, "PUT", "/v1/tenants/beta/webhook", beta,
                           {"url": "http://127.0.0.1:9/hook"})
    assert status == 200 and body["secret"].startswith("whsec_")
    status, _, body = call(app, "GET", "/v1/tenants/beta/webhook", beta)
    assert status == 200 and "secret" not in body and body["url"] == "http://127.0.0.1:9/hook"


# --- rate limits ------------------------------------------------------------------------------------
def test_rate_limit_answers_429_with_retry_after(world):
    app, clock = world["app"], world["clock"]
    with psycopg.connect(world["url"], autocommit=True) as conn:
        beta, _ = keys.create(conn, tenant="beta", rate_per_s=1, burst=3)
    for _ in range(3):                                     # burst 3
        assert call(app, "GET", "/v1/tenants", beta)[0] == 200
    status, headers, body = call(app, "GET", "/v1/tenants", beta)
    assert status == 429 and headers["Retry-After"] == "1" and "rate limit" in body["error"]
    assert call(app, "GET", "/v1/tenants", world["acme"])[0] == 200   # per key
    clock.t += 1.0                                         # 1/s refills one token
    assert call(app, "GET", "/v1/tenants", beta)[0] == 200
    assert call(app, "GET", "/v1/tenants", beta)[0] == 429


def test_token_bucket_wait_rounds_up():
    clock = Clock()
    buckets = TokenBuckets(clock)
    assert buckets.take(1, 0.25, 1) == 0
    assert buckets.take(1, 0.25, 1) == 4
    clock.t += 3.9
    assert buckets.take(1, 0.25, 1) == 1
    clock.t += 0.1
    assert buckets.take(1, 0.25, 1) == 0


# --- the OpenAPI document ----------------------------------------------------------------------------
def test_openapi_lists_exactly_the_served_routes(world):
    status, _, doc = call(world["app"], "GET", "/v1/openapi.json")    # no key needed
    assert status == 200 and doc["openapi"] == "3.1.0"
    served = {(r.method, r.path) for r in world["app"].routes}
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert served == documented
    for path, ops in doc["paths"].items():
        names = {p["name"] for op in ops.values() for p in op.get("parameters", [])
                 if p["in"] == "path"}
        assert names == set(__import__("re").findall(r"\{(\w+)\}", path)), path


def test_openapi_document_is_valid():
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(openapi.document())


def test_openapi_refs_resolve():
    doc = openapi.document()
    import json as _json
    text = _json.dumps(doc)
    for ref in set(__import__("re").findall(r'"#/components/schemas/(\w+)"', text)):
        assert ref in doc["components"]["schemas"], ref


# --- originate at the HTTP layer: tenancy and Idempotency-Key -------------------------------------
def test_idempotency_key_replays_refuses_concurrent_and_forgets_crashes(world):
    """The originate behind it is a recorder (the daemon's is exercised end to end in
    test_e2e_api.py); what is tested here is the key's table in PostgreSQL."""
    from switchd.api.calls import Live
    from switchd.calls.originate import OriginateError
    placed, inner = [], {}
    app = None

    def originate(payload):
        placed.append(payload)
        if payload["destination"] == "+442079460001":     # a retry while the first runs
            inner["answer"] = call(app, "POST", "/v1/calls", world["acme"],
                                   {"destination": "+442079460001"}, headers={"Idempotency-Key": "k1"})
        if payload["destination"] == "+442079460002":
            raise RuntimeError("switch exploded")
        if payload["destination"] == "+442079460003":
            raise OriginateError("timeout_s: an integer from 1 to 300")
        return {"call_uuid": f"uuid-{len(placed)}", "tenant": payload["tenant"]}

    app = build_app(world["url"], Live(originate=originate), admin_token=ADMIN)
    acme = world["acme"]
    status, _, first = call(app, "POST", "/v1/calls", acme, {"destination": "+442079460001"},
                            headers={"Idempotency-Key": "k1"})
    assert status == 200 and first == {"call_uuid": "uuid-1", "tenant": "acme"}
    status, headers, body = inner["answer"]
    assert status == 409 and headers["Retry-After"] == "1" and body["field"] == "Idempotency-Key"
    status, headers, again = call(app, "POST", "/v1/calls", acme, {"destination": "+442079460001"},
                                  headers={"Idempotency-Key": "k1"})
    assert (status, again, headers["Idempotent-Replayed"]) == (200, first, "true")
    assert len(placed) == 1
    # the same key from another API key is another request
    assert call(app, "POST", "/v1/calls", world["beta"], {"destination": "+442079460001"},
                headers={"Idempotency-Key": "k1"})[2]["tenant"] == "beta"
    # a crash stores nothing: the retry runs again
    assert call(app, "POST", "/v1/calls", acme, {"destination": "+442079460002"},
                headers={"Idempotency-Key": "k2"})[0] == 500
    assert call(app, "POST", "/v1/calls", acme, {"destination": "+442079460002"},
                headers={"Idempotency-Key": "k2"})[0] == 500
    assert len([p for p in placed if p["destination"] == "+442079460002"]) == 2
    # a refusal is an answer: stored and replayed, with the field named
    for _ in range(2):
        status, _, body = call(app, "POST", "/v1/calls", acme, {"destination": "+442079460003"},
                               headers={"Idempotency-Key": "k3"})
        assert status == 400 and body["field"] == "timeout_s"
    assert len([p for p in placed if p["destination"] == "+442079460003"]) == 1
    # tenancy: a tenant key places calls as its own tenant only
    status, _, body = call(app, "POST", "/v1/calls", acme, {"destination": "+1", "tenant": "beta"})
    assert status == 404 and body["field"] == "tenant"
    status, _, body = call(app, "POST", "/v1/calls", ADMIN, {"destination": "+1"})
    assert status == 400 and body["field"] == "tenant"
    status, _, body = call(app, "POST", "/v1/calls", acme, {"destination": "+1"},
                           headers={"Idempotency-Key": ""})
    assert status == 400 and body["field"] == "Idempotency-Key"
