-- call_legs: the period queries' index instead of (carrier, started_at) (docs/storage.md
-- "Partitions"). The carrier report, the savings report and `switchd rerate --carrier`
-- select legs by when they ended (`ended_at` within the period), which the
-- (carrier, started_at) btree cannot narrow: PostgreSQL read every month of a carrier's
-- legs, or all of them. Rows reach a partition in about the order their calls end, so a
-- BRIN index on ended_at (a summary per 128 pages) takes such a query to the pages of its
-- period, and costs the CDR writer next to nothing per row, where each btree entry was
-- about a tenth of a leg row's insert under the writer's lock. autosummarize: a page range
-- is summarised as soon as it fills, not at the next VACUUM.
DROP INDEX call_legs_carrier_started_idx;
CREATE INDEX call_legs_ended_brin_idx ON call_legs USING brin (ended_at)
    WITH (autosummarize = on);
