"""Calls (live from the registry, recorded from the CDR tables), hang up, originate with an
Idempotency-Key, statistics, the routing explanation and per-carrier rates of a number,
carrier health. What only the running daemon knows (live calls, ESL, health, decks) comes
through `Live`; without a daemon (tests, a read-only API) those endpoints answer 503.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Callable

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from dialplan import lcr, numbers, policy
from dialplan.health import availability
from dialplan.ratedeck import lookup_all
from switchd.api.app import ApiError, Request, dumps
from switchd.calls.retries import list_attempts

UUID_CHARS = set("0123456789abcdefABCDEF-")


@dataclass
class Live:
    """The daemon's side; every member optional."""
    live_calls: Callable[[str | None], list] | None = None  # one tenant's, or all (None)
    live_call: Callable[[str], dict | None] | None = None    # by call UUID; None: not up
    originate: Callable[[dict], dict] | None = None          # raises OriginateError
    hangup: Callable[[str], bool] | None = None              # False: no such live call
    router: Any = None                                        # switchd.routing.router.Router
    reset_health: Callable[[str], None] | None = None
    cancel_retries: Callable[..., int] | None = None          # Originator.cancel_retries


def _need(live_member, what: str):
    if live_member is None:
        raise ApiError(503, f"{what} needs the running daemon (switchd run)")
    return live_member


def _uuid(req: Request) -> str:
    value = req.params["call_uuid"]
    if not 8 <= len(value) <= 64 or not set(value) <= UUID_CHARS:
        raise ApiError(400, f"{value!r} is not a call UUID", "call_uuid")
    return value


# --- calls --------------------------------------------------------------------------------
def list_calls(live: Live):
    def handler(req: Request):
        source = req.query.get("source", "live")
        if source == "live":
            tenant = req.scope(req.query.get("tenant"))
            return {"calls": _need(live.live_calls, "live calls")(tenant)}
        if source != "records":
            raise ApiError(400, f"{source!r}: expected live or records", "source")
        return _records(req)
    return handler


_FILTERS = {"carrier": "carrier = %s", "destination": "destination = %s",
            "hangup_cause": "hangup_cause = %s"}


def _records(req: Request):
    limit = req.int_query("limit", 50, 1, 500)
    where, params = [], []
    tenant = req.scope(req.query.get("tenant"))
    if tenant is not None:
        where.append("tenant = %s")
        params.append(tenant)
    for name, clause in _FILTERS.items():
        if req.query.get(name):
            where.append(clause)
            params.append(req.query[name])
    for name, op in (("from", ">="), ("to", "<")):
        if req.query.get(name):
            where.append(f"started_at {op} %s")
            params.append(_time(req, name))
    answered = req.query.get("answered")
    if answered is not None:
        if answered not in ("true", "false"):
            raise ApiError(400, f"{answered!r}: expected true or false", "answered")
        where.append("answered_at IS NOT NULL" if answered == "true" else "answered_at IS NULL")
    cursor = req.query.get("cursor")
    if cursor:      # opaque to clients: "<started_at iso>|<call_uuid>" of the last row seen
        at, _, last = cursor.partition("|")
        try:
            at = datetime.fromisoformat(at)
        except ValueError:
            raise ApiError(400, "not a cursor this API returned", "cursor") from None
        where.append("(started_at, call_uuid) < (%s, %s)")
        params += [at, last]
    query = ("SELECT call_uuid, tenant, direction, caller, destination, started_at, answered_at,"
             " ended_at, hangup_cause, carrier, gateway, attempts, billed_seconds, cost"
             " FROM calls" + (" WHERE " + " AND ".join(where) if where else "")
             + " ORDER BY started_at DESC NULLS LAST, call_uuid DESC LIMIT %s")
    with req.conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params + [limit + 1])
        rows = cur.fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    for r in rows:
        r["state"] = "ended"
    nxt = (f"{rows[-1]['started_at'].isoformat()}|{rows[-1]['call_uuid']}"
           if more and rows[-1]["started_at"] else None)
    return {"calls": rows, "next_cursor": nxt}


def _time(req: Request, name: str) -> datetime:
    try:
        value = datetime.fromisoformat(req.query[name])
    except ValueError:
        raise ApiError(400, f"{req.query[name]!r} is not an ISO 8601 date/time", name) from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def get_call(live: Live):
    def handler(req: Request):
        call_uuid = _uuid(req)
        tenant = req.tenant
        c = live.live_call(call_uuid) if live.live_call else None
        if c is not None and (tenant is None or c.get("tenant") == tenant):
            return {**c, "cost": None, "originate_attempts": _attempts(req, call_uuid)}
        with req.conn.cursor(row_factory=dict_row) as cur:
            cur.execute("""SELECT call_uuid, tenant, direction, caller, destination, started_at,
                                  answered_at, ended_at, hangup_cause, carrier, gateway,
                                  attempts, billed_seconds, cost, reconstructed
                           FROM calls WHERE call_uuid = %s""", (call_uuid,))
            row = cur.fetchone()
            originated = _attempts(req, call_uuid)
            if row is None and originated:
                # an originate whose attempts made no CDR (yet): its attempts say where it is
                cur.execute("SELECT tenant, destination FROM originate_attempts"
                            " WHERE call_uuid = %s::uuid LIMIT 1", (call_uuid,))
                owner = cur.fetchone()
                if owner is not None and (tenant is None or owner["tenant"] == tenant):
                    pending = any(a["state"] != "done" for a in originated)
                    return {"call_uuid": call_uuid, **owner, "direction": "outbound",
                            "state": "pending" if pending else "ended", "legs": [],
                            "cost": None, "originate_attempts": originated}
            if row is None or (tenant is not None and row["tenant"] != tenant):
                raise ApiError(404, f"no call {call_uuid}", "call_uuid")
            row["originate_attempts"] = originated
            # In the order they were tried: FreeSWITCH's timer tick can give the caller's
            # leg and a failover's legs one start time; an earlier attempt ended first.
            cur.execute("""SELECT leg_uuid, direction, carrier, gateway, started_at, answered_at,
                                  ended_at, hangup_cause, sip_status, billed_seconds,
                                  rate_per_min, connect_fee, increments, cost
                           FROM call_legs WHERE call_uuid = %s
                           ORDER BY started_at NULLS FIRST, direction <> 'inbound',
                                    ended_at NULLS LAST, leg_uuid""", (call_uuid,))
            row["legs"] = cur.fetchall()
        row["state"] = "ended"
        return row
    return handler


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _attempts(req: Request, call_uuid: str) -> list[dict]:
    """The originate attempts of the call (docs/originate.md); [] for a call not originated."""
    if not _is_uuid(call_uuid):
        return []
    with req.conn.cursor(row_factory=dict_row) as cur:
        return list_attempts(cur, str(uuid.UUID(call_uuid)))


def hangup_call(live: Live):
    def handler(req: Request):
        call_uuid = _uuid(req)
        call = _need(live.live_call, "hang up")(call_uuid)
        if call is not None and req.tenant is not None and call.get("tenant") != req.tenant:
            call = None
        if call is None:
            # not up: an originated call waiting for a retry is stopped by cancelling it
            if live.cancel_retries is not None and _is_uuid(call_uuid) and live.cancel_retries(
                    call_uuid=call_uuid, tenant=req.tenant, why="retry cancelled (hangup)"):
                return 202, {"call_uuid": call_uuid, "hangup": "retries cancelled"}
            raise ApiError(404, f"no live call {call_uuid}", "call_uuid")
        if not _need(live.hangup, "hang up")(call_uuid):
            raise ApiError(502, f"FreeSWITCH did not hang up {call_uuid}")
        return 202, {"call_uuid": call_uuid, "hangup": "requested"}
    return handler


def create_call(live: Live):
    """Originate; with Idempotency-Key the first answer is stored and replayed, so a client
    that retries (timeout, lost connection) never places a second call."""
    def handler(req: Request):
        from switchd.calls.originate import OriginateError
        originate = _need(live.originate, "originate")
        payload = dict(req.json())
        payload["tenant"] = req.scope(payload.get("tenant"))
        if payload["tenant"] is None:
            raise ApiError(400, "required (an admin key names the tenant)", "tenant")
        idem = req.headers.get("idempotency-key")
        if idem is not None and not 1 <= len(idem) <= 200:
            raise ApiError(400, "1 to 200 characters", "Idempotency-Key")
        digest = hashlib.sha256(dumps(payload)).hexdigest()
        if idem is not None:
            replay = _claim(req, idem, digest)
            if replay is not None:
                return replay
        try:
            try:
                status, body = 200, originate(payload)
            except OriginateError as exc:
                status, body = exc.status, {"error": str(exc)}
                if exc.sip_code:
                    body["sip_code"] = exc.sip_code
                field = _originate_field(str(exc))
                if field:
                    body["field"] = field
        except BaseException:
            if idem is not None:    # nothing stored: the client may retry
                req.conn.execute("DELETE FROM api_idempotency WHERE key_id = %s AND idem_key = %s"
                                 " AND status IS NULL", (req.key.id, idem))
            raise
        if idem is not None:
            req.conn.execute("""UPDATE api_idempotency SET status = %s, response = %s
                                WHERE key_id = %s AND idem_key = %s""",
                             (status, Jsonb(json.loads(dumps(body))), req.key.id, idem))
        return status, body
    return handler


_ORIGINATE_FIELDS = ("tenant", "destination", "caller_id", "campaign", "app", "timeout_s",
                     "retry", "reference")


def _originate_field(message: str) -> str | None:
    """originate.py's messages start with the field ("timeout_s: ..."); name it."""
    head = message.split(":", 1)[0]
    if head in _ORIGINATE_FIELDS or head.startswith("retry"):
        return head
    if message.startswith("daily attempt cap"):
        return "destination"
    if message.startswith("unknown field(s): "):
        return message.removeprefix("unknown field(s): ").split(",")[0]
    if message.startswith("unknown or disabled tenant"):
        return "tenant"
    if message.startswith("unknown campaign"):
        return "campaign"
    return "destination" if "number" in message else None


def _claim(req: Request, idem: str, digest: str):
    row = req.conn.execute(
        """INSERT INTO api_idempotency (key_id, idem_key, request_hash) VALUES (%s, %s, %s)
           ON CONFLICT DO NOTHING RETURNING 1""", (req.key.id, idem, digest)).fetchone()
    if row is not None:
        return None                 # first time: go ahead
    status, response, stored = req.conn.execute(
        "SELECT status, response, request_hash FROM api_idempotency"
        " WHERE key_id = %s AND idem_key = %s", (req.key.id, idem)).fetchone()
    if stored != digest:
        raise ApiError(422, "this Idempotency-Key was used with a different request",
                       "Idempotency-Key")
    if status is None:
        raise ApiError(409, "the first request with this Idempotency-Key is still running",
                       "Idempotency-Key", headers=[("Retry-After", "1")])
    return status, response, [("Idempotent-Replayed", "true")]


# --- statistics -----------------------------------------------------------------------------
_GROUPS = {"tenant": "tenant", "carrier": "carrier", "day": "date_trunc('day', started_at)",
           "hour": "date_trunc('hour', started_at)", "month": "date_trunc('month', started_at)"}


def stats(req: Request):
    """Counts, ASR (answered / attempted), ACD (mean billed seconds of answered calls) and
    cost, grouped by any of tenant, carrier and a period (hour, day, month)."""
    group = [g for g in req.query.get("group_by", "tenant").split(",") if g]
    for g in group:
        if g not in _GROUPS:
            raise ApiError(400, f"{g!r}: expected some of {', '.join(_GROUPS)}", "group_by")
    periods = [g for g in group if g in ("hour", "day", "month")]
    if len(periods) > 1:
        raise ApiError(400, "at most one period", "group_by")
    where, params = [], []
    tenant = req.scope(req.query.get("tenant"))
    if tenant is not None:
        where.append("tenant = %s")
        params.append(tenant)
    for name, op in (("from", ">="), ("to", "<")):
        if req.query.get(name):
            where.append(f"started_at {op} %s")
            params.append(_time(req, name))
    cols = [f"{_GROUPS[g]} AS {g}" for g in group]
    query = ("SELECT " + ", ".join(cols + [
        "count(*) AS calls", "count(answered_at) AS answered", "sum(billed_seconds) AS billed_seconds",
        "sum(cost) AS cost",
        "round(avg(billed_seconds) FILTER (WHERE answered_at IS NOT NULL), 1) AS acd_seconds"])
        + " FROM calls" + (" WHERE " + " AND ".join(where) if where else "")
        + (" GROUP BY " + ", ".join(str(i + 1) for i in range(len(group))) if group else "")
        + (" ORDER BY " + ", ".join(str(i + 1) for i in range(len(group))) if group else ""))
    with req.conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        rows = cur.fetchall()
    for r in rows:
        r["asr"] = (Decimal(r["answered"]) / r["calls"]).quantize(Decimal("0.0001")) \
            if r["calls"] else None
        r["cost"] = r["cost"] if r["cost"] is not None else Decimal(0)
    return {"group_by": group, "stats": rows}


# --- routing explanation ----------------------------------------------------------------------
def routing_test(live: Live):
    """The decision switchd would make for a number now, without placing a call and without
    taking cap slots: Router.plan's steps up to LCR and max duration (caps are a live
    admission, not part of the decision to explain)."""
    def handler(req: Request):
        router = _need(live.router, "routing test")
        body = req.json()
        tenant_name = req.scope(body.get("tenant"))
        if tenant_name is None:
            raise ApiError(400, "required (an admin key names the tenant)", "tenant")
        number = body.get("number")
        if not isinstance(number, str) or not number:
            raise ApiError(400, "required: the dialled number as a string", "number")
        return explain(router, tenant_name, number)
    return handler


def explain(router, tenant_name: str, dialled: str) -> dict:
    world = router.world()
    tenant = world.tenants.get(tenant_name)
    if tenant is None:
        raise ApiError(404, f"no tenant named {tenant_name!r}", "tenant")
    out: dict[str, Any] = {"tenant": tenant.name, "dialled": dialled, "result": "refused"}
    if not tenant.enabled:
        return {**out, "reason": "tenant disabled"}
    try:
        number = numbers.normalise(dialled, tenant.default_region)
    except numbers.SpecialNumber as special:
        return {**out, "reason": f"{special}: never least-cost routed (emergency/special path)"}
    except numbers.InvalidNumber as exc:
        return {**out, "reason": str(exc)}
    out["number"] = number.e164
    refusal = policy.check_destination(tenant, number)
    if refusal:
        return {**out, "reason": refusal.reason, "detail": refusal.detail,
                "sip_code": refusal.sip_code}
    remaining = router.spend.remaining(tenant)
    if remaining is not None and remaining <= 0:
        return {**out, "reason": "monthly budget exhausted"}
    ranked = router.rank(world, tenant, number, router.clock())
    considered = sorted(ranked.considered, key=lambda r: (r["position"] is None,
                                                         r["position"] or 0, r["carrier"]))
    out["carriers"] = considered
    out["routes"] = [{"carrier": r.carrier.name, "gateway": r.gateway.name,
                      "prefix": r.rate.prefix, "rate_per_min": str(r.rate.rate_per_min),
                      "connect_fee": str(r.rate.connect_fee),
                      "increments": f"{r.rate.initial_increment}/{r.rate.subsequent_increment}"}
                     for r in ranked.routes]
    if not ranked.routes:
        return {**out, "reason": lcr.no_route_reason(ranked.considered)}
    share = router.spend.preview(tenant, ranked.routes[0].rate)    # what live calls left
    max_s = policy.decide_duration(None, tenant.max_call_seconds, share, ranked.routes[0].rate)
    if isinstance(max_s, policy.Refusal):
        return {**out, "reason": max_s.reason, "detail": max_s.detail, "sip_code": max_s.sip_code}
    return {**out, "result": "routed", "reason": ranked.reason, "max_duration": max_s,
            "budget_remaining": remaining}


def rates_for(live: Live):
    def handler(req: Request):
        router = _need(live.router, "rates lookup")
        digits = req.params["number"].lstrip("+")
        if not digits.isdigit() or not 4 <= len(digits) <= 16:
            raise ApiError(400, "an E.164 number, digits only (a leading + is allowed)", "number")
        decks = router.decks()
        world = router.world()
        allowed = None
        if req.tenant is not None:
            tenant = world.tenants.get(req.tenant)
            allowed = set(tenant.allowed_carriers) if tenant and tenant.allowed_carriers else None
        names = sorted(n for n in decks if n in world.carriers and (allowed is None or n in allowed))
        found = lookup_all([decks[n] for n in names], digits, router.clock())
        return {"number": "+" + digits, "rates": [
            {"carrier": n, "prefix": r.prefix, "rate_per_min": str(r.rate_per_min),
             "connect_fee": str(r.connect_fee),
             "increments": f"{r.initial_increment}/{r.subsequent_increment}",
             "one_minute_cost": str(lcr.one_minute_cost(r))}
            for n, r in zip(names, found) if r is not None]}
    return handler


# --- carrier health -------------------------------------------------------------------------
def _health_row(router, name: str) -> dict:
    h = router.health.get(name)
    return {"carrier": name, "score": h.score, "consecutive_failures": h.consecutive_failures,
            "disabled_at": h.disabled_at,
            "state": availability(h, router.clock(), router.settings["health_cooldown"]),
            "down_gateways": sorted(g.name for g in router.world().carriers[name].gateways
                                    if g.name in router.health.down_gateways)}


def carrier_health(live: Live):
    def handler(req: Request):
        router = _need(live.router, "carrier health")
        name = req.params["name"]
        if name not in router.world().carriers:
            raise ApiError(404, f"no carrier {name!r}", "name")
        return _health_row(router, name)
    return handler


def reset_health(live: Live):
    def handler(req: Request):
        router = _need(live.router, "carrier health")
        name = req.params["name"]
        if name not in router.world().carriers:
            raise ApiError(404, f"no carrier {name!r}", "name")
        _need(live.reset_health, "carrier health reset")(name)
        return _health_row(router, name)
    return handler
