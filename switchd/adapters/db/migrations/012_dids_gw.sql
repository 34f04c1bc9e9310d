-- dids-gw: the sofia profile a SIP-URI DID is sent through (NULL: routing.sip_uri_profile,
-- else the profile the call arrived on); per-leg progress time and PDD; and what a leg's
-- end meant (dialplan/causes.py `disposition`: a ring-out at leg_timeout and our own
-- max-duration cut both arrive as ALLOTTED_TIMEOUT).
ALTER TABLE dids ADD COLUMN IF NOT EXISTS profile text
    CHECK (profile IS NULL OR profile ~ '^[A-Za-z0-9_.-]+$');
ALTER TABLE call_legs ADD COLUMN IF NOT EXISTS progress_at timestamptz;
ALTER TABLE call_legs ADD COLUMN IF NOT EXISTS pdd_ms integer;
ALTER TABLE call_legs ADD COLUMN IF NOT EXISTS disposition text;
ALTER TABLE calls ADD COLUMN IF NOT EXISTS pdd_ms integer;
ALTER TABLE calls ADD COLUMN IF NOT EXISTS disposition text;
