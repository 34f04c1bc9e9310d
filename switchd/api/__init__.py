"""The application side of switchd: the tenant REST API under /v1 (docs/api.md).

keys.py      API keys: create, list, revoke, verify (hashed at rest)
limits.py    per-key token buckets (429 with Retry-After)
app.py       the /v1 WSGI app: authentication, tenancy, errors, routes
resources.py tenants, carriers, gateways, DIDs, rates through provision's rules
calls.py     calls (live and recorded), hang up, originate with Idempotency-Key, stats
webhooks.py  per-tenant webhooks: event outbox, signing, delivery (SKIP LOCKED)
openapi.py   the OpenAPI 3.1 document served at /v1/openapi.json
"""
