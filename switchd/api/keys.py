"""API keys: a tenant's (sees only its tenant) or an admin's (manages everything).

A token is ``sk_<8 hex>_<43 url-safe chars>``: the first part is a public id (shown in
lists, used to find the row), the whole token is the secret. Only the SHA-256 of the token
is stored. A plain fast hash is right here because the token carries 256 random bits:
nobody can guess it from the hash, so a slow password hash (bcrypt, scrypt) would add cost
to every request and no security; it matters only for low-entropy secrets people choose.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from decimal import Decimal

import psycopg
from psycopg.rows import dict_row

from dialplan import validate


class KeyError_(ValueError):
    """A key operation that cannot be done (unknown tenant, unknown key); one line."""


@dataclass(frozen=True)
class ApiKey:
    id: int
    prefix: str
    tenant: str | None          # None: admin
    is_admin: bool
    rate_per_s: Decimal
    burst: int


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create(conn: psycopg.Connection, *, tenant: str | None, admin: bool = False,
           label: str = "", rate_per_s: Decimal | None = None,
           burst: int | None = None) -> tuple[str, dict]:
    """(token, row). The token is returned here once and never stored."""
    if not admin and tenant is None:
        raise KeyError_("a key needs --tenant (or --admin)")
    tenant_id = None
    if tenant is not None:
        row = conn.execute("SELECT id FROM tenants WHERE name = %s", (tenant,)).fetchone()
        if row is None:
            raise KeyError_(f"tenant: no tenant named {tenant!r}")
        tenant_id = row[0]
    label = validate.safe_text(label) if label else ""
    prefix = "sk_" + secrets.token_hex(4)
    token = f"{prefix}_{secrets.token_urlsafe(32)}"
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """INSERT INTO api_keys (prefix, secret_hash, tenant_id, is_admin, label,
                                     rate_per_s, burst)
               VALUES (%s, %s, %s, %s, %s, coalesce(%s, 10), coalesce(%s, 20))
               RETURNING prefix, is_admin, label, rate_per_s, burst, created_at""",
            (prefix, _hash(token), tenant_id, admin, label, rate_per_s, burst))
        row = cur.fetchone()
    row["tenant"] = tenant
    return token, row


def list_keys(conn: psycopg.Connection, tenant: str | None = None) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("""SELECT k.prefix, t.name AS tenant, k.is_admin, k.label, k.rate_per_s,
                              k.burst, k.created_at, k.revoked_at
                       FROM api_keys k LEFT JOIN tenants t ON t.id = k.tenant_id
                       WHERE %s::text IS NULL OR t.name = %s
                       ORDER BY k.created_at, k.id""", (tenant, tenant))
        return cur.fetchall()


def revoke(conn: psycopg.Connection, prefix: str, tenant: str | None = None) -> dict:
    """Revoke by public id; with `tenant`, only a key of that tenant (a tenant key revoking
    another tenant's key gets "no such key", never a hint that it exists)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("""UPDATE api_keys k SET revoked_at = coalesce(k.revoked_at, now())
                       FROM (SELECT k2.id FROM api_keys k2
                             LEFT JOIN tenants t ON t.id = k2.tenant_id
                             WHERE k2.prefix = %s AND (%s::text IS NULL OR t.name = %s)) m
                       WHERE k.id = m.id RETURNING k.prefix, k.revoked_at""",
                    (prefix, tenant, tenant))
        row = cur.fetchone()
    if row is None:
        raise KeyError_(f"key: no key {prefix!r}" + (f" for tenant {tenant!r}" if tenant else ""))
    return row


def verify(conn: psycopg.Connection, token: str) -> ApiKey | None:
    parts = token.split("_")
    if len(parts) < 3 or parts[0] != "sk":
        return None
    prefix = f"sk_{parts[1]}"
    row = conn.execute(
        """SELECT k.id, k.secret_hash, t.name, k.is_admin, k.rate_per_s, k.burst
           FROM api_keys k LEFT JOIN tenants t ON t.id = k.tenant_id
           WHERE k.prefix = %s AND k.revoked_at IS NULL""", (prefix,)).fetchone()
    if row is None or not hmac.compare_digest(row[1], _hash(token)):
        return None
    return ApiKey(id=row[0], prefix=prefix, tenant=row[2], is_admin=row[3],
                  rate_per_s=row[4], burst=row[5])
