"""Hangup causes as FreeSWITCH 1.10.12 names, numbers and maps them (pure).

- CAUSES: switch_call_cause_t (switch_types.h), name -> number;
- str2cause(): switch_channel_str2cause(): a name (any case) or a number; anything else,
  and an empty string, is NORMAL_CLEARING (so `hangup BOGUS` and `uuid_kill u BOGUS`
  end the call NORMAL_CLEARING);
- sip_to_cause(): sofia_glue_sip_cause_to_freeswitch(), the cause of a SIP final answer;
- CARRIER_SIP: the SIP answer a simulated carrier gives for a cause it is told to fail with;
- dialstatus(): the DIALSTATUS FreeSWITCH sets on the caller after a failed originate.
"""
from __future__ import annotations

CAUSES = {
    "NONE": 0, "UNALLOCATED_NUMBER": 1, "NO_ROUTE_TRANSIT_NET": 2, "NO_ROUTE_DESTINATION": 3,
    "CHANNEL_UNACCEPTABLE": 6, "CALL_AWARDED_DELIVERED": 7, "NORMAL_CLEARING": 16,
    "USER_BUSY": 17, "NO_USER_RESPONSE": 18, "NO_ANSWER": 19, "SUBSCRIBER_ABSENT": 20,
    "CALL_REJECTED": 21, "NUMBER_CHANGED": 22, "REDIRECTION_TO_NEW_DESTINATION": 23,
    "EXCHANGE_ROUTING_ERROR": 25, "DESTINATION_OUT_OF_ORDER": 27, "INVALID_NUMBER_FORMAT": 28,
    "FACILITY_REJECTED": 29, "RESPONSE_TO_STATUS_ENQUIRY": 30, "NORMAL_UNSPECIFIED": 31,
    "NORMAL_CIRCUIT_CONGESTION": 34, "NETWORK_OUT_OF_ORDER": 38, "NORMAL_TEMPORARY_FAILURE": 41,
    "SWITCH_CONGESTION": 42, "ACCESS_INFO_DISCARDED": 43, "REQUESTED_CHAN_UNAVAIL": 44,
    "PRE_EMPTED": 45, "FACILITY_NOT_SUBSCRIBED": 50, "OUTGOING_CALL_BARRED": 52,
    "INCOMING_CALL_BARRED": 54, "BEARERCAPABILITY_NOTAUTH": 57, "BEARERCAPABILITY_NOTAVAIL": 58,
    "SERVICE_UNAVAILABLE": 63, "BEARERCAPABILITY_NOTIMPL": 65, "CHAN_NOT_IMPLEMENTED": 66,
    "FACILITY_NOT_IMPLEMENTED": 69, "SERVICE_NOT_IMPLEMENTED": 79, "INVALID_CALL_REFERENCE": 81,
    "INCOMPATIBLE_DESTINATION": 88, "INVALID_MSG_UNSPECIFIED": 95, "MANDATORY_IE_MISSING": 96,
    "MESSAGE_TYPE_NONEXIST": 97, "WRONG_MESSAGE": 98, "IE_NONEXIST": 99,
    "INVALID_IE_CONTENTS": 100, "WRONG_CALL_STATE": 101, "RECOVERY_ON_TIMER_EXPIRE": 102,
    "MANDATORY_IE_LENGTH_ERROR": 103, "PROTOCOL_ERROR": 111, "INTERWORKING": 127,
    "SUCCESS": 142, "ORIGINATOR_CANCEL": 487, "CRASH": 700, "SYSTEM_SHUTDOWN": 701,
    "LOSE_RACE": 702, "MANAGER_REQUEST": 703, "BLIND_TRANSFER": 800, "ATTENDED_TRANSFER": 801,
    "ALLOTTED_TIMEOUT": 802, "USER_CHALLENGE": 803, "MEDIA_TIMEOUT": 804, "PICKED_OFF": 805,
    "USER_NOT_REGISTERED": 806, "PROGRESS_TIMEOUT": 807, "INVALID_GATEWAY": 808,
    "GATEWAY_DOWN": 809, "INVALID_URL": 810, "INVALID_PROFILE": 811, "NO_PICKUP": 812,
    "SRTP_READ_ERROR": 813, "BOWOUT": 814, "BUSY_EVERYWHERE": 815, "DECLINE": 816,
    "DOES_NOT_EXIST_ANYWHERE": 817, "NOT_ACCEPTABLE": 818, "UNWANTED": 819, "NO_IDENTITY": 820,
    "BAD_IDENTITY_INFO": 821, "UNSUPPORTED_CERTIFICATE": 822, "INVALID_IDENTITY": 823,
    "STALE_DATE": 824, "REJECT_ALL": 825,
}
_NAMES = {number: name for name, number in CAUSES.items()}

# sofia_glue_sip_cause_to_freeswitch(); any other code is NORMAL_UNSPECIFIED.
_SIP_CAUSE = {
    200: "NORMAL_CLEARING",
    401: "CALL_REJECTED", 402: "CALL_REJECTED", 403: "CALL_REJECTED", 407: "CALL_REJECTED",
    603: "CALL_REJECTED", 608: "CALL_REJECTED", 607: "UNWANTED",
    404: "UNALLOCATED_NUMBER", 485: "NO_ROUTE_DESTINATION", 604: "NO_ROUTE_DESTINATION",
    408: "RECOVERY_ON_TIMER_EXPIRE", 504: "RECOVERY_ON_TIMER_EXPIRE", 410: "NUMBER_CHANGED",
    **{code: "INTERWORKING" for code in (413, 414, 416, 420, 421, 423, 505, 513)},
    480: "NO_USER_RESPONSE",
    400: "NORMAL_TEMPORARY_FAILURE", 481: "NORMAL_TEMPORARY_FAILURE",
    500: "NORMAL_TEMPORARY_FAILURE", 503: "NORMAL_TEMPORARY_FAILURE",
    486: "USER_BUSY", 600: "USER_BUSY", 484: "INVALID_NUMBER_FORMAT",
    488: "INCOMPATIBLE_DESTINATION", 606: "INCOMPATIBLE_DESTINATION",
    502: "NETWORK_OUT_OF_ORDER", 405: "SERVICE_UNAVAILABLE",
    406: "SERVICE_NOT_IMPLEMENTED", 415: "SERVICE_NOT_IMPLEMENTED", 501: "SERVICE_NOT_IMPLEMENTED",
    482: "EXCHANGE_ROUTING_ERROR", 483: "EXCHANGE_ROUTING_ERROR", 487: "ORIGINATOR_CANCEL",
    428: "NO_IDENTITY", 429: "BAD_IDENTITY_INFO", 437: "UNSUPPORTED_CERTIFICATE",
    438: "INVALID_IDENTITY",
}

# What a simulated carrier answers when told to fail with a cause (and no SIP code): a
# code that sofia maps back to the same cause. Causes missing here never reach the wire
# (no SIP answer at all), e.g. DESTINATION_OUT_OF_ORDER, GATEWAY_DOWN.
CARRIER_SIP = {
    "NORMAL_TEMPORARY_FAILURE": 503, "USER_BUSY": 486, "NO_USER_RESPONSE": 480,
    "CALL_REJECTED": 603, "UNALLOCATED_NUMBER": 404, "NO_ROUTE_DESTINATION": 604,
    "INVALID_NUMBER_FORMAT": 484, "NETWORK_OUT_OF_ORDER": 502, "SERVICE_UNAVAILABLE": 405,
    "RECOVERY_ON_TIMER_EXPIRE": 408, "INCOMPATIBLE_DESTINATION": 488, "NUMBER_CHANGED": 410,
    "INTERWORKING": 505, "SERVICE_NOT_IMPLEMENTED": 501, "EXCHANGE_ROUTING_ERROR": 483,
    "UNWANTED": 607, "NORMAL_UNSPECIFIED": 499,
}


def str2cause(text: str | None) -> str:
    """switch_channel_str2cause() then back to the name switch_channel_cause2str() gives."""
    text = (text or "").strip()
    if not text:
        return "NORMAL_CLEARING"
    if "0" <= text[0] <= "9":
        digits = ""
        for ch in text:                         # atoi(): leading digits only
            if not ch.isdigit():
                break
            digits += ch
        return _NAMES.get(int(digits), "UNKNOWN")
    upper = text.upper()
    return upper if upper in CAUSES else "NORMAL_CLEARING"


def sip_to_cause(code: int) -> str:
    return _SIP_CAUSE.get(int(code), "NORMAL_UNSPECIFIED")


def number(cause: str) -> int:
    return CAUSES.get(cause, 0)


def dialstatus(cause: str) -> str:
    """switch_ivr_originate.c: DIALSTATUS on the caller after a failed originate."""
    return {"ORIGINATOR_CANCEL": "CANCEL", "USER_BUSY": "BUSY", "NO_ANSWER": "NOANSWER",
            "DESTINATION_OUT_OF_ORDER": "INVALIDARGS", "INVALID_PROFILE": "INVALIDARGS",
            "CALL_REJECTED": "DONTCALL"}.get(cause, cause)


def in_cause_list(cause: str, listing: str) -> bool:
    """switch_channel_handle_cause(): `listing` is comma-separated cause names or numbers,
    compared case-insensitively with the cause's name and its number."""
    names = {item.strip().upper() for item in listing.split(",")}
    return cause.upper() in names or str(number(cause)) in names


def single_reject(cause: str, setting: str) -> bool:
    """fail_on_single_reject=<list> in switch_ivr_originate.c: the cause NAME is searched
    in the setting as a case-insensitive substring (switch_stristr), `!` negates it."""
    neg = setting.startswith("!")
    found = cause.upper() in setting.upper()
    return found != neg


def true(text: str | None) -> bool:
    """switch_true()."""
    return (text or "").strip().lower() in ("yes", "on", "true", "t", "enabled", "active",
                                            "allow") or (text or "").strip().lstrip("-").isdigit() \
        and int(text.strip()) != 0


# mod_sofia.c hangup_cause_to_sip(): what sofia answers an unanswered inbound caller with
# (unless the other leg's `last_bridge_proto_specific_hangup_cause` gives a SIP code).
_HANGUP_SIP = {
    "UNALLOCATED_NUMBER": 404, "NO_ROUTE_TRANSIT_NET": 404, "NO_ROUTE_DESTINATION": 404,
    "USER_BUSY": 486, "NO_USER_RESPONSE": 408, "NO_ANSWER": 480, "SUBSCRIBER_ABSENT": 480,
    "CALL_REJECTED": 603, "NUMBER_CHANGED": 410, "REDIRECTION_TO_NEW_DESTINATION": 410,
    "DESTINATION_OUT_OF_ORDER": 502, "INVALID_PROFILE": 502, "INVALID_NUMBER_FORMAT": 484,
    "INVALID_URL": 484, "INVALID_GATEWAY": 484, "FACILITY_REJECTED": 501,
    "NORMAL_UNSPECIFIED": 480, "REQUESTED_CHAN_UNAVAIL": 503, "NORMAL_CIRCUIT_CONGESTION": 503,
    "NETWORK_OUT_OF_ORDER": 503, "NORMAL_TEMPORARY_FAILURE": 503, "SWITCH_CONGESTION": 503,
    "GATEWAY_DOWN": 503, "OUTGOING_CALL_BARRED": 403, "INCOMING_CALL_BARRED": 403,
    "BEARERCAPABILITY_NOTAUTH": 403, "BEARERCAPABILITY_NOTAVAIL": 503,
    "BEARERCAPABILITY_NOTIMPL": 488, "INCOMPATIBLE_DESTINATION": 488,
    "FACILITY_NOT_IMPLEMENTED": 501, "SERVICE_NOT_IMPLEMENTED": 501,
    "RECOVERY_ON_TIMER_EXPIRE": 504, "ORIGINATOR_CANCEL": 487, "EXCHANGE_ROUTING_ERROR": 483,
    "BUSY_EVERYWHERE": 600, "DECLINE": 603, "REJECT_ALL": 603, "DOES_NOT_EXIST_ANYWHERE": 604,
    "NOT_ACCEPTABLE": 606, "UNWANTED": 607, "NO_IDENTITY": 428, "BAD_IDENTITY_INFO": 429,
    "UNSUPPORTED_CERTIFICATE": 437, "INVALID_IDENTITY": 438, "STALE_DATE": 403,
}


def hangup_sip(cause: str) -> int:
    return _HANGUP_SIP.get(cause, 480)


def sched_when_us(arg: str, now_us: int) -> int:
    """When `sched_hangup <arg>` fires, as mod_dptools/mod_commands and the scheduler do it:
    `+N` is the current whole second + N; a bare value is an epoch, except that the part
    after its first character is what decides "now" (`sec = atol(arg + 1)`: `30`, `5`, `100`
    hang up at once) and an epoch already past is taken as relative by the scheduler
    (switch_scheduler_add_task: runtime < now → runtime += now). Tasks run on whole
    seconds. Returns the firing time in µs (now_us itself for "at once")."""
    def atol(text: str) -> int:
        text = text.strip()
        sign = -1 if text.startswith("-") else 1
        text = text.lstrip("+-")
        digits = ""
        for ch in text:
            if not ch.isdigit():
                break
            digits += ch
        return sign * int(digits) if digits else 0
    now_s = now_us // 1_000_000
    sec = atol(arg[1:])
    if sec == 0:
        return now_us
    when = now_s + sec if arg.startswith("+") else atol(arg)
    if when < now_s:
        when += now_s
    return max(when * 1_000_000, now_us)


def unsendable_from(name: str, number: str) -> tuple[str, int | None] | None:
    """A caller ID sofia cannot put in the From header of the carrier INVITE, as seen on
    FreeSWITCH 1.10.12 (issue 8; docs/routing.md §7): a `${...}` left in the name or number
    fails the leg before sending with status 900 (NORMAL_UNSPECIFIED, `sip:900`); a display
    name with a double quote or angle brackets fails it DESTINATION_OUT_OF_ORDER with no
    SIP status. Returns (cause, sip status) or None when the From can be built."""
    if "${" in name or "${" in number:
        return "NORMAL_UNSPECIFIED", 900
    if any(ch in name for ch in '"<>'):
        return "DESTINATION_OUT_OF_ORDER", None
    return None
