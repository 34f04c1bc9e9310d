-- switchd schema v1: business data (tenants, carriers, gateways, rates, DIDs, campaigns)
-- and call records (routing decisions, calls, legs, events). See docs/internals.md.

CREATE TABLE tenants (
    id                 serial PRIMARY KEY,
    name               text NOT NULL UNIQUE,
    accountcode        text UNIQUE,
    domain             text UNIQUE,
    default_region     text NOT NULL DEFAULT 'US',
    max_call_seconds   integer NOT NULL DEFAULT 3600 CHECK (max_call_seconds > 0),
    max_concurrent     integer CHECK (max_concurrent >= 0),
    cps_limit          numeric(10,3) CHECK (cps_limit > 0),
    monthly_budget     numeric(18,6) CHECK (monthly_budget >= 0),
    allowed_countries  text[] NOT NULL DEFAULT '{}',
    allowed_prefixes   text[] NOT NULL DEFAULT '{}',
    blocked_prefixes   text[] NOT NULL DEFAULT '{}',
    max_rate_per_min   numeric(12,6) CHECK (max_rate_per_min >= 0),
    allowed_carriers   text[] NOT NULL DEFAULT '{}',
    routing_mode       text NOT NULL DEFAULT 'cost' CHECK (routing_mode IN ('cost', 'priority')),
    enabled            boolean NOT NULL DEFAULT true,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE carriers (
    id                           serial PRIMARY KEY,
    name                         text NOT NULL UNIQUE,
    enabled                      boolean NOT NULL DEFAULT true,
    priority                     integer NOT NULL DEFAULT 100,
    max_channels                 integer CHECK (max_channels >= 0),
    cps_limit                    numeric(10,3) CHECK (cps_limit > 0),
    default_initial_increment    integer NOT NULL DEFAULT 60 CHECK (default_initial_increment > 0),
    default_subsequent_increment integer NOT NULL DEFAULT 60 CHECK (default_subsequent_increment > 0),
    health                       integer NOT NULL DEFAULT 100 CHECK (health BETWEEN 0 AND 100),
    consecutive_failures         integer NOT NULL DEFAULT 0,
    disabled_at                  timestamptz,
    updated_at                   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE gateways (
    id          serial PRIMARY KEY,
    carrier_id  integer NOT NULL REFERENCES carriers(id) ON DELETE CASCADE,
    name        text NOT NULL UNIQUE,
    profile     text NOT NULL DEFAULT 'external',
    position    integer NOT NULL DEFAULT 0,
    leg_timeout integer NOT NULL DEFAULT 30 CHECK (leg_timeout > 0),
    enabled     boolean NOT NULL DEFAULT true
);
CREATE INDEX gateways_carrier_idx ON gateways (carrier_id, position);

-- One imported deck per carrier and start date; the live deck at time t is the one with
-- the greatest effective_from <= t, so a future deck can be loaded ahead of its start.
CREATE TABLE rate_decks (
    id             serial PRIMARY KEY,
    carrier_id     integer NOT NULL REFERENCES carriers(id) ON DELETE CASCADE,
    effective_from timestamptz NOT NULL DEFAULT '-infinity',
    imported_at    timestamptz NOT NULL DEFAULT now(),
    row_count      integer NOT NULL DEFAULT 0,
    source         text,
    UNIQUE (carrier_id, effective_from)
);

CREATE TABLE rates (
    deck_id              integer NOT NULL REFERENCES rate_decks(id) ON DELETE CASCADE,
    prefix               text NOT NULL CHECK (prefix ~ '^[0-9]{1,16}$'),
    rate_per_min         numeric(12,6) NOT NULL CHECK (rate_per_min >= 0),
    connect_fee          numeric(12,6) NOT NULL DEFAULT 0 CHECK (connect_fee >= 0),
    initial_increment    integer NOT NULL CHECK (initial_increment > 0),
    subsequent_increment integer NOT NULL CHECK (subsequent_increment > 0),
    effective_from       timestamptz,
    effective_to         timestamptz,
    description          text
);
-- Loading a deck reads it whole by deck_id; the SQL baseline (mod_lcr style) looks up
-- enumerated prefixes of a number within a deck.
CREATE INDEX rates_deck_prefix_idx ON rates (deck_id, prefix);

CREATE TABLE dids (
    id               serial PRIMARY KEY,
    number           text NOT NULL UNIQUE CHECK (number ~ '^\+[0-9]{4,16}$'),
    tenant_id        integer NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    destination_type text NOT NULL CHECK (destination_type IN ('extension', 'sip_uri', 'number')),
    destination      text NOT NULL
);

CREATE TABLE campaigns (
    id             serial PRIMARY KEY,
    tenant_id      integer NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name           text NOT NULL UNIQUE,
    max_concurrent integer CHECK (max_concurrent >= 0),
    cps_limit      numeric(10,3) CHECK (cps_limit > 0)
);

CREATE TABLE routing_decisions (
    id          uuid PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    call_uuid   text,
    tenant      text,
    direction   text NOT NULL,
    destination text,
    result      text NOT NULL CHECK (result IN ('routed', 'refused')),
    reason      text NOT NULL,
    sip_code    integer,
    candidates  jsonb NOT NULL DEFAULT '[]',
    chosen      jsonb NOT NULL DEFAULT '[]',
    elapsed_us  integer NOT NULL DEFAULT 0
);
CREATE INDEX routing_decisions_created_idx ON routing_decisions (created_at);
CREATE INDEX routing_decisions_call_idx ON routing_decisions (call_uuid);

-- The CDR: one row per call, keyed by the A-leg (or originated leg) UUID.
CREATE TABLE calls (
    call_uuid            text PRIMARY KEY,
    tenant               text,
    direction            text NOT NULL,
    route_id             uuid,
    caller               text,
    destination          text,
    started_at           timestamptz,
    answered_at          timestamptz,
    ended_at             timestamptz,
    hangup_cause         text,
    carrier              text,
    gateway              text,
    first_choice_carrier text,
    attempts             integer NOT NULL DEFAULT 0,
    billed_seconds       integer NOT NULL DEFAULT 0,
    cost                 numeric(18,6) NOT NULL DEFAULT 0,
    reconstructed        boolean NOT NULL DEFAULT false,
    recorded_at          timestamptz NOT NULL DEFAULT now()
);
-- report: costs by tenant / carrier / day
CREATE INDEX calls_tenant_ended_idx ON calls (tenant, ended_at);
CREATE INDEX calls_carrier_ended_idx ON calls (carrier, ended_at);

CREATE TABLE call_legs (
    leg_uuid       text PRIMARY KEY,
    call_uuid      text NOT NULL,
    direction      text NOT NULL,
    carrier        text,
    gateway        text,
    started_at     timestamptz,
    answered_at    timestamptz,
    ended_at       timestamptz,
    hangup_cause   text,
    sip_status     integer,
    billmsec       bigint NOT NULL DEFAULT 0,
    billed_seconds integer NOT NULL DEFAULT 0,
    rate_per_min   numeric(12,6),
    connect_fee    numeric(12,6),
    increments     text,
    cost           numeric(18,6) NOT NULL DEFAULT 0
);
CREATE INDEX call_legs_call_idx ON call_legs (call_uuid);

CREATE TABLE call_events (
    core_uuid text NOT NULL,
    event_seq bigint NOT NULL,
    call_uuid text,
    leg_uuid  text,
    name      text NOT NULL,
    at        timestamptz NOT NULL,
    data      jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (core_uuid, event_seq)
);
CREATE INDEX call_events_call_idx ON call_events (call_uuid);
