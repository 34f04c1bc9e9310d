"""Adapters to the world outside: FreeSWITCH's event socket (esl), the HTTP server (http),
PostgreSQL (db), the caps backends (caps: in-process or Redis), systemd notify and the
development Redis."""
