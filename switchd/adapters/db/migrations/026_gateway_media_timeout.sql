-- gateways.media_timeout: seconds without RTP from the carrier after which FreeSWITCH ends
-- the carrier leg (MEDIA_TIMEOUT), so a call whose carrier went silent is not carried and
-- billed until its max duration (docs/provisioning.md). 0 turns it off for that gateway.
ALTER TABLE gateways ADD COLUMN IF NOT EXISTS media_timeout integer NOT NULL DEFAULT 60
    CHECK (media_timeout BETWEEN 0 AND 86400);
