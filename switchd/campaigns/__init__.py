"""Campaigns (docs/campaigns.md): `spec` checks what a client sends, `store` keeps campaigns,
contacts and the do-not-call list in PostgreSQL and claims contacts atomically, `dialer` is
the daemon's greenlet that dials them through the originator."""
