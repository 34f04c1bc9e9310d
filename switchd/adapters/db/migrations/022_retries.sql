-- Originate retries (docs/originate.md): the tenant's retry table, every attempt of an
-- originated call (pending retries included, so they survive a restart), and the count of
-- attempts per number per day behind the daily cap.

-- The tenant's overrides of the retry table (dialplan/retry.py parse_policy); NULL: defaults.
ALTER TABLE tenants ADD COLUMN retry jsonb;

-- One row per attempt of an originated call. call_uuid is the call's id as POST /v1/calls
-- answered it (the first attempt's call UUID); each attempt is a switch call of its own
-- (attempt_call_uuid, its CDR in `calls`). A scheduled retry is a 'pending' row; a daemon
-- claims it (FOR UPDATE SKIP LOCKED) by moving it to 'running' in the same transaction, so
-- two daemons never both place it.
CREATE TABLE originate_attempts (
    call_uuid         uuid NOT NULL,
    attempt           integer NOT NULL CHECK (attempt >= 1),
    tenant            text NOT NULL,
    destination       text NOT NULL,                 -- E.164 (as dialled before it is placed)
    campaign          text,
    attempt_call_uuid uuid,                          -- NULL until placed
    state             text NOT NULL CHECK (state IN ('pending', 'running', 'done')),
    scheduled_at      timestamptz NOT NULL,
    started_at        timestamptz,
    ended_at          timestamptz,                   -- when the outcome was known
    outcome           text,                          -- dialplan/retry.py OUTCOMES, or refused, capped, interrupted
    cause             text,                          -- hangup cause (or the refusal)
    sip_status        integer,
    carrier           text,
    gateway           text,
    carriers_tried    integer,
    final             boolean NOT NULL DEFAULT false, -- no attempt follows this one
    note              text,                          -- why final, or why not placed
    request           jsonb NOT NULL,                -- the request, to place a retry
    claimed_by        text,                          -- the daemon that placed it
    PRIMARY KEY (call_uuid, attempt)
);
CREATE INDEX originate_attempts_due ON originate_attempts (scheduled_at) WHERE state = 'pending';
CREATE INDEX originate_attempts_running ON originate_attempts (started_at) WHERE state = 'running';
CREATE INDEX originate_attempts_by_attempt_call ON originate_attempts (attempt_call_uuid);

-- Attempts placed per (tenant, number, UTC day): the daily cap, across restarts and daemons.
CREATE TABLE originate_daily (
    tenant   text NOT NULL,
    number   text NOT NULL,
    day      date NOT NULL,
    attempts integer NOT NULL,
    PRIMARY KEY (tenant, number, day)
);
