"""Failover by the carrier's answer: an operator-editable table (DESIGN §4, docs/routing.md).

Every carrier attempt is its own `bridge`; when it fails, FreeSWITCH asks switchd again
(the continuation lookup, switchd/routing/router.py) with the failed attempt's outcome in the
channel variables. This module turns that outcome into one of the table's keys and answers
two questions about it, without I/O:

- what next?  `next` (try the next carrier) or `stop` (the caller hears the code) — the
  operator's table, `[failover]` in the config, over DEFAULT_TABLE;
- whose failure was it?  `carrier` (health −5), `callee` (the callee's or caller's answer,
  health untouched) or `nobody` (the leg never reached the wire) — fixed by the key, not by
  the operator's action: letting a busy callee fail over must not start charging carriers
  for busy callees.

Keys, most specific first:
  `not_sent`     the INVITE never left: sofia's 900-range statuses (a From header it cannot
                 build, e.g. a caller ID with `${`), or a FreeSWITCH-side cause with no SIP
                 answer (DESTINATION_OUT_OF_ORDER, GATEWAY_DOWN, INVALID_GATEWAY, ...);
  `timeout`      the leg rang out at its `leg_timeout` (FreeSWITCH: ALLOTTED_TIMEOUT, or
                 NO_ANSWER; the 487 to our own CANCEL does not make it a caller cancel);
  `unreachable`  no SIP final answer at all from the carrier (RECOVERY_ON_TIMER_EXPIRE,
                 NETWORK_OUT_OF_ORDER, ... without a status);
  `403`          an exact final SIP status;
  `4xx`          the status's class (`4xx`, `5xx`, `6xx`);
  `other`        anything else.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from dialplan import causes

__all__ = ["DEFAULT_TABLE", "FailoverTable", "Verdict", "TableError", "parse_table",
           "attempt_key", "decide", "blame", "originate_fails_over", "parse_proto_cause",
           "caller_code", "cause_for_code", "NAMED_CONDITIONS", "route_to_repeat",
           "leg_sip_status"]

NEXT, STOP = "next", "stop"
CARRIER, CALLEE, NOBODY, SUCCESS = "carrier", "callee", "nobody", "success"

NAMED_CONDITIONS = ("not_sent", "timeout", "unreachable", "other")

DEFAULT_TABLE: dict[str, str] = {
    # carrier-side failures: the next carrier may well succeed
    "5xx": NEXT, "408": NEXT, "timeout": NEXT, "unreachable": NEXT,
    # a carrier's redirect: never followed (outbound_redirect_fatal on every carrier leg),
    # so the carrier did not carry the call
    "3xx": NEXT,
    "401": NEXT, "402": NEXT, "403": NEXT, "407": NEXT, "480": NEXT, "4xx": NEXT,
    # nobody's failure: the next carrier gets a clean try
    "not_sent": NEXT,
    # the callee's answer, a number error, the caller's cancel: ringing the callee again
    # through another carrier would be wrong (DESIGN §11: one SBC rang people twice)
    "486": STOP, "600": STOP, "603": STOP, "404": STOP, "484": STOP, "487": STOP,
    "410": STOP, "604": STOP, "6xx": STOP,
    "other": NEXT,
}

# Whose failure a key is. Codes not listed take their class's; a class key its own row.
_CALLEE_CODES = frozenset({404, 410, 484, 486, 487, 600, 603, 604})
_BLAME_OF_NAMED = {"not_sent": NOBODY, "timeout": CALLEE, "unreachable": CARRIER,
                   "other": CARRIER}

# FreeSWITCH causes that mean the INVITE was never sent by us (no SIP status to read).
NOT_SENT_CAUSES = frozenset({
    "DESTINATION_OUT_OF_ORDER",   # sofia could not build the request / sessions-per-second
    "GATEWAY_DOWN", "INVALID_GATEWAY", "INVALID_PROFILE", "CHAN_NOT_IMPLEMENTED",
    "SWITCH_CONGESTION", "INVALID_URL", "MANDATORY_IE_MISSING",
})
# The leg rang out at leg_timeout (verified: ALLOTTED_TIMEOUT on FreeSWITCH 1.10.12).
TIMEOUT_CAUSES = frozenset({"ALLOTTED_TIMEOUT", "NO_ANSWER", "PROGRESS_TIMEOUT"})
# Ended by someone other than the carrier or callee: never the carrier's failure.
# (Only without a SIP status: with one, the status decides.) NORMAL_CIRCUIT_CONGESTION
# without a status is switchd's own uuid_kill of a leg to a carrier at its channel cap
# (daemon.py, CapsGate.on_refused_leg), not the carrier's doing.
_NOT_THE_CARRIER = {"ORIGINATOR_CANCEL": CALLEE, "LOSE_RACE": CALLEE, "PICKED_OFF": CALLEE,
                    "MANAGER_REQUEST": NOBODY, "SYSTEM_SHUTDOWN": NOBODY, "CRASH": NOBODY,
                    "NORMAL_CIRCUIT_CONGESTION": NOBODY}

_KEY = re.compile(r"[1-6][0-9][0-9]|[1-6]xx")


class TableError(ValueError):
    """One line naming the key: `failover.49x: not a SIP code, class or condition`."""


@dataclass(frozen=True)
class Verdict:
    key: str          # the table key that matched ('403', '5xx', 'timeout', ...)
    action: str       # 'next' | 'stop'
    blame: str        # 'carrier' | 'callee' | 'nobody'
    sip_code: int | None   # the carrier's final status, when it gave one


class FailoverTable:
    """DEFAULT_TABLE with the operator's rows over it (validated by parse_table)."""

    def __init__(self, overrides: Mapping[str, str] | None = None):
        rows = dict(DEFAULT_TABLE)
        rows.update(overrides or {})
        self.rows: dict[str, str] = rows
        self.overrides: dict[str, str] = dict(overrides or {})

    def action(self, key: str) -> str:
        return self.rows.get(key) or self.rows.get("other") or NEXT

    def __eq__(self, other):
        return isinstance(other, FailoverTable) and other.rows == self.rows

    def __repr__(self):
        return f"FailoverTable({self.overrides!r})"


def parse_table(raw: Mapping) -> FailoverTable:
    """The `[failover]` config section → FailoverTable; TableError names the bad key."""
    if not isinstance(raw, Mapping):
        raise TableError("failover: must be a table of `key = \"next\"|\"stop\"`")
    overrides = {}
    for key, value in raw.items():
        text = str(key).strip().lower()
        if not (_KEY.fullmatch(text) or text in NAMED_CONDITIONS):
            raise TableError(f"failover.{key}: not a SIP code (403), class (5xx) or condition "
                             f"({', '.join(NAMED_CONDITIONS)})")
        if text[0] in "12":
            raise TableError(f"failover.{key}: only final failure codes (3xx-6xx) can be listed")
        if not isinstance(value, str) or value.strip().lower() not in (NEXT, STOP):
            raise TableError(f"failover.{key}: {value!r} is not \"next\" or \"stop\"")
        overrides[text] = value.strip().lower()
    return FailoverTable(overrides)


def parse_proto_cause(text: str | None) -> int | None:
    """`sip:403` (FreeSWITCH's last_bridge_proto_specific_hangup_cause) → 403."""
    if not text:
        return None
    proto, _, code = text.strip().partition(":")
    if proto.lower() != "sip" or not code.isdigit() or len(code) != 3:
        return None
    return int(code)


def leg_sip_status(term_status: int | None, proto_cause: str | None) -> int | None:
    """A finished leg's SIP final status: FreeSWITCH's sip_term_status, or, without one, the
    3xx of its proto_specific_hangup_cause. A redirect the leg refused
    (outbound_redirect_fatal) ends REQUESTED_CHAN_UNAVAIL with `sip:302` there and no
    sip_term_status (FreeSWITCH 1.10.12); other statuses come with sip_term_status."""
    if term_status is not None:
        return term_status
    code = parse_proto_cause(proto_cause)
    return code if code is not None and 300 <= code <= 399 else None


def _status(sip_status) -> int | None:
    if isinstance(sip_status, bool) or not isinstance(sip_status, int):
        return None
    return sip_status if 300 <= sip_status <= 999 else None


def attempt_key(hangup_cause: str | None, sip_status: int | None) -> tuple[str, ...]:
    """The keys an unanswered attempt matches, most specific first."""
    cause = (hangup_cause or "").strip().upper()
    status = _status(sip_status)
    if status is not None and status >= 900:
        return ("not_sent",)          # sofia's own "could not send" statuses
    if cause in TIMEOUT_CAUSES:
        return ("timeout",)           # may carry 487: the answer to our CANCEL
    if status is None:
        if cause in NOT_SENT_CAUSES:
            return ("not_sent",)
        if cause in _NOT_THE_CARRIER:
            return ("other",)
        return ("unreachable",)
    return (str(status), f"{status // 100}xx", "other")


def _blame_of(keys: tuple[str, ...], cause: str) -> str:
    first = keys[0]
    if first in _BLAME_OF_NAMED:
        if first == "other":
            return _NOT_THE_CARRIER.get(cause, CARRIER)
        return _BLAME_OF_NAMED[first]
    code = int(first)
    if code in _CALLEE_CODES or code >= 600:
        return CALLEE
    return CARRIER


def decide(table: FailoverTable, hangup_cause: str | None, sip_status: int | None) -> Verdict:
    """What to do after an unanswered attempt, and whose failure it was."""
    keys = attempt_key(hangup_cause, sip_status)
    key = next((k for k in keys if k in table.rows), "other")
    cause = (hangup_cause or "").strip().upper()
    return Verdict(key=key, action=table.action(key), blame=_blame_of(keys, cause),
                   sip_code=_status(sip_status) if keys[0] not in ("not_sent",) else None)


def originate_fails_over(table: FailoverTable, hangup_cause: str | None,
                         sip_status: int | None) -> bool:
    """Should an originated call's attempt that ended unanswered like this go on to the next
    carrier? The operator's own `[failover]` rows decide where one matches (a `"403" =
    "stop"` stops originated calls as it stops routed ones). Elsewhere the originate's
    defaults, causes.should_failover, which differ from DEFAULT_TABLE where an originate
    knows less or more than a bridge: a ring-out ends the attempt (originate_timeout is
    the callee's whole ringing time, not one carrier's `leg_timeout`), and an attempt
    whose hangup event never came (no SIP status) is judged by its cause alone, so a
    USER_BUSY is not taken for an unreachable carrier."""
    verdict = decide(table, hangup_cause, sip_status)
    if verdict.key in table.overrides:
        return verdict.action == NEXT
    return causes.should_failover(hangup_cause, sip_status)


def route_to_repeat(tried: list[str], placed_again: list[str], hangup_cause: str | None,
                    sip_status: int | None) -> str | None:
    """The route to place once more before any other: the last one tried, when our own
    switch failed its leg (causes.switch_refused: its sessions-per-second throttle,
    max-sessions, RTP ports; every carrier would meet that alike) and it has not been
    placed again already. None: carry on down the ranking."""
    if tried and tried[-1] not in placed_again \
            and causes.switch_refused(hangup_cause, sip_status):
        return tried[-1]
    return None


# Answered carrier legs the switch ended because the carrier failed after its answer (its
# RTP stopped: the gateway's media_timeout): the carrier's failure, though nothing fails
# over, since the caller was answered.
ANSWERED_CARRIER_FAILURES = frozenset({"MEDIA_TIMEOUT"})


def failed_after_answer(hangup_cause: str | None) -> bool:
    """Whether an answered carrier leg ended by the carrier's failure."""
    return (hangup_cause or "").strip().upper() in ANSWERED_CARRIER_FAILURES


def blame(hangup_cause: str | None, sip_status: int | None, answered: bool) -> str:
    """Whose outcome a finished carrier leg was: 'success' | 'carrier' | 'callee' | 'nobody'.
    Health moves only on 'success' (+2) and 'carrier' (−5). An answered leg is the
    carrier's success, told at its answer (no cause yet), and its failure too if it then
    ends with one of ANSWERED_CARRIER_FAILURES."""
    if answered:
        return CARRIER if failed_after_answer(hangup_cause) else SUCCESS
    return _blame_of(attempt_key(hangup_cause, sip_status),
                     (hangup_cause or "").strip().upper())


_CAUSE_OF_CODE = {401: "CALL_REJECTED", 402: "CALL_REJECTED", 403: "CALL_REJECTED",
                  404: "UNALLOCATED_NUMBER", 407: "CALL_REJECTED", 408: "RECOVERY_ON_TIMER_EXPIRE",
                  410: "NUMBER_CHANGED", 480: "NO_USER_RESPONSE", 484: "INVALID_NUMBER_FORMAT",
                  486: "USER_BUSY", 487: "ORIGINATOR_CANCEL", 600: "USER_BUSY",
                  603: "CALL_REJECTED", 604: "UNALLOCATED_NUMBER"}


def cause_for_code(code: int) -> str:
    """The hangup cause recorded with the code the caller hears (what sofia itself maps
    that response to); never ALLOTTED_TIMEOUT, which reads as our max-duration cut."""
    if code in _CAUSE_OF_CODE:
        return _CAUSE_OF_CODE[code]
    return "NORMAL_TEMPORARY_FAILURE" if code >= 500 and code < 600 else "NORMAL_UNSPECIFIED"


def caller_code(verdict: Verdict) -> int:
    """The SIP code the caller hears when switchd stops (or runs out of carriers)."""
    if verdict.key == "timeout":
        return 480                    # nobody answered (a 487 here answered our CANCEL)
    if verdict.sip_code is not None and 400 <= verdict.sip_code <= 699:
        return verdict.sip_code
    return 503                        # no carrier could carry it
