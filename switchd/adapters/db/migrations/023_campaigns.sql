-- Campaigns: contacts dialled at a pace, within calling hours, claimed atomically by the
-- daemons sharing this database (docs/campaigns.md). The campaigns table (001) already
-- carries the caps of a campaign (max_concurrent, cps_limit); this adds what the dialer needs.
ALTER TABLE campaigns
    ADD COLUMN state              text NOT NULL DEFAULT 'draft'
        CHECK (state IN ('draft', 'running', 'paused', 'stopped', 'completed')),
    ADD COLUMN state_reason       text,
    ADD COLUMN pace_cps           numeric(10,3) NOT NULL DEFAULT 1 CHECK (pace_cps > 0),
    ADD COLUMN caller_id          text,
    ADD COLUMN timeout_s          integer NOT NULL DEFAULT 30 CHECK (timeout_s BETWEEN 1 AND 300),
    ADD COLUMN hours_start        time,            -- NULL: no calling hours (any time)
    ADD COLUMN hours_end          time,
    ADD COLUMN hours_days         integer[] NOT NULL DEFAULT '{1,2,3,4,5,6,7}',   -- ISO weekdays
    ADD COLUMN default_timezone   text NOT NULL DEFAULT 'UTC',
    ADD COLUMN min_answer_rate    numeric(4,3) CHECK (min_answer_rate BETWEEN 0 AND 1),
    ADD COLUMN answer_rate_window integer NOT NULL DEFAULT 50 CHECK (answer_rate_window > 0),
    ADD COLUMN next_dial_at       timestamptz NOT NULL DEFAULT now(),   -- the shared pace
    ADD COLUMN event_seq          integer NOT NULL DEFAULT 0,
    ADD COLUMN created_at         timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN updated_at         timestamptz NOT NULL DEFAULT now();

CREATE TABLE campaign_contacts (
    id           bigserial PRIMARY KEY,
    campaign_id  integer NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    number       text NOT NULL,                  -- E.164 with +
    timezone     text NOT NULL,                  -- IANA zone(s), comma-separated
    data         jsonb NOT NULL DEFAULT '{}',    -- the other columns of the upload
    state        text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'dialing', 'live', 'done')),
    outcome      text,      -- answered busy no-answer failed refused dnc unknown
    detail       text,
    claimed_by   text,
    claimed_at   timestamptz,
    lease_until  timestamptz,
    sent_at      timestamptz,                    -- set just before the originate is sent
    call_uuid    text,
    hangup_cause text,
    attempts     integer NOT NULL DEFAULT 0,
    finished_at  timestamptz,
    UNIQUE (campaign_id, number)
);
CREATE INDEX campaign_contacts_pending ON campaign_contacts (campaign_id, state, id);
CREATE INDEX campaign_contacts_lease ON campaign_contacts (lease_until)
    WHERE state IN ('dialing', 'live');
CREATE INDEX campaign_contacts_call ON campaign_contacts (call_uuid) WHERE call_uuid IS NOT NULL;

CREATE TABLE dnc (
    tenant_id integer NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    number    text NOT NULL,                     -- E.164 with +
    note      text NOT NULL DEFAULT '',
    added_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, number)
);
