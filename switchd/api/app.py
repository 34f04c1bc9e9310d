"""The /v1 WSGI app: who is asking (API key), what they may touch (their tenant), how
often (token bucket), and one JSON error shape for every refusal:

    {"error": "<one line>", "field": "<the field at fault, when there is one>"}

Routes are one table (ROUTES): method, path pattern, handler, who may call it. The OpenAPI
document (openapi.py) lists the same routes; a test checks the two agree.
"""
from __future__ import annotations

import hmac
import json
import logging
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Callable
from urllib.parse import parse_qsl, unquote

import psycopg

from switchd import metrics
from switchd.adapters.db import green
from switchd.api import keys as keys_mod
from switchd.api.limits import TokenBuckets

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024          # a rate deck upload fits; anything larger is refused
_STATUS = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request",
           401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           409: "Conflict", 413: "Content Too Large", 422: "Unprocessable Content",
           429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
           503: "Service Unavailable"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None,
                 headers: list | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field
        self.headers = headers or []
        self.extra = extra or {}


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]                  # path parameters
    query: dict[str, str]
    headers: dict[str, str]
    raw: bytes
    key: keys_mod.ApiKey | None = None
    conn: psycopg.Connection | None = None
    _json: Any = field(default=None, repr=False)

    @property
    def tenant(self) -> str | None:
        """The tenant a tenant key is bound to; None for an admin."""
        return None if self.key is None or self.key.is_admin else self.key.tenant

    @property
    def admin(self) -> bool:
        return self.key is not None and self.key.is_admin

    def json(self) -> dict:
        if self._json is None:
            if not self.raw:
                raise ApiError(400, "a JSON object body is required", "body")
            try:
                self._json = json.loads(self.raw, parse_float=Decimal)
            except ValueError as exc:
                raise ApiError(400, f"body is not JSON: {exc}", "body") from None
            if not isinstance(self._json, dict):
                raise ApiError(400, "body must be a JSON object", "body")
        return self._json

    def scope(self, tenant: str | None) -> str | None:
        """The tenant a request acts for: a tenant key's own (naming another is 404, as if
        it did not exist); an admin's choice (None: all)."""
        if self.tenant is None:
            return tenant
        if tenant is not None and tenant != self.tenant:
            raise ApiError(404, f"no tenant named {tenant!r}", "tenant")
        return self.tenant

    def int_query(self, name: str, default: int, low: int, high: int) -> int:
        text = self.query.get(name)
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            raise ApiError(400, f"{text!r} is not an integer", name) from None
        if not low <= value <= high:
            raise ApiError(400, f"{value} is out of range {low}..{high}", name)
        return value


@dataclass(frozen=True)
class Route:
    method: str
    path: str                   # OpenAPI template, e.g. /v1/calls/{call_uuid}
    handler: Callable
    who: str                    # "public" | "admin" | "tenant" (tenant keys and admins)
    regex: re.Pattern = field(compare=False, default=None)


def route(method: str, path: str, handler: Callable, who: str) -> Route:
    pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path)
    return Route(method, path, handler, who, re.compile(f"^{pattern}$"))


def _default(value):
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


def dumps(payload) -> bytes:
    return json.dumps(payload, default=_default).encode() + b"\n"


class ApiApp:
    """WSGI app for /v1. `db_url`: where keys and business data live; `admin_token`:
    http.api_token, accepted as an admin key (the shared token of earlier versions keeps
    working, with the rights it always granted). Without it, a request with no
    Authorization header is the operator, as documented for http.api_token = "" ."""

    def __init__(self, db_url: str, routes: list[Route], admin_token: str | None = None,
                 buckets: TokenBuckets | None = None, admin_rate=(50.0, 100)):
        self.db_url = db_url
        self.routes = routes
        self.admin_token = admin_token or None
        self.buckets = buckets or TokenBuckets()
        self.admin_rate = admin_rate

    def __call__(self, environ, start_response):
        try:
            status, payload, headers = self._handle(environ)
        except ApiError as exc:
            status, headers = exc.status, exc.headers
            payload = {"error": exc.message, **({"field": exc.field} if exc.field else {}),
                       **exc.extra}
        except Exception:   # request boundary: one bad request never takes the server down
            log.exception("API handler failed for %s %s", environ.get("REQUEST_METHOD"),
                          environ.get("PATH_INFO"))
            status, payload, headers = 500, {"error": "internal error"}, []
        if isinstance(payload, (bytes, str)):
            body = payload.encode() if isinstance(payload, str) else payload
            ctype = [h for h in headers if h[0] == "Content-Type"] or [("Content-Type", "text/plain")]
            headers = [h for h in headers if h[0] != "Content-Type"] + ctype
        else:
            body = b"" if status == 204 else dumps(payload)
            headers = headers + [("Content-Type", "application/json")]
        metrics.API_REQUESTS.labels(f"{status // 100}xx").inc()
        start_response(f"{status} {_STATUS.get(status, 'Error')}", headers)
        return [body]

    def _match(self, method: str, path: str) -> tuple[Route, dict]:
        allowed = []
        for r in self.routes:
            m = r.regex.match(path)
            if m:
                if r.method == method:
                    return r, m.groupdict()
                allowed.append(r.method)
        if allowed:
            raise ApiError(405, f"{method} not allowed here (allowed: {', '.join(allowed)})",
                           headers=[("Allow", ", ".join(allowed))])
        raise ApiError(404, f"no such endpoint: {path}")

    def _handle(self, environ):
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        r, params = self._match(method, path)
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise ApiError(400, "bad Content-Length", "Content-Length") from None
        if length < 0 or length > MAX_BODY:
            raise ApiError(413, f"body larger than {MAX_BODY} bytes", "body")
        raw = environ["wsgi.input"].read(length) if length else b""
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items()
                   if k.startswith("HTTP_")}
        if environ.get("CONTENT_TYPE"):       # WSGI keeps it out of HTTP_*
            headers["content-type"] = environ["CONTENT_TYPE"]
        req = Request(method, path, {k: unquote(v) for k, v in params.items()},
                      dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)),
                      headers, raw)
        if r.who == "public":
            return _result(r.handler(req))
        with green.connect(self.db_url, autocommit=True) as conn:
            req.conn = conn
            req.key = self._authenticate(conn, headers.get("authorization", ""))
            if r.who == "admin" and not req.admin:
                raise ApiError(403, "this endpoint needs an admin key")
            rate, burst = ((float(req.key.rate_per_s), req.key.burst) if req.key.id
                           else self.admin_rate)
            wait = self.buckets.take(req.key.id, rate, burst)
            if wait:
                raise ApiError(429, f"rate limit of this key reached ({rate:g}/s, burst "
                               f"{burst}); retry in {wait}s",
                               headers=[("Retry-After", str(wait))])
            return _result(r.handler(req))

    def _authenticate(self, conn, header: str) -> keys_mod.ApiKey:
        if not header and self.admin_token is None:
            # http.api_token empty: as documented before keys existed, /v1 without a token
            # is the operator (keep http.host on loopback). A key, when sent, still counts.
            return keys_mod.ApiKey(id=0, prefix="(no token)", tenant=None, is_admin=True,
                                   rate_per_s=Decimal(self.admin_rate[0]),
                                   burst=self.admin_rate[1])
        scheme, _, token = header.partition(" ")
        if scheme != "Bearer" or not token:
            raise ApiError(401, "missing bearer token (Authorization: Bearer <key>)",
                           "Authorization", headers=[("WWW-Authenticate", "Bearer")])
        if self.admin_token and hmac.compare_digest(token.encode(), self.admin_token.encode()):
            return keys_mod.ApiKey(id=0, prefix="http.api_token", tenant=None, is_admin=True,
                                   rate_per_s=Decimal(self.admin_rate[0]),
                                   burst=self.admin_rate[1])
        key = keys_mod.verify(conn, token)
        if key is None:
            raise ApiError(401, "unknown or revoked API key", "Authorization",
                           headers=[("WWW-Authenticate", "Bearer")])
        return key


def _result(out):
    """Handlers return payload, (status, payload) or (status, payload, headers)."""
    if isinstance(out, tuple):
        if len(out) == 2:
            return out[0], out[1], []
        return out
    return 200, out, []
