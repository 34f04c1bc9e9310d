"""Channel legs of the simulator and the event headers FreeSWITCH would give them.

A leg keeps its own times (microseconds, simulated clock) and variables; `leg_event()`
renders one captured template (wire.render) with the leg's identity, times, durations
and hangup fields, the way switch_channel.c fills them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from switchd.sim import wire

# Q.850 codes FreeSWITCH reports in hangup_cause_q850 (switch_types.h); ALLOTTED_TIMEOUT
# shows 16 as captured (scenario c), since the BYE carries normal clearing.
Q850 = {
    "UNALLOCATED_NUMBER": 1, "NO_ROUTE_DESTINATION": 3, "NORMAL_CLEARING": 16, "USER_BUSY": 17,
    "NO_USER_RESPONSE": 18, "NO_ANSWER": 19, "CALL_REJECTED": 21, "NUMBER_CHANGED": 22,
    "DESTINATION_OUT_OF_ORDER": 27, "INVALID_NUMBER_FORMAT": 28, "FACILITY_REJECTED": 29,
    "NORMAL_UNSPECIFIED": 31, "NORMAL_CIRCUIT_CONGESTION": 34, "NETWORK_OUT_OF_ORDER": 38,
    "NORMAL_TEMPORARY_FAILURE": 41, "SWITCH_CONGESTION": 42, "REQUESTED_CHAN_UNAVAIL": 44,
    "OUTGOING_CALL_BARRED": 52,
    "SERVICE_UNAVAILABLE": 63, "INCOMPATIBLE_DESTINATION": 88, "RECOVERY_ON_TIMER_EXPIRE": 102,
    "INTERWORKING": 127, "ORIGINATOR_CANCEL": 487, "ALLOTTED_TIMEOUT": 16, "MANAGER_REQUEST": 500,
    "SYSTEM_SHUTDOWN": 503,
}
# The SIP answer a carrier gives for a cause when the behaviour names none.
CAUSE_SIP = {
    "NORMAL_TEMPORARY_FAILURE": 503, "USER_BUSY": 486, "NO_ANSWER": 487, "NO_USER_RESPONSE": 480,
    "CALL_REJECTED": 603, "UNALLOCATED_NUMBER": 404, "NO_ROUTE_DESTINATION": 404,
    "INVALID_NUMBER_FORMAT": 484, "DESTINATION_OUT_OF_ORDER": 502, "NETWORK_OUT_OF_ORDER": 502,
    "SERVICE_UNAVAILABLE": 503, "RECOVERY_ON_TIMER_EXPIRE": 408, "INCOMPATIBLE_DESTINATION": 488,
    "NORMAL_CIRCUIT_CONGESTION": 503, "SWITCH_CONGESTION": 503, "OUTGOING_CALL_BARRED": 403,
}
# sofia_glue_sip_cause_to_freeswitch(): the cause of a SIP refusal (`respond NNN`).
SIP_CAUSE = {
    404: "UNALLOCATED_NUMBER", 485: "NO_ROUTE_DESTINATION", 604: "NO_ROUTE_DESTINATION",
    408: "RECOVERY_ON_TIMER_EXPIRE", 504: "RECOVERY_ON_TIMER_EXPIRE", 410: "NUMBER_CHANGED",
    480: "NO_USER_RESPONSE", 400: "NORMAL_TEMPORARY_FAILURE", 481: "NORMAL_TEMPORARY_FAILURE",
    500: "NORMAL_TEMPORARY_FAILURE", 503: "NORMAL_TEMPORARY_FAILURE", 486: "USER_BUSY",
    600: "USER_BUSY", 484: "INVALID_NUMBER_FORMAT", 488: "INCOMPATIBLE_DESTINATION",
    606: "INCOMPATIBLE_DESTINATION", 502: "NETWORK_OUT_OF_ORDER", 405: "SERVICE_UNAVAILABLE",
    401: "CALL_REJECTED", 402: "CALL_REJECTED", 403: "CALL_REJECTED", 407: "CALL_REJECTED",
    603: "CALL_REJECTED", 487: "ORIGINATOR_CANCEL",
}
PHRASE = {
    200: "OK", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    408: "Request Timeout", 480: "Temporarily Unavailable", 484: "Address Incomplete",
    486: "Busy Here", 487: "Request Terminated", 488: "Not Acceptable Here",
    500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
    603: "Decline",
}

# Which leg time feeds each variable_<prefix>_epoch/_uepoch/_stamp (switch_channel.c).
_EPOCHS = {"start": "created_us", "profile_start": "created_us", "answer": "answered_us",
           "bridge": "bridged_us", "progress": "progress_us",
           "progress_media": "progress_media_us", "end": "hangup_us"}
_TIMES = {"Profile-Created-Time": "created_us", "Channel-Created-Time": "created_us",
          "Channel-Answered-Time": "answered_us", "Channel-Progress-Time": "progress_us",
          "Channel-Progress-Media-Time": "progress_media_us",
          "Channel-Hangup-Time": "hangup_us", "Channel-Bridged-Time": "bridged_us"}


@dataclass
class SimLeg:
    uuid: str
    role: str                         # 'a' inbound caller, 'b' bridge leg, 'o' originated
    number: str                       # destination number
    caller: str
    call_uuid: str                    # Channel-Call-UUID: the A-leg (own uuid when alone)
    gateway: str | None = None
    caller_name: str | None = None
    vars: list[tuple[str, str]] = field(default_factory=list)   # shown as variable_*
    created_us: int = 0
    progress_us: int = 0
    progress_media_us: int = 0
    answered_us: int = 0
    bridged_us: int = 0
    hangup_us: int = 0
    cause: str | None = None
    sip_status: int | None = None
    proto_cause: bool = True          # sip_status came from the far end (not our CANCEL)
    hangup_disposition: str | None = None   # sip_hangup_disposition, when not the template's
    refused_answer: bool = False      # its 200 OK came with an SDP sofia refused (BYE sent)
    refused_redirect: int | None = None   # the carrier's 3xx it refused (outbound_redirect_fatal)

    @property
    def live(self) -> bool:
        return self.hangup_us == 0

    @property
    def billmsec(self) -> int:
        return (self.hangup_us // 1000 - self.answered_us // 1000) if self.answered_us else 0

    def var(self, name: str, default: str | None = None) -> str | None:
        for k, v in reversed(self.vars):
            if k == name:
                return v
        return default


def refuse_answer(leg: SimLeg) -> None:
    """The carrier's 200 OK came with an SDP offering no codec FreeSWITCH can use: sofia
    ACKs it, sets endpoint_disposition "NO CODECS" and hangs up (sofia.c); the leg is never
    marked answered, and its hangup sends a BYE (GatewayBehaviour.unusable_answer)."""
    leg.refused_answer = True
    leg.vars.append(("endpoint_disposition", "NO CODECS"))


def refuse_redirect(leg: SimLeg, contact: str) -> None:
    """The carrier answered 302 with `contact` and the leg has outbound_redirect_fatal
    (sofia.c, sofia_handle_sip_r_invite): sofia records the Contact and `sip:302` as the
    proto-specific cause, no SIP status, and hangs the leg up REQUESTED_CHAN_UNAVAIL."""
    user, _, host = contact.removeprefix("sip:").partition("@")
    leg.cause, leg.sip_status, leg.refused_redirect = "REQUESTED_CHAN_UNAVAIL", None, 302
    leg.hangup_disposition = "send_cancel"
    leg.vars += [("sip_redirect_contact_0", f"<{contact}>"), ("sip_redirected_to", f"<{contact}>"),
                 ("sip_redirect_contact_user_0", user), ("sip_redirect_contact_host_0", host)]


def follow_redirect(leg: SimLeg, contact: str) -> None:
    """The carrier answered 302 with `contact` and sofia followed it (no
    outbound_redirect_fatal): the same leg, answered wherever the Contact says."""
    leg.vars.append(("sip_redirected_to", f"<{contact}>"))


def _durations(leg: SimLeg) -> dict[str, str]:
    c = leg.created_us
    spans = {"bill": leg.answered_us, "progress": leg.progress_us, "answer": leg.answered_us,
             "wait": leg.bridged_us or leg.answered_us, "progress_media": leg.progress_media_us}
    out: dict[str, str] = {}

    def put(name: str, start: int, end: int) -> None:
        ok = start and end
        out[f"variable_{name}sec"] = str(end // 1_000_000 - start // 1_000_000 if ok else 0)
        out[f"variable_{name}msec"] = str(end // 1000 - start // 1000 if ok else 0)
        out[f"variable_{name}usec"] = str(end - start if ok else 0)

    h = leg.hangup_us
    put("bill", leg.answered_us, h)
    put("flow_bill", leg.answered_us and c, h)
    for name in ("progress", "answer", "wait", "progress_media"):
        put(name, c, spans[name])
    out["variable_duration"] = str(h // 1_000_000 - c // 1_000_000)
    out["variable_mduration"] = str(h // 1000 - c // 1000)
    out["variable_uduration"] = str(h - c)
    return out


def times(leg: SimLeg, other: SimLeg | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for suffix, attr in _TIMES.items():
        out[f"Caller-{suffix}"] = str(getattr(leg, attr))
        if other is not None:
            out[f"Other-Leg-{suffix}"] = str(getattr(other, attr))
    for prefix, attr in _EPOCHS.items():
        us = getattr(leg, attr)
        out[f"variable_{prefix}_epoch"] = str(us // 1_000_000)
        out[f"variable_{prefix}_uepoch"] = str(us)
        out[f"variable_{prefix}_stamp"] = wire.stamp(us) if us else None
    out["variable_sip_invite_stamp"] = str(leg.created_us)
    return out


def hangup_fields(leg: SimLeg) -> dict[str, str | None]:
    cause = leg.cause or "NORMAL_CLEARING"
    sip = leg.sip_status
    out: dict[str, str | None] = {
        "Hangup-Cause": cause, "variable_hangup_cause": cause,
        "variable_hangup_cause_q850": str(Q850.get(cause, 16)),
        "variable_sip_term_cause": str(Q850.get(cause, 16)),
        "Answer-State": "hangup",
    }
    if sip is None and leg.role != "a" and not leg.answered_us:
        # The leg never had a SIP final answer (e.g. GATEWAY_DOWN, a kill while ringing).
        for name in ("variable_sip_term_status", "variable_proto_specific_hangup_cause",
                     "variable_sip_invite_failure_status", "variable_sip_invite_failure_phrase"):
            out[name] = None
    if leg.refused_redirect is not None:
        # sofia hangs the leg up and CANCELs its INVITE: the failure recorded is that 487
        out["variable_proto_specific_hangup_cause"] = f"sip:{leg.refused_redirect}"
        out["variable_sip_invite_failure_status"] = "487"
        out["variable_sip_invite_failure_phrase"] = "CANCEL"
    if leg.hangup_disposition is not None:
        out["variable_sip_hangup_disposition"] = leg.hangup_disposition
    if sip is not None:
        out["variable_sip_term_status"] = str(sip)
        out["variable_proto_specific_hangup_cause"] = f"sip:{sip}" if leg.proto_cause else None
        if not leg.answered_us:
            out["variable_sip_invite_failure_status"] = str(sip)
            out["variable_sip_invite_failure_phrase"] = PHRASE.get(sip, "Unknown")
    return out


def leg_event(key: str, leg: SimLeg, other: SimLeg | None, *, core_uuid: str, ts_us: int,
              a_uuid: str, extra: dict[str, str | None] | None = None,
              set_vars: list[tuple[str, str]] | None = None,
              tail: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """Headers for the event template `key` (e.g. 'b.CHANNEL_ANSWER') of `leg`."""
    b_uuid = leg.uuid if leg.role != "a" else (other.uuid if other else "")
    subs = {"A": a_uuid, "B": b_uuid, "B_FAILED": "", "DEST": leg.number, "CALLER": leg.caller,
            "CALLER_NAME": leg.caller_name or leg.caller, "GW": leg.gateway or ""}
    overrides: dict[str, str | None] = {"Core-UUID": core_uuid, **wire.date_headers(ts_us)}
    overrides.update(times(leg, other))
    if other is None:
        overrides["Other-Leg-Unique-ID"] = None
    if key.endswith("HANGUP_COMPLETE"):
        overrides.update(_durations(leg))
    if "HANGUP" in key:
        overrides.update(hangup_fields(leg))
    if leg.refused_answer and "HANGUP" in key:
        # sofia_on_hangup() sends the BYE, and sets this, after CHANNEL_HANGUP went out
        overrides["variable_sip_hangup_disposition"] = (
            "send_bye" if key.endswith("HANGUP_COMPLETE") else None)
    overrides.update(extra or {})
    own = [(f"variable_{k}", v) for k, v in leg.vars]
    overrides.update({k: v for k, v in own})
    inserts: dict[str, list[tuple[str, str]]] = {}
    if leg.role == "a":
        setv = [(f"variable_{k}", v) for k, v in set_vars or []]
        overrides.update(dict(setv))
        inserts["@@SETVARS@@"] = setv
        names_set = {k for k, _ in setv}
        inserts["variable_sip_from_host"] = [(k, v) for k, v in own if k not in names_set]
    else:
        inserts["variable_sip_destination_url"] = own
    # Variables already in the template were overridden in place; do not repeat them.
    names = {name for name, _ in wire.templates()["events"][key]}
    for anchor, lst in inserts.items():
        inserts[anchor] = [(k, v) for k, v in lst if k not in names]
    return wire.render(key, subs, overrides, inserts, tail)
