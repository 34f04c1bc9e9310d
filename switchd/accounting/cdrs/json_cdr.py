"""FreeSWITCH's mod_json_cdr record of one leg: bytes in, a typed `SwitchLeg` out (no I/O).

What FreeSWITCH 1.10.12 sends (captures in tests/fixtures/json_cdr/, source:
src/mod/event_handlers/mod_json_cdr/mod_json_cdr.c):

- `POST <url>?uuid=<leg uuid>`, User-Agent `freeswitch-json/1.0`, HTTP Basic auth when
  `cred` is set. Any 2xx is success; anything else (or no answer) is retried `retries`
  times, `delay` seconds apart, then the record is written to `err-log-dir` as
  `<uuid>.cdr.json` (`a_<uuid>.cdr.json` with prefix-a-leg).
- The body depends on `encode`: `false` → the JSON itself; `true` → `cdr=<url-encoded
  JSON>`; `base64` → `cdr=<base64 JSON>`. The error file holds the same text without
  `cdr=`. The Content-Type header cannot be trusted: with `disable-100-continue` the
  module replaces its header list and curl sends `application/x-www-form-urlencoded`
  for raw JSON (seen in the capture). So the format is recognised from the bytes.
- `encode-values` (default true) URL-encodes every variable value; we read values
  through `_var`, which decodes only when asked to (`encoded_values`).
- Times are in `variables`: `answer_uepoch`/`end_uepoch`/`start_uepoch` (µs, "0" when
  never), `billsec` = end_epoch − answer_epoch (whole seconds, so 2.34 s of talk can be
  billsec 3), `billmsec`. A B-leg's `call_uuid` is its own UUID; its A-leg is
  `originating_leg_uuid` (also `originator`).
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from urllib.parse import unquote, unquote_plus

from dialplan import validate
from dialplan.failover import leg_sip_status

MAX_CDR_BYTES = 1 << 20     # a real leg's CDR is ~10 KB
# A JSON \u0000 escape, not one whose backslash is itself escaped ("\\u0000" is text).
_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


class CdrFormatError(ValueError):
    """The bytes are not a mod_json_cdr record we can read; the message says why."""


@dataclass(frozen=True)
class SwitchLeg:
    uuid: str
    call_uuid: str                # the A-leg's UUID (this leg's own for an A-leg)
    is_a_leg: bool
    direction: str                # FreeSWITCH's: inbound (A from caller) / outbound
    core_uuid: str = ""
    start_us: int = 0
    answer_us: int = 0            # 0: never answered
    progress_us: int = 0          # first ringing or early media (0: none)
    end_us: int = 0
    billsec: int | None = None
    billmsec: int | None = None
    hangup_cause: str | None = None
    sip_status: int | None = None
    hangup_disposition: str | None = None   # sip_hangup_disposition (send_bye, recv_bye ...)
    gateway: str | None = None
    caller: str | None = None
    destination: str | None = None
    vars: dict[str, str] = field(default_factory=dict)   # the switchd_* variables


def decode_body(body: bytes) -> dict:
    """The JSON object of a POST body or an error-directory file, in any `encode` form."""
    if len(body) > MAX_CDR_BYTES:
        raise CdrFormatError(f"CDR of {len(body)} bytes is over the {MAX_CDR_BYTES} limit")
    text = body.strip()
    if text.startswith(b"cdr="):
        text = text[4:]
    if not text.startswith((b"{", b"[")):
        if text.startswith(b"%7B") or text.startswith(b"%7b"):
            text = unquote_plus(text.decode("ascii", "replace")).encode("utf-8")
        else:
            try:
                text = base64.b64decode(text, validate=False).rstrip(b"\0")
            except (binascii.Error, ValueError):
                raise CdrFormatError("body is neither JSON, cdr=<url-encoded JSON> nor "
                                     "cdr=<base64 JSON>") from None
    try:
        # FreeSWITCH copies a caller's bytes into the JSON as they came (a display name
        # that is not UTF-8 stays so): such a CDR is still the call's money, so the
        # stray bytes become U+FFFD instead of costing the record.
        # The same for a NUL (JSON's \u0000), which no PostgreSQL text column can hold.
        decoded = text.decode("utf-8", errors="replace")
        if "\\u0000" in decoded:
            # Searched for first: the regex is tried at every offset (its lookbehind), about
            # 0.1 ms a KB, where the substring search is C-fast and a NUL is rare.
            decoded = _NUL_ESCAPE.sub(r"\1\\ufffd", decoded)
        data = json.loads(decoded)
    except ValueError as exc:
        raise CdrFormatError(f"CDR is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("variables"), dict):
        raise CdrFormatError("CDR JSON has no \"variables\" object")
    return data


# What each integer variable may hold: what FreeSWITCH produces and the ledger's columns
# take (validate.SWITCH_INTS, as for ESL's headers). A value outside is refused here,
# naming the variable (400, FreeSWITCH keeps the record), instead of failing in
# PostgreSQL, which would say nothing useful and, when the value is a time, could not
# even tell an answered leg from an unanswered one.
_KINDS = {"sip_term_status": "sip_status", "billsec": "billsec", "billmsec": "billmsec",
          "start_uepoch": "uepoch", "answer_uepoch": "uepoch", "progress_uepoch": "uepoch",
          "progress_media_uepoch": "uepoch", "end_uepoch": "uepoch"}


def _int(v, name: str) -> int | None:
    try:
        return validate.switch_int(v, _KINDS[name])
    except validate.Invalid as exc:
        raise CdrFormatError(f"variable {name} {exc}") from None


def parse(body: bytes, encoded_values: bool = False) -> SwitchLeg:
    data = decode_body(body)
    raw = data["variables"]

    def var(name: str) -> str | None:
        v = raw.get(name)
        if v is None:
            return None
        v = str(v)
        return unquote(v) if encoded_values and "%" in v else v

    uuid = var("uuid")
    if not uuid:
        raise CdrFormatError("CDR has no variables.uuid")
    origin = var("originating_leg_uuid") or var("originator")
    is_a = not origin
    profile = _caller_profile(data)
    sip = leg_sip_status(_int(var("sip_term_status"), "sip_term_status"),
                         var("proto_specific_hangup_cause"))
    return SwitchLeg(
        # An originate attempt has no originator; switchd names its call in switchd_call_uuid.
        uuid=uuid, call_uuid=var("switchd_call_uuid") or (uuid if is_a else origin),
        is_a_leg=is_a,
        direction=var("direction") or _channel_direction(data)
        or ("inbound" if is_a else "outbound"),
        core_uuid=str(data.get("core-uuid") or ""),
        start_us=_int(var("start_uepoch"), "start_uepoch") or 0,
        answer_us=_int(var("answer_uepoch"), "answer_uepoch") or 0,
        progress_us=min([t for t in (_int(var("progress_uepoch"), "progress_uepoch") or 0,
                                     _int(var("progress_media_uepoch"), "progress_media_uepoch")
                                     or 0) if t] or [0]),
        end_us=_int(var("end_uepoch"), "end_uepoch") or 0,
        billsec=_int(var("billsec"), "billsec"),
        billmsec=_int(var("billmsec"), "billmsec"),
        hangup_cause=var("hangup_cause") or None,
        sip_status=sip,
        hangup_disposition=var("sip_hangup_disposition") or None,
        gateway=var("sip_gateway_name") or None,
        caller=profile.get("caller_id_number") or var("caller_id_number") or None,
        destination=profile.get("destination_number") or var("destination_number") or None,
        vars={k: var(k) for k in raw if k.startswith("switchd_") and var(k) is not None})


def _caller_profile(data: dict) -> dict:
    flow = data.get("callflow")
    if isinstance(flow, list):
        flow = flow[0] if flow else {}      # the current profile first, as ESL reports it
    if not isinstance(flow, dict):
        return {}
    profile = flow.get("caller_profile")
    return profile if isinstance(profile, dict) else {}


def _channel_direction(data: dict) -> str | None:
    channel = data.get("channel_data")
    return channel.get("direction") if isinstance(channel, dict) else None
