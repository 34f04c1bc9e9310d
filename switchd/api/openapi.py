"""The OpenAPI 3.1 document of /v1, served at GET /v1/openapi.json. Written here by hand
(one entry per operation); a test checks that it lists exactly the routes the app serves
and that it is a valid OpenAPI 3.1 document. Object properties come from
dialplan/validate.py SPECS, the rules the API enforces."""
from __future__ import annotations

from functools import lru_cache

from dialplan import retry, validate


def _props(section: str) -> dict:
    props = {}
    for key, field in validate.SPECS[section].items():
        props[key] = {"description": f"{'required; ' if field.required else ''}"
                                     f"{'nullable; ' if field.nullable else ''}"
                                     "checked by dialplan/validate.py (docs/provisioning.md)"}
    return props


def _obj(section: str, required: bool = True) -> dict:
    schema = {"type": "object", "properties": _props(section), "additionalProperties": False}
    req = [k for k, f in validate.SPECS[section].items() if f.required]
    if required and req:
        schema["required"] = req
    return schema


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


_ERRORS = {s: {"description": d, "content": {"application/json": {"schema": _ref("Error")}}}
           for s, d in (("400", "Bad request: `field` names the field at fault"),
                        ("401", "Missing, unknown or revoked API key"),
                        ("403", "The key may not do this"),
                        ("404", "Not found (or not this key's tenant)"),
                        ("409", "Conflict (exists, still referenced, request in progress)"),
                        ("429", "Rate limit of this key; see Retry-After"))}

# (method, path, summary, request body schema or None, success status, success description)
_OPS = [
    ("get", "/v1/openapi.json", "This document", None, "200", "The OpenAPI document"),
    ("get", "/v1/keys", "List API keys (a tenant key: its tenant's)", None, "200", "Keys"),
    ("post", "/v1/keys", "Create an API key; the token is in the answer, once",
     _ref("KeyCreate"), "201", "The key, with `key` (the token)"),
    ("delete", "/v1/keys/{prefix}", "Revoke a key by its public id", None, "200", "Revoked"),
    ("get", "/v1/calls", "List calls: live (default) or recorded (source=records), "
     "filters and paging", None, "200", "Calls, next_cursor when there are more"),
    ("post", "/v1/calls", "Place a call (originate); Idempotency-Key makes retries safe",
     _ref("Originate"), "200", "FreeSWITCH's result"),
    ("get", "/v1/calls/{call_uuid}", "One call: state, legs, carrier, cost when done", None,
     "200", "The call"),
    ("post", "/v1/calls/{call_uuid}/hangup", "Hang up a live call", None, "202", "Requested"),
    ("get", "/v1/calls/{call_uuid}/events", "The call's webhook events and their delivery",
     None, "200", "Events"),
    ("post", "/v1/calls/{call_uuid}/events/replay", "Send the call's events again", None,
     "202", "Queued"),
    ("get", "/v1/stats", "Counts, ASR, ACD and cost by tenant, carrier, period", None, "200",
     "Statistics"),
    ("post", "/v1/routing/test", "The routing decision for a number, without calling",
     _ref("RoutingTest"), "200", "The decision"),
    ("get", "/v1/rates/{number}", "Each carrier's rate for a number", None, "200", "Rates"),
    ("get", "/v1/tenants", "List tenants (a tenant key: its own)", None, "200", "Tenants"),
    ("post", "/v1/tenants", "Create a tenant", _ref("Tenant"), "201", "Created"),
    ("get", "/v1/tenants/{name}", "One tenant", None, "200", "The tenant"),
    ("patch", "/v1/tenants/{name}", "Change a tenant (keys left out are kept)",
     _ref("TenantPatch"), "200", "Updated"),
    ("delete", "/v1/tenants/{name}", "Delete a tenant no DID or campaign uses", None, "204",
     "Deleted"),
    ("get", "/v1/tenants/{name}/webhook", "The tenant's webhook (no secret)", None, "200",
     "Webhook"),
    ("put", "/v1/tenants/{name}/webhook", "Set the tenant's webhook; answers the secret",
     _ref("Webhook"), "200", "Webhook with secret"),
    ("delete", "/v1/tenants/{name}/webhook", "Remove the tenant's webhook", None, "204",
     "Removed"),
    ("get", "/v1/carriers", "List carriers", None, "200", "Carriers"),
    ("post", "/v1/carriers", "Create a carrier (gateways may be included)", _ref("Carrier"),
     "201", "Created"),
    ("get", "/v1/carriers/{name}", "One carrier", None, "200", "The carrier"),
    ("patch", "/v1/carriers/{name}", "Change a carrier", _ref("CarrierPatch"), "200", "Updated"),
    ("delete", "/v1/carriers/{name}", "Delete a carrier with its gateways and decks", None,
     "204", "Deleted"),
    ("get", "/v1/carriers/{name}/health", "Live health of a carrier", None, "200", "Health"),
    ("post", "/v1/carriers/{name}/health/reset", "Reset a carrier's health to full", None,
     "200", "Health after reset"),
    ("get", "/v1/carriers/{name}/rates", "The carrier's rate decks", None, "200", "Decks"),
    ("post", "/v1/carriers/{name}/rates", "Upload a rate deck (CSV body, docs/rates.md)",
     {"type": "string"}, "201", "Imported"),
    ("get", "/v1/carriers/{name}/rates/export", "Export a deck as CSV", None, "200", "CSV"),
    ("delete", "/v1/carriers/{name}/rates/{deck_id}", "Delete one deck", None, "200", "Deleted"),
    ("get", "/v1/gateways", "List gateways", None, "200", "Gateways"),
    ("post", "/v1/gateways", "Create a gateway (body names its carrier)", _ref("Gateway"),
     "201", "Created"),
    ("get", "/v1/gateways/{name}", "One gateway", None, "200", "The gateway"),
    ("patch", "/v1/gateways/{name}", "Change a gateway", _ref("GatewayPatch"), "200", "Updated"),
    ("delete", "/v1/gateways/{name}", "Delete a gateway", None, "204", "Deleted"),
    ("get", "/v1/dids", "List DIDs (a tenant key: its own)", None, "200", "DIDs"),
    ("post", "/v1/dids", "Create a DID", _ref("Did"), "201", "Created"),
    ("get", "/v1/dids/{number}", "One DID", None, "200", "The DID"),
    ("patch", "/v1/dids/{number}", "Change a DID's destination", _ref("DidPatch"), "200",
     "Updated"),
    ("delete", "/v1/dids/{number}", "Delete a DID", None, "204", "Deleted"),
    ("get", "/v1/campaigns", "List campaigns with their progress", None, "200", "Campaigns"),
    ("post", "/v1/campaigns", "Create a campaign (contacts may be included; start: true runs it)",
     _ref("CampaignCreate"), "201", "The campaign and its progress"),
    ("get", "/v1/campaigns/{name}", "One campaign: settings, state and progress", None, "200",
     "The campaign"),
    ("patch", "/v1/campaigns/{name}", "Change a campaign's pace, concurrency, hours ...",
     _ref("CampaignSettings"), "200", "Updated"),
    ("get", "/v1/campaigns/{name}/contacts", "Contacts with their state and outcome (paged)",
     None, "200", "Contacts, next_cursor when there are more"),
    ("post", "/v1/campaigns/{name}/contacts", "Add contacts: JSON {contacts: [...]} or a CSV "
     "body (Content-Type: text/csv)", _ref("Contacts"), "201", "Counts added and duplicates"),
    ("post", "/v1/campaigns/{name}/start", "Start dialling", _ref("Reason"), "200", "The campaign"),
    ("post", "/v1/campaigns/{name}/pause", "Pause (calls in progress finish)", _ref("Reason"),
     "200", "The campaign"),
    ("post", "/v1/campaigns/{name}/resume", "Resume a paused campaign", _ref("Reason"), "200",
     "The campaign"),
    ("post", "/v1/campaigns/{name}/stop", "Stop for good (pending contacts are not dialled)",
     _ref("Reason"), "200", "The campaign"),
    ("get", "/v1/dnc", "The do-not-call list (a tenant key: its own)", None, "200", "Numbers"),
    ("post", "/v1/dnc", "Add numbers to a tenant's do-not-call list", _ref("Dnc"), "201",
     "Added"),
    ("delete", "/v1/dnc/{number}", "Remove a number from the do-not-call list", None, "204",
     "Removed"),
]

_QUERY = {
    "/v1/calls": ["source", "tenant", "carrier", "destination", "hangup_cause", "answered",
                  "from", "to", "limit", "cursor"],
    "/v1/stats": ["group_by", "tenant", "from", "to"],
    "/v1/keys": ["tenant"], "/v1/dids": ["tenant"],
    "/v1/carriers/{name}/rates/export": ["at", "deck_id"],
    "/v1/carriers/{name}/rates": ["effective_from"],
    "/v1/campaigns": ["tenant"], "/v1/dnc": ["tenant"], "/v1/dnc/{number}": ["tenant"],
    "/v1/campaigns/{name}/contacts": ["state", "outcome", "limit", "cursor"],
}


def _schemas() -> dict:
    gw = _obj("gateways")
    gw["properties"]["carrier"] = {"type": "string", "description": "the owning carrier"}
    carrier = _obj("carriers")
    carrier["properties"]["gateways"] = {"type": "array", "items": _obj("gateways")}
    return {
        "Error": {"type": "object", "required": ["error"], "properties": {
            "error": {"type": "string"}, "field": {"type": "string"},
            "errors": {"type": "array", "items": {"type": "object"}}}},
        "KeyCreate": {"type": "object", "properties": {
            "tenant": {"type": "string"}, "admin": {"type": "boolean"},
            "label": {"type": "string"}, "rate_per_s": {"type": ["number", "string"]},
            "burst": {"type": "integer"}}},
        "Originate": {"type": "object", "required": ["destination"], "properties": {
            "tenant": {"type": "string"}, "destination": {"type": "string"},
            "caller_id": {"type": "string"}, "app": {"type": "string"},
            "timeout_s": {"type": "integer", "minimum": 1, "maximum": 300},
            "campaign": {"type": "string"}, "retry": _ref("RetryAsk"),
            "reference": {"type": "string", "maxLength": 64}}},
        **_retry_schemas(),
        "RoutingTest": {"type": "object", "required": ["number"], "properties": {
            "tenant": {"type": "string"}, "number": {"type": "string"}}},
        "Webhook": {"type": "object", "required": ["url"], "properties": {
            "url": {"type": "string", "format": "uri"}, "secret": {"type": "string"},
            "enabled": {"type": "boolean"}}},
        "CampaignSettings": _campaign_settings(),
        "CampaignCreate": {**_campaign_settings(), "required": ["name"], "properties": {
            **_campaign_settings()["properties"], "name": {"type": "string"},
            "tenant": {"type": "string"}, "start": {"type": "boolean"},
            "contacts": {"type": "array", "items": _ref("Contact")}}},
        "Contact": {"type": "object", "required": ["number"], "properties": {
            "number": {"type": "string"}, "timezone": {"type": "string"}},
            "additionalProperties": True},
        "Contacts": {"type": "object", "required": ["contacts"], "properties": {
            "contacts": {"type": "array", "items": _ref("Contact")}}},
        "Reason": {"type": "object", "properties": {"reason": {"type": "string"}}},
        "Dnc": {"type": "object", "required": ["numbers"], "properties": {
            "tenant": {"type": "string"}, "note": {"type": "string"},
            "numbers": {"type": "array", "items": {"type": "string"}}}},
        "Tenant": _obj("tenants"), "TenantPatch": _obj("tenants", required=False),
        "Carrier": carrier, "CarrierPatch": _obj("carriers", required=False),
        "Gateway": gw, "GatewayPatch": _obj("gateways", required=False),
        "Did": _obj("dids"), "DidPatch": _obj("dids", required=False),
    }


_ATTEMPT_OUTCOMES = list(retry.OUTCOMES) + ["refused", "capped", "failed", "interrupted"]


def _retry_schemas() -> dict:
    """The originate side of docs/originate.md: the request's retry, the answer, attempts."""
    ts = {"type": ["string", "null"], "format": "date-time"}
    nullable = lambda t: {"type": [t, "null"]}     # noqa: E731
    return {
        "RetryAsk": {"type": "object", "required": ["max_attempts"],
                     "additionalProperties": False, "properties": {
                         "max_attempts": {"type": "integer", "minimum": 1,
                                          "maximum": retry.MAX_ATTEMPTS},
                         "on": {"type": "array", "minItems": 1,
                                "items": {"enum": list(retry.RETRYABLE)}}}},
        "OriginateResult": {"type": "object", "required": [
            "call_uuid", "result", "answered", "attempt", "outcome", "final"], "properties": {
                "call_uuid": {"type": "string", "format": "uuid"},
                "route_id": {"type": "string"}, "result": {"type": "string"},
                "answered": {"type": "boolean"}, "destination": {"type": "string"},
                "max_duration": {"type": "integer"},
                "gateways": {"type": "array", "items": {"type": "string"}},
                "attempts": {"type": "array", "items": {"type": "object"},
                             "description": "the carrier legs of this first attempt"},
                "attempt": {"type": "integer", "const": 1},
                "outcome": {"enum": list(retry.OUTCOMES)}, "final": {"type": "boolean"},
                "next_attempt_at": ts}},
        "OriginateAttempt": {"type": "object", "required": [
            "attempt", "state", "scheduled_at", "outcome", "final"], "properties": {
                "attempt": {"type": "integer", "minimum": 1},
                "attempt_call_uuid": {"type": ["string", "null"], "format": "uuid"},
                "state": {"enum": ["pending", "running", "done"]},
                "scheduled_at": {"type": "string", "format": "date-time"},
                "started_at": ts, "ended_at": ts,
                "outcome": {"enum": _ATTEMPT_OUTCOMES + [None]},
                "cause": nullable("string"), "sip_status": nullable("integer"),
                "carrier": nullable("string"), "gateway": nullable("string"),
                "carriers_tried": nullable("integer"), "final": {"type": "boolean"},
                "note": nullable("string")}},
        "Call": {"type": "object", "required": ["call_uuid", "state"], "properties": {
            "call_uuid": {"type": "string"}, "tenant": nullable("string"),
            "state": {"type": "string"}, "direction": nullable("string"),
            "destination": nullable("string"), "carrier": nullable("string"),
            "attempts": {"type": ["integer", "null"],
                         "description": "carrier legs tried (the CDR's count)"},
            "cost": {"type": ["string", "number", "null"]},
            "legs": {"type": ["array", "integer"]},
            "originate_attempts": {"type": "array", "items": _ref("OriginateAttempt")}}},
    }


_RESPONSE_SCHEMAS = {("post", "/v1/calls"): "OriginateResult",
                     ("get", "/v1/calls/{call_uuid}"): "Call"}


def _campaign_settings() -> dict:
    num = {"type": ["number", "string"]}
    return {"type": "object", "additionalProperties": False, "properties": {
        "pace_cps": {**num, "description": "calls per second (0.01-1000)"},
        "max_concurrent": {"type": "integer", "minimum": 1},
        "caller_id": {"type": "string"},
        "timeout_s": {"type": "integer", "minimum": 1, "maximum": 300},
        "calling_hours": {"type": ["string", "null"], "description": "HH:MM-HH:MM, local"},
        "calling_days": {"type": "string", "description": "e.g. mon-fri"},
        "default_timezone": {"type": "string"},
        "min_answer_rate": {**num, "description": "0-1; below it the campaign pauses"},
        "answer_rate_window": {"type": "integer", "minimum": 1}}}


def _operation(method, path, summary, body, status, desc) -> dict:
    params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
              for n in __import__("re").findall(r"\{(\w+)\}", path)]
    params += [{"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
               for n in (_QUERY.get(path, []) if method == "get" or path.endswith("/rates")
                         else [])]
    if path == "/v1/calls" and method == "post":
        params.append({"name": "Idempotency-Key", "in": "header", "required": False,
                       "schema": {"type": "string", "maxLength": 200}})
    op = {"summary": summary, "operationId": f"{method}_{path}".replace("/", "_")
          .replace("{", "").replace("}", "").replace(".", "_"),
          "responses": {status: {"description": desc}, **_ERRORS}}
    if (method, path) in _RESPONSE_SCHEMAS:
        op["responses"][status]["content"] = {
            "application/json": {"schema": _ref(_RESPONSE_SCHEMAS[method, path])}}
    if path == "/v1/openapi.json":
        op["security"] = []
    if params:
        op["parameters"] = params
    if body is not None:
        ctype = "text/csv" if body == {"type": "string"} else "application/json"
        op["requestBody"] = {"required": body != _ref("Reason"),
                             "content": {ctype: {"schema": body}}}
        if path == "/v1/campaigns/{name}/contacts":
            op["requestBody"]["content"]["text/csv"] = {"schema": {"type": "string"}}
    return op


@lru_cache(maxsize=1)
def document() -> dict:
    paths: dict = {}
    for method, path, summary, body, status, desc in _OPS:
        paths.setdefault(path, {})[method] = _operation(method, path, summary, body, status, desc)
    return {
        "openapi": "3.1.0",
        "info": {"title": "switchd API", "version": "1",
                 "description": "Tenants, keys, calls, routing, rates and webhooks. "
                                "docs/api.md is the guide."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                       "schemas": _schemas()},
        "paths": paths,
    }


def operations() -> set[tuple[str, str]]:
    return {(m.upper(), p) for p, ops in document()["paths"].items() for m in ops}
