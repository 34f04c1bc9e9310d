-- Spend guard alerts (switchd/accounting/spend_watch.py, docs/reports.md): one row per
-- tenant, kind and period. The daemon that inserts the row first is the one that alerts,
-- so each alert fires once per period across restarts and several daemons.
CREATE TABLE spend_alerts (
    tenant       text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('spike', 'forecast')),
    period_start timestamptz NOT NULL,             -- the hour (spike) or month (forecast)
    value        numeric(18,6) NOT NULL,           -- this hour's spend, or the forecast
    threshold    numeric(18,6) NOT NULL,           -- what it was compared with
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, kind, period_start)
);
