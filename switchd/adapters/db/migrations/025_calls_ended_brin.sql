-- calls: an index for the queries that select calls by when they ended (docs/storage.md
-- "Partitions"): the tenant and day reports (`ended_at` within the period) and the spend
-- watch, which every interval sums the calls that ended since the hour began. No index
-- of `calls` led with ended_at, so each of them read every month of calls. Rows reach a
-- partition in about the order their calls end, so a BRIN index (a summary per 128
-- pages) takes such a query to its period's pages for next to nothing per CDR written.
-- autosummarize: a page range is summarised as soon as it fills, not at the next VACUUM.
CREATE INDEX calls_ended_brin_idx ON calls USING brin (ended_at) WITH (autosummarize = on);
