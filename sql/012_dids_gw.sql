-- dids-gw: the sofia profile a SIP-URI DID is sent through (NULL: routing.sip_uri_profile,
-- else the profile the call arrived on), and per-leg progress time for PDD.
ALTER TABLE dids ADD COLUMN IF NOT EXISTS profile text
    CHECK (profile IS NULL OR profile ~ '^[A-Za-z0-9_.-]+$');
ALTER TABLE call_legs ADD COLUMN IF NOT EXISTS progress_at timestamptz;
ALTER TABLE call_legs ADD COLUMN IF NOT EXISTS pdd_ms integer;
ALTER TABLE calls ADD COLUMN IF NOT EXISTS pdd_ms integer;
