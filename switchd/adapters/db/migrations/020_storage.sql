-- storage: calls, call_legs and call_events partitioned by month (docs/storage.md
-- "Partitions and retention"). Converts the existing tables with their rows.
--
-- calls and call_legs are partitioned by filed_month (date, the first of a UTC month): the
-- month of the first record that named the call or leg. A unique key on a partitioned
-- table must hold the partition key, and the records of one call disagree on its times (a
-- B-leg's CDR knows the B-leg's start, not the A-leg's), so the month cannot be computed
-- from each record alone: the writer looks the key up and reuses the month it was filed
-- under (cdr_writer.write_batch, under an advisory lock). call_events are partitioned by
-- their own time `at`: an event's replay carries the same `at`.

CREATE FUNCTION switchd_month(ts timestamptz) RETURNS date
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT date_trunc('month', ts AT TIME ZONE 'UTC')::date $$;

-- Create the month's partition of each table if it is missing (named <table>_YYYY_MM).
-- Idempotent; called by the daemon ahead of time and by the writer on demand.
CREATE FUNCTION switchd_ensure_month(m date) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    lo   date := date_trunc('month', m)::date;
    hi   date := (date_trunc('month', m) + interval '1 month')::date;
    tbl  text;
    part text;
BEGIN
    FOREACH tbl IN ARRAY ARRAY['calls', 'call_legs', 'call_events'] LOOP
        part := tbl || '_' || to_char(lo, 'YYYY_MM');
        CONTINUE WHEN to_regclass(part) IS NOT NULL;
        BEGIN
            IF tbl = 'call_events' THEN
                EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                               part, tbl, to_char(lo, 'YYYY-MM-DD') || ' 00:00:00+00',
                               to_char(hi, 'YYYY-MM-DD') || ' 00:00:00+00');
            ELSE
                EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                               part, tbl, lo, hi);
            END IF;
        EXCEPTION WHEN duplicate_table OR unique_violation THEN
            NULL;   -- created meanwhile by another session
        END;
    END LOOP;
END $$;

-- --- calls ----------------------------------------------------------------------------------
ALTER TABLE calls RENAME TO calls_v1;
ALTER TABLE calls_v1 RENAME CONSTRAINT calls_pkey TO calls_v1_pkey;
DROP INDEX calls_tenant_ended_idx, calls_carrier_ended_idx, calls_open_money_idx;

-- filed_month's default serves direct SQL inserts (the writer always sets it): this month.
CREATE TABLE calls (LIKE calls_v1 INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
                    filed_month date NOT NULL DEFAULT switchd_month(now()))
    PARTITION BY RANGE (filed_month);
ALTER TABLE calls ADD CONSTRAINT calls_pkey PRIMARY KEY (call_uuid, filed_month);
-- reports: a tenant's or a carrier's calls over a period
CREATE INDEX calls_tenant_started_idx ON calls (tenant, started_at);
CREATE INDEX calls_carrier_started_idx ON calls (carrier, started_at);
CREATE INDEX calls_open_money_idx ON calls (ended_at) WHERE provisional OR unrated;

-- --- call_legs ------------------------------------------------------------------------------
ALTER TABLE call_legs RENAME TO call_legs_v1;
ALTER TABLE call_legs_v1 RENAME CONSTRAINT call_legs_pkey TO call_legs_v1_pkey;
DROP INDEX call_legs_call_idx;

CREATE TABLE call_legs (LIKE call_legs_v1 INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
                        filed_month date NOT NULL DEFAULT switchd_month(now()))
    PARTITION BY RANGE (filed_month);
ALTER TABLE call_legs ADD CONSTRAINT call_legs_pkey PRIMARY KEY (leg_uuid, filed_month);
CREATE INDEX call_legs_call_idx ON call_legs (call_uuid);
-- carrier reports (ASR, ACD, PDD) count legs
CREATE INDEX call_legs_carrier_started_idx ON call_legs (carrier, started_at);

-- --- call_events ----------------------------------------------------------------------------
-- What an event row keeps: its identity (core_uuid, event_seq: replays are idempotent),
-- name, time, leg and call (the call's timeline; PDD of legs stored without pdd_ms).
-- `data` is NULL for new rows: the cause, gateway, SIP status and billmsec it held are the
-- leg row's columns.
ALTER TABLE call_events RENAME TO call_events_v1;
ALTER TABLE call_events_v1 RENAME CONSTRAINT call_events_pkey TO call_events_v1_pkey;
DROP INDEX call_events_call_idx;

CREATE TABLE call_events (LIKE call_events_v1 INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (at);
ALTER TABLE call_events ALTER COLUMN data DROP NOT NULL;
ALTER TABLE call_events ADD CONSTRAINT call_events_pkey PRIMARY KEY (core_uuid, event_seq, at);
CREATE INDEX call_events_call_idx ON call_events (call_uuid);

-- --- the rows -------------------------------------------------------------------------------
SELECT switchd_ensure_month(m) FROM (
    SELECT switchd_month(COALESCE(started_at, ended_at, recorded_at)) FROM calls_v1
    UNION SELECT switchd_month(COALESCE(started_at, ended_at, now())) FROM call_legs_v1
    UNION SELECT switchd_month(at) FROM call_events_v1
    UNION SELECT switchd_month(now())
    UNION SELECT switchd_month(now() + interval '1 month')) AS months(m);

INSERT INTO calls
SELECT c.*, switchd_month(COALESCE(c.started_at, c.ended_at, c.recorded_at)) FROM calls_v1 c;
-- a call's legs go with it
INSERT INTO call_legs
SELECT l.*, COALESCE(c.filed_month, switchd_month(COALESCE(l.started_at, l.ended_at, now())))
FROM call_legs_v1 l LEFT JOIN calls c USING (call_uuid);
INSERT INTO call_events SELECT * FROM call_events_v1;

DROP TABLE calls_v1, call_legs_v1, call_events_v1;
