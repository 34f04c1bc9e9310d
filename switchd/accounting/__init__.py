"""Accounting: rating legs into costs (billing) and FreeSWITCH's own CDRs as the record of
truth (cdrs: the JSON parser, the ingest endpoint, the error-directory importer)."""
