-- The application side (issue 10, docs/api.md): API keys per tenant, idempotent
-- originate, per-tenant webhooks and their delivery outbox.

-- A key is shown once; only the SHA-256 of its secret part is kept. tenant_id NULL with
-- is_admin true: an operator key that manages every tenant.
CREATE TABLE api_keys (
    id          serial PRIMARY KEY,
    prefix      text NOT NULL UNIQUE,              -- the public part, "sk_" + 8 hex, shown in lists
    secret_hash text NOT NULL,                     -- hex SHA-256 of the whole token
    tenant_id   integer REFERENCES tenants(id) ON DELETE CASCADE,
    is_admin    boolean NOT NULL DEFAULT false,
    label       text NOT NULL DEFAULT '',
    rate_per_s  numeric(10,3) NOT NULL DEFAULT 10 CHECK (rate_per_s > 0),
    burst       integer NOT NULL DEFAULT 20 CHECK (burst > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CHECK (is_admin OR tenant_id IS NOT NULL)
);

-- POST /v1/calls with an Idempotency-Key: the first request's answer, replayed to retries.
CREATE TABLE api_idempotency (
    key_id       integer NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,
    idem_key     text NOT NULL,
    request_hash text NOT NULL,
    status       integer,                          -- NULL while the first request runs
    response     jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key_id, idem_key)
);

CREATE TABLE webhooks (
    tenant_id  integer PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
    url        text NOT NULL CHECK (url ~ '^https?://'),
    secret     text NOT NULL,
    enabled    boolean NOT NULL DEFAULT true,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One row per event and delivery: claimed with FOR UPDATE SKIP LOCKED so several daemons
-- sharing this database deliver each row once.
CREATE TABLE webhook_outbox (
    id            bigserial PRIMARY KEY,
    event_id      uuid NOT NULL,
    tenant        text NOT NULL,
    call_uuid     text NOT NULL,
    call_seq      integer NOT NULL,
    event         text NOT NULL,
    occurred_at   timestamptz NOT NULL,
    body          jsonb NOT NULL,
    attempts      integer NOT NULL DEFAULT 0,
    next_at       timestamptz NOT NULL DEFAULT now(),
    give_up_at    timestamptz NOT NULL,
    delivered_at  timestamptz,
    failed_at     timestamptz,
    last_error    text
);
CREATE INDEX webhook_outbox_due_idx ON webhook_outbox (next_at)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
CREATE INDEX webhook_outbox_call_idx ON webhook_outbox (call_uuid, call_seq);
