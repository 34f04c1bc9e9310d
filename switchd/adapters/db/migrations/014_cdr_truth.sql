-- cdr-truth: FreeSWITCH's own CDR (mod_json_cdr) settles the money; ESL's view is
-- provisional until it does. See docs/storage.md "The switch's CDR" and docs/rates.md.

-- Where a leg row came from: 'esl' (rated from the hangup event, or closed without one)
-- or 'switch' (FreeSWITCH's CDR posted to /fs/cdr or imported from its error directory).
-- A 'switch' row is never overwritten by an 'esl' one (cdr_writer's superseding rank).
ALTER TABLE call_legs
    ADD COLUMN billsec     integer,                          -- FreeSWITCH's billsec
    ADD COLUMN cdr_source  text NOT NULL DEFAULT 'esl' CHECK (cdr_source IN ('esl', 'switch')),
    ADD COLUMN provisional boolean NOT NULL DEFAULT false,   -- closed without its hangup
    ADD COLUMN unrated     boolean NOT NULL DEFAULT false,   -- answered, no tariff: cost NULL
    ALTER COLUMN cost DROP NOT NULL,
    ALTER COLUMN cost DROP DEFAULT;

-- The call's money and these flags are recomputed from its legs on every write
-- (cdr_writer.RECOMPUTE_CALLS), so deliveries in any order give the same row.
ALTER TABLE calls
    ADD COLUMN cdr_source  text NOT NULL DEFAULT 'esl' CHECK (cdr_source IN ('esl', 'switch')),
    ADD COLUMN provisional boolean NOT NULL DEFAULT false,
    ADD COLUMN unrated     boolean NOT NULL DEFAULT false;
CREATE INDEX calls_open_money_idx ON calls (ended_at) WHERE provisional OR unrated;

-- A carrier agreement may bill every started second (ceil(billmsec/1000)) instead of
-- FreeSWITCH's billsec.
ALTER TABLE carriers
    ADD COLUMN billing_rounding text NOT NULL DEFAULT 'billsec'
        CHECK (billing_rounding IN ('billsec', 'ceil_ms'));
