"""`POST /fs/cdr`: where FreeSWITCH's mod_json_cdr posts each leg's CDR.

200 only once the record is durable (CdrIngest.store: committed, or fsync'd to the spool);
anything else is not 2xx, so mod_json_cdr retries and finally writes its error directory
(`switchd cdr import` replays it). Answers fast: mod_json_cdr sets no HTTP timeout.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging

from switchd import metrics
from switchd.accounting.cdrs.json_cdr import MAX_CDR_BYTES, CdrFormatError
from switchd.adapters.db.spool import SpoolError

log = logging.getLogger(__name__)


def _reply(start_response, status: str, payload: dict):
    start_response(status, [("Content-Type", "application/json")])
    return [json.dumps(payload).encode() + b"\n"]


def _authorised(environ, credentials: str | None) -> bool:
    """mod_json_cdr's `cred` (user:password) with auth-scheme basic."""
    if not credentials:
        return True
    given = environ.get("HTTP_AUTHORIZATION", "")
    if not given.startswith("Basic "):
        return False
    try:
        decoded = base64.b64decode(given[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(decoded, credentials.encode("utf-8"))


def handle(environ, start_response, ingest, credentials: str | None):
    if environ.get("REQUEST_METHOD") != "POST":
        return _reply(start_response, "405 Method Not Allowed", {"error": "POST only"})
    if not _authorised(environ, credentials):
        metrics.SWITCH_CDRS.labels("unauthorized").inc()
        start_response("401 Unauthorized", [("Content-Type", "application/json"),
                                            ("WWW-Authenticate", 'Basic realm="switchd-cdr"')])
        return [b'{"error": "missing or wrong credentials (cdr.credentials)"}\n']
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = -1
    if not 0 < length <= MAX_CDR_BYTES:
        metrics.SWITCH_CDRS.labels("bad_request").inc()
        return _reply(start_response, "400 Bad Request",
                      {"error": f"Content-Length must be 1..{MAX_CDR_BYTES}"})
    body = environ["wsgi.input"].read(length)
    try:
        stored = ingest.store(body)
    except CdrFormatError as exc:
        metrics.SWITCH_CDRS.labels("bad_request").inc()
        log.error("switch CDR refused (uuid=%s): %s", _query_uuid(environ), exc)
        return _reply(start_response, "400 Bad Request", {"error": str(exc)})
    except SpoolError as exc:
        metrics.SWITCH_CDRS.labels("failed").inc()
        log.error("switch CDR %s: neither PostgreSQL nor the spool took it: %s",
                  _query_uuid(environ), exc)
        return _reply(start_response, "503 Service Unavailable", {"error": "not stored"})
    except Exception:   # request boundary: never a 200 for a record we did not keep
        metrics.SWITCH_CDRS.labels("failed").inc()
        log.exception("switch CDR %s: storing failed", _query_uuid(environ))
        return _reply(start_response, "500 Internal Server Error", {"error": "not stored"})
    return _reply(start_response, "200 OK", {"stored": stored.where, "leg_uuid": stored.leg_uuid,
                                            "call_uuid": stored.call_uuid})


def _query_uuid(environ) -> str:
    from urllib.parse import parse_qs
    return (parse_qs(environ.get("QUERY_STRING", "")).get("uuid") or ["-"])[0][:64]
