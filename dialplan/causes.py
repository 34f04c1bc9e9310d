"""Whose fault was the end of a leg? (DESIGN §3 step 4, §11)

Carrier health must move only with what the carrier did: a busy or unanswered callee is
not a carrier failure, and FreeSWITCH's own sessions-per-second throttle
(DESTINATION_OUT_OF_ORDER) is ours, not theirs. Failover follows the same table: 486 busy
and 603 decline are the callee's answer, and trying the next carrier would ring them twice.

The rules are data (CAUSE_RULES, SIP_RULES) so docs/routing.md can show them and a test
walks every row. Routing failover and carrier health follow dialplan/failover.py (the
operator's table; switchd asks after every attempt, so a 403 and a 603 are told apart);
what is left here serves originate's `|` dial string, where FreeSWITCH sees only the cause
(`fail_on_single_reject`), and reports. Precedence, for an unanswered leg:
  1. causes marked `authoritative` (our own switch, the caller's cancel, our ring timeout);
  2. the SIP final status (variable_sip_term_status), when there is one: it is more precise
     than the cause, which FreeSWITCH derives from it lossily (401/402/403/407/603 all
     become CALL_REJECTED);
  3. the hangup cause;
  4. anything else: CARRIER_FAILURE with failover, like FreeSWITCH's own `|` handling.
An answered leg is SUCCESS whatever its cause (ALLOTTED_TIMEOUT included).
"""
from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

__all__ = ["Outcome", "Rule", "CAUSE_RULES", "SIP_RULES", "classify", "should_failover",
           "rule_for", "no_failover_causes", "FREESWITCH_CAUSES", "disposition",
           "switch_refused", "SWITCH_REFUSED_PAUSE_MS", "call_disposition"]


class Outcome(str, enum.Enum):
    SUCCESS = "success"                  # answered
    CARRIER_FAILURE = "carrier_failure"  # the carrier's fault: health −5, fail over
    CALLEE = "callee"                    # the callee's (or caller's) answer: health untouched
    LOCAL = "local"                      # our own switch: health untouched


@dataclass(frozen=True)
class Rule:
    outcome: Outcome
    failover: bool              # try the next gateway/carrier after this?
    authoritative: bool = False  # wins over the SIP status
    why: str = ""


C, E, L = Outcome.CARRIER_FAILURE, Outcome.CALLEE, Outcome.LOCAL

CAUSE_RULES: dict[str, Rule] = {
    # --- the carrier failed to deliver ---------------------------------------------------
    "NORMAL_TEMPORARY_FAILURE": Rule(C, True, why="SIP 400/481/500/503, or ICMP unreachable"),
    "NETWORK_OUT_OF_ORDER": Rule(C, True, why="SIP 502"),
    "RECOVERY_ON_TIMER_EXPIRE": Rule(C, True, why="SIP 408/504 or no answer to INVITE"),
    "GATEWAY_DOWN": Rule(C, True, why="sofia marked the gateway down"),
    "NORMAL_CIRCUIT_CONGESTION": Rule(C, True, why="carrier out of circuits"),
    "REQUESTED_CHAN_UNAVAIL": Rule(C, True, why="carrier out of channels"),
    "SERVICE_UNAVAILABLE": Rule(C, True, why="SIP 405"),
    "SERVICE_NOT_IMPLEMENTED": Rule(C, True, why="SIP 406/415/501"),
    "FACILITY_REJECTED": Rule(C, True, why="carrier refused a facility"),
    "INTERWORKING": Rule(C, True, why="SIP 413/414/416/420/421/423/505/513"),
    "EXCHANGE_ROUTING_ERROR": Rule(C, True, why="SIP 482/483 (loop, too many hops)"),
    "INCOMPATIBLE_DESTINATION": Rule(C, True, why="SIP 488/606: codec mismatch"),
    "BEARERCAPABILITY_NOTAVAIL": Rule(C, True, why="carrier cannot carry the media"),
    "NO_ROUTE_TRANSIT_NET": Rule(C, True, why="carrier has no route"),
    "NO_ROUTE_DESTINATION": Rule(C, True, why="carrier has no route (SIP 485)"),
    "OUTGOING_CALL_BARRED": Rule(C, True, why="carrier barred the call"),
    "MEDIA_TIMEOUT": Rule(C, True, why="no RTP from the carrier before answer"),
    "NORMAL_UNSPECIFIED": Rule(C, True, why="unmapped SIP status"),
    # --- the callee (or the caller) answered the question --------------------------------
    "USER_BUSY": Rule(E, False, why="SIP 486/600: busy"),
    "CALL_REJECTED": Rule(E, False, why="SIP 603 decline (FreeSWITCH also maps 401-407 here)"),
    "NO_ANSWER": Rule(E, False, authoritative=True, why="rang out: leg_timeout/originate_timeout"),
    # Only unanswered legs reach this table, and our max-duration cut needs an answer: an
    # unanswered ALLOTTED_TIMEOUT is FreeSWITCH 1.10's ring-out at leg_timeout.
    "ALLOTTED_TIMEOUT": Rule(E, False, authoritative=True, why="rang out at leg_timeout"),
    "NO_USER_RESPONSE": Rule(E, False, why="SIP 480: callee unavailable"),
    "SUBSCRIBER_ABSENT": Rule(E, False, why="callee unreachable (mobile off)"),
    "UNALLOCATED_NUMBER": Rule(E, False, why="SIP 404: number does not exist"),
    "NUMBER_CHANGED": Rule(E, False, why="SIP 410"),
    "INVALID_NUMBER_FORMAT": Rule(E, False, why="SIP 484"),
    "USER_NOT_REGISTERED": Rule(E, False, why="callee not registered"),
    "NORMAL_CLEARING": Rule(E, False, why="cleared before answer by the far end"),
    "ORIGINATOR_CANCEL": Rule(E, False, authoritative=True, why="the caller hung up first"),
    "LOSE_RACE": Rule(E, False, authoritative=True, why="another leg answered"),
    "PICKED_OFF": Rule(E, False, authoritative=True, why="call picked up elsewhere"),
    # --- our own switch --------------------------------------------------------------------
    "DESTINATION_OUT_OF_ORDER": Rule(L, True, authoritative=True,
                                     why="FreeSWITCH sessions-per-second throttle / media port"),
    "SWITCH_CONGESTION": Rule(L, True, authoritative=True, why="FreeSWITCH max-sessions"),
    "CHAN_NOT_IMPLEMENTED": Rule(L, True, authoritative=True, why="bad endpoint in dial string"),
    "INVALID_GATEWAY": Rule(L, True, authoritative=True, why="gateway not configured in sofia"),
    "INVALID_PROFILE": Rule(L, True, authoritative=True, why="sofia profile missing"),
    "MANAGER_REQUEST": Rule(L, False, authoritative=True, why="uuid_kill / API hangup"),
    "SYSTEM_SHUTDOWN": Rule(L, False, authoritative=True, why="FreeSWITCH shutting down"),
    "CRASH": Rule(L, False, authoritative=True, why="FreeSWITCH crash"),
}

# Final SIP status of the carrier leg → rule. Precise where the cause is lossy.
SIP_RULES: dict[int, Rule] = {
    486: Rule(E, False, why="Busy Here"),
    600: Rule(E, False, why="Busy Everywhere"),
    603: Rule(E, False, why="Decline"),
    404: Rule(E, False, why="Not Found"),
    604: Rule(E, False, why="Does Not Exist Anywhere"),
    410: Rule(E, False, why="Gone"),
    484: Rule(E, False, why="Address Incomplete"),
    480: Rule(C, True, why="Temporarily Unavailable: carrier-side (DESIGN §4)"),
    487: Rule(E, False, why="Request Terminated (cancelled)"),
    401: Rule(C, True, why="carrier wants auth: our trunk config"),
    402: Rule(C, True, why="carrier wants payment"),
    403: Rule(C, True, why="carrier forbids (IP/credit/route)"),
    407: Rule(C, True, why="carrier wants proxy auth"),
    408: Rule(C, True, why="Request Timeout"),
    500: Rule(C, True, why="Server Internal Error"),
    502: Rule(C, True, why="Bad Gateway"),
    503: Rule(C, True, why="Service Unavailable (also sofia's code for ICMP failure)"),
    504: Rule(C, True, why="Server Time-out"),
}

_DEFAULT = Rule(C, True, why="unknown: treated like FreeSWITCH's own failover")
_SUCCESS = Rule(Outcome.SUCCESS, False, why="answered")


def _norm(cause: str | None) -> str:
    return (cause or "").strip().upper()


def rule_for(hangup_cause: str | None, sip_status: int | None, answered: bool) -> Rule:
    """The rule that decides this leg's outcome, by the precedence in the module doc."""
    if answered:
        return _SUCCESS
    cause = _norm(hangup_cause)
    by_cause = CAUSE_RULES.get(cause)
    if by_cause is not None and by_cause.authoritative:
        return by_cause
    if isinstance(sip_status, int) and not isinstance(sip_status, bool) and sip_status >= 300:
        by_sip = SIP_RULES.get(sip_status)
        if by_sip is not None:
            return by_sip
        if by_cause is None:
            # Unlisted final codes: 5xx/other 4xx are the carrier's; 6xx the callee's.
            return Rule(E, False, why="6xx: global failure") if sip_status >= 600 else _DEFAULT
    return by_cause if by_cause is not None else _DEFAULT


def classify(hangup_cause: str | None, sip_status: int | None, answered: bool) -> Outcome:
    """Outcome of one carrier leg, for health and reporting."""
    return rule_for(hangup_cause, sip_status, answered).outcome


def should_failover(hangup_cause: str | None, sip_status: int | None = None) -> bool:
    """Should the next route be tried after an unanswered leg ended like this?"""
    return rule_for(hangup_cause, sip_status, answered=False).failover


def switch_refused(hangup_cause: str | None, sip_status: int | None) -> bool:
    """Did our own switch fail the leg before any SIP answer? DESTINATION_OUT_OF_ORDER
    without a status: switch_core_session_request_uuid refusing a session over the
    sessions-per-second throttle ("Throttle Error!") or max-sessions ("Over Session
    Limit!"), or sofia finding no free RTP port or failing to build the INVITE. The
    commonest are congestion of the moment, which every carrier would have met alike."""
    return _norm(hangup_cause) == "DESTINATION_OUT_OF_ORDER" and sip_status is None


# How long a leg our own switch failed waits before it is placed once more on the same
# carrier (originate and the dialplan continuation alike): FreeSWITCH refills its
# sessions-per-second budget every second.
SWITCH_REFUSED_PAUSE_MS = 1000


_RING_OUT = frozenset({"NO_ANSWER", "ALLOTTED_TIMEOUT", "PROGRESS_TIMEOUT"})
# Answered legs the switch cut, by cause: the rest of the answered ones are 'answered'.
_ANSWERED_CUT = {"ALLOTTED_TIMEOUT": "max_duration", "MEDIA_TIMEOUT": "media_timeout"}


def disposition(hangup_cause: str | None, sip_status: int | None, answered: bool) -> str:
    """What a leg's end meant, for the CDR: 'max_duration' (answered, cut by our
    sched_hangup or watchdog: ALLOTTED_TIMEOUT), 'media_timeout' (answered, cut by
    FreeSWITCH when the carrier's RTP stopped), 'answered', 'no_answer' (rang out: at
    leg_timeout FreeSWITCH says ALLOTTED_TIMEOUT too, or NO_ANSWER), 'cancelled' (the caller
    hung up first), 'callee' (busy, declined, unknown number ...), 'carrier_failure' or
    'local' (our own switch), by the same rules as health and failover."""
    cause = _norm(hangup_cause)
    if answered:
        return _ANSWERED_CUT.get(cause, "answered")
    if cause in _RING_OUT:
        return "no_answer"
    if cause in ("ORIGINATOR_CANCEL", "LOSE_RACE"):
        return "cancelled"
    return rule_for(hangup_cause, sip_status, False).outcome.value.replace("success", "answered")


def call_disposition(carrier_leg: str | None, tried: bool, caller_cause: str | None) -> str | None:
    """A call's disposition, for its CDR: that of the carrier leg that carried (or last
    tried) it. A call no carrier was dialled for has none, unless its caller gave up first
    (its own leg ended ORIGINATOR_CANCEL: a CANCEL while switchd routed it or before
    FreeSWITCH dialled): `cancelled`, as when the CANCEL comes while a carrier rings. Any
    other call without a carrier leg was refused, and its routing log says why."""
    if tried:
        return carrier_leg
    return "cancelled" if _norm(caller_cause) == "ORIGINATOR_CANCEL" else None


@functools.cache
def no_failover_causes() -> tuple[str, ...]:
    """Causes that must stop FreeSWITCH's `|` failover: the value of
    `fail_on_single_reject` in the XML answer (FreeSWITCH only sees the cause).

    Cached: CAUSE_RULES is fixed at import, and every bridge answer asks for this."""
    return tuple(sorted(c for c, r in CAUSE_RULES.items()
                        if not r.failover and r.outcome is Outcome.CALLEE))


# Every hangup cause name FreeSWITCH 1.10 knows (switch_types.h / switch_channel.c).
# A name outside this set is silently turned into NORMAL_CLEARING by FreeSWITCH
# (DESIGN §11: "alloted_timeout"), so the XML renderer refuses it.
FREESWITCH_CAUSES = frozenset("""
UNSPECIFIED UNALLOCATED_NUMBER NO_ROUTE_TRANSIT_NET NO_ROUTE_DESTINATION CHANNEL_UNACCEPTABLE
CALL_AWARDED_DELIVERED NORMAL_CLEARING USER_BUSY NO_USER_RESPONSE NO_ANSWER SUBSCRIBER_ABSENT
CALL_REJECTED NUMBER_CHANGED REDIRECTION_TO_NEW_DESTINATION EXCHANGE_ROUTING_ERROR
DESTINATION_OUT_OF_ORDER INVALID_NUMBER_FORMAT FACILITY_REJECTED RESPONSE_TO_STATUS_ENQUIRY
NORMAL_UNSPECIFIED NORMAL_CIRCUIT_CONGESTION NETWORK_OUT_OF_ORDER NORMAL_TEMPORARY_FAILURE
SWITCH_CONGESTION ACCESS_INFO_DISCARDED REQUESTED_CHAN_UNAVAIL PRE_EMPTED
FACILITY_NOT_SUBSCRIBED OUTGOING_CALL_BARRED INCOMING_CALL_BARRED BEARERCAPABILITY_NOTAUTH
BEARERCAPABILITY_NOTAVAIL SERVICE_UNAVAILABLE BEARERCAPABILITY_NOTIMPL CHAN_NOT_IMPLEMENTED
FACILITY_NOT_IMPLEMENTED SERVICE_NOT_IMPLEMENTED INVALID_CALL_REFERENCE INCOMPATIBLE_DESTINATION
INVALID_MSG_UNSPECIFIED MANDATORY_IE_MISSING MESSAGE_TYPE_NONEXIST WRONG_MESSAGE IE_NONEXIST
INVALID_IE_CONTENTS WRONG_CALL_STATE RECOVERY_ON_TIMER_EXPIRE MANDATORY_IE_LENGTH_ERROR
PROTOCOL_ERROR INTERWORKING SUCCESS ORIGINATOR_CANCEL CRASH SYSTEM_SHUTDOWN LOSE_RACE
MANAGER_REQUEST BLIND_TRANSFER ATTENDED_TRANSFER ALLOTTED_TIMEOUT USER_CHALLENGE MEDIA_TIMEOUT
PICKED_OFF USER_NOT_REGISTERED PROGRESS_TIMEOUT INVALID_GATEWAY GATEWAY_DOWN INVALID_URL
INVALID_PROFILE NO_PICKUP SRTP_READ_ERROR BOWOUT BUSY_EVERYWHERE DECLINE DOES_NOT_EXIST_ANYWHERE
NOT_ACCEPTABLE UNWANTED NO_IDENTITY BAD_IDENTITY_INFO UNSUPPORTED_CERTIFICATE INVALID_IDENTITY
STALE_DATE
""".split())
