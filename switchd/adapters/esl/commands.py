"""ESL command strings, built in one place (STYLE.md §3).

Every builder returns the command text without the terminating blank line (the connection
adds it). A newline, CR or NUL in an argument would end the command early and let the
rest run as a second command, so every argument is checked.
"""
from __future__ import annotations

import uuid as _uuid
from typing import Iterable, Mapping

# FreeSWITCH 1.10 CAUSE_CHART (switch_channel.c). An unknown name is silently turned into
# NORMAL_CLEARING by FreeSWITCH, so a typo (e.g. "ALLOTED_TIMEOUT") must fail here instead.
HANGUP_CAUSES = frozenset("""
    NONE UNALLOCATED_NUMBER NO_ROUTE_TRANSIT_NET NO_ROUTE_DESTINATION CHANNEL_UNACCEPTABLE
    CALL_AWARDED_DELIVERED NORMAL_CLEARING USER_BUSY NO_USER_RESPONSE NO_ANSWER
    SUBSCRIBER_ABSENT CALL_REJECTED NUMBER_CHANGED REDIRECTION_TO_NEW_DESTINATION
    EXCHANGE_ROUTING_ERROR DESTINATION_OUT_OF_ORDER INVALID_NUMBER_FORMAT FACILITY_REJECTED
    RESPONSE_TO_STATUS_ENQUIRY NORMAL_UNSPECIFIED NORMAL_CIRCUIT_CONGESTION
    NETWORK_OUT_OF_ORDER NORMAL_TEMPORARY_FAILURE SWITCH_CONGESTION ACCESS_INFO_DISCARDED
    REQUESTED_CHAN_UNAVAIL PRE_EMPTED FACILITY_NOT_SUBSCRIBED OUTGOING_CALL_BARRED
    INCOMING_CALL_BARRED BEARERCAPABILITY_NOTAUTH BEARERCAPABILITY_NOTAVAIL
    SERVICE_UNAVAILABLE BEARERCAPABILITY_NOTIMPL CHAN_NOT_IMPLEMENTED
    FACILITY_NOT_IMPLEMENTED SERVICE_NOT_IMPLEMENTED INVALID_CALL_REFERENCE
    INCOMPATIBLE_DESTINATION INVALID_MSG_UNSPECIFIED MANDATORY_IE_MISSING
    MESSAGE_TYPE_NONEXIST WRONG_MESSAGE IE_NONEXIST INVALID_IE_CONTENTS WRONG_CALL_STATE
    RECOVERY_ON_TIMER_EXPIRE MANDATORY_IE_LENGTH_ERROR PROTOCOL_ERROR INTERWORKING SUCCESS
    ORIGINATOR_CANCEL CRASH SYSTEM_SHUTDOWN LOSE_RACE MANAGER_REQUEST BLIND_TRANSFER
    ATTENDED_TRANSFER ALLOTTED_TIMEOUT USER_CHALLENGE MEDIA_TIMEOUT PICKED_OFF
    USER_NOT_REGISTERED PROGRESS_TIMEOUT INVALID_GATEWAY GATEWAY_DOWN INVALID_URL
    INVALID_PROFILE NO_PICKUP SRTP_READ_ERROR BOWOUT BUSY_EVERYWHERE DECLINE
    DOES_NOT_EXIST_ANYWHERE NOT_ACCEPTABLE UNWANTED NO_IDENTITY BAD_IDENTITY_INFO
    UNSUPPORTED_CERTIFICATE INVALID_IDENTITY STALE_DATE REJECT_ALL
""".split())

_FORBIDDEN = ("\n", "\r", "\0")


def _arg(value: object, what: str = "argument") -> str:
    text = str(value)
    for ch in _FORBIDDEN:
        if ch in text:
            raise ValueError(f"ESL {what} must not contain {ch!r}: {text[:60]!r}")
    return text


def _word(value: object, what: str) -> str:
    # Positional arguments FreeSWITCH splits on spaces; an empty or spaced one would
    # shift every later argument.
    text = _arg(value, what)
    if not text or " " in text:
        raise ValueError(f"ESL {what} must be one non-empty word: {text!r}")
    return text


def _join(cmd: str, args: Iterable[object]) -> str:
    parts = [_arg(cmd, "command")] + [_arg(a) for a in args]
    text = " ".join(p for p in parts if p != "")
    if not text.strip():
        raise ValueError("ESL command must not be empty")
    return text


def hangup_cause(cause: str) -> str:
    if cause not in HANGUP_CAUSES:
        raise ValueError(f"unknown FreeSWITCH hangup cause {cause!r} "
                         "(FreeSWITCH would silently use NORMAL_CLEARING)")
    return cause


def auth(password: str) -> str:
    return f"auth {_word(password, 'password')}"


def api(cmd: str, *args: object) -> str:
    """``api <cmd> <args>``: runs in FreeSWITCH's listener thread, so keep it quick."""
    return "api " + _join(cmd, args)


def bgapi(cmd: str, *args: object, job_uuid: str | None = None) -> str:
    """``bgapi`` with a client-supplied ``Job-UUID`` header (honoured by FreeSWITCH 1.10).

    The result arrives as BACKGROUND_JOB on every subscribed connection, so the caller
    must know the UUID before it sends; see :func:`new_job_uuid`.
    """
    text = "bgapi " + _join(cmd, args)
    if job_uuid is not None:
        text += f"\nJob-UUID: {_word(job_uuid, 'Job-UUID')}"
    return text


def new_job_uuid() -> str:
    return str(_uuid.uuid4())


def job_uuid_of(command: str) -> str | None:
    """The Job-UUID header of a command built by :func:`bgapi`, if any."""
    for line in command.split("\n")[1:]:
        name, _, value = line.partition(": ")
        if name == "Job-UUID":
            return value
    return None


def _channel_var(key: str, value: object) -> str:
    key = _word(key, "channel variable name")
    if "=" in key or "," in key:
        raise ValueError(f"channel variable name must not contain '=' or ',': {key!r}")
    text = _arg(value, f"value of {key}")
    # FreeSWITCH splits the originate arguments on blanks and the {...} block on commas,
    # and its quoting rules differ between versions: refuse rather than guess.
    bad = [ch for ch in " ,{}'\"" if ch in text]
    if bad:
        raise ValueError(f"value of {key} must not contain {''.join(bad)!r}: {text!r}")
    return f"{key}={text}"


def originate(dial_string: str, app: str = "&park()",
              vars: Mapping[str, object] | None = None) -> str:
    """The argument string of ``originate``: ``{k=v,...}<dial_string> <app>``.

    Use it with :func:`bgapi` (``bgapi("originate", originate(...))``); originate blocks
    until the callee answers or fails, far too long for ``api``.
    """
    dial = _arg(dial_string, "dial string")
    if not dial or " " in dial:
        raise ValueError(f"dial string must be non-empty and contain no spaces: {dial!r}")
    prefix = ""
    if vars:
        prefix = "{" + ",".join(_channel_var(k, v) for k, v in vars.items()) + "}"
    return f"{prefix}{dial} {_arg(app, 'application')}"


def uuid_kill(uuid: str, cause: str = "NORMAL_CLEARING") -> str:
    return api("uuid_kill", _word(uuid, "UUID"), hangup_cause(cause))


def sched_hangup(uuid: str, seconds: int, cause: str = "ALLOTTED_TIMEOUT") -> str:
    """``sched_hangup +N <uuid> <cause>``: without '+' N is an absolute epoch (DESIGN §11)."""
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 0:
        raise ValueError(f"sched_hangup seconds must be a non-negative int, not {seconds!r}")
    return api("sched_hangup", f"+{seconds}", _word(uuid, "UUID"), hangup_cause(cause))


def sched_del(group: str) -> str:
    """``sched_del <uuid>``: drop every task scheduled for the channel (its group is its
    UUID), e.g. the scheduled hangup, before a later one replaces it. A second
    ``sched_hangup`` alone would not move the first: both stay and the earlier fires."""
    word = _word(group, "UUID")
    if word.isdigit():
        raise ValueError(f"sched_del group must not be all digits (that is a task id): {word!r}")
    return api("sched_del", word)


def uuid_setvar(uuid: str, name: str, value: object) -> str:
    """``uuid_setvar <uuid> <name> <value>``."""
    return api("uuid_setvar", _word(uuid, "UUID"), _word(name, "channel variable name"),
               _word(value, f"value of {name}"))


def strmicroepoch() -> str:
    """``strmicroepoch``: the switch's clock now, in µs since the epoch (the clock its
    events' times are in)."""
    return api("strmicroepoch")


def show_channels_json() -> str:
    return api("show", "channels", "as", "json")


def sofia_gateway_status() -> str:
    """``api sofia xmlstatus gateway``: every gateway of every profile, as XML
    (switchd/adapters/esl/gateways.py parses it)."""
    return api("sofia", "xmlstatus", "gateway")


def event_subscription(events: Iterable[str], fmt: str = "plain") -> str:
    """``event <fmt> NAME ...``; CUSTOM subclasses go after the word CUSTOM."""
    if fmt not in ("plain", "json", "xml"):
        raise ValueError(f"event format must be plain, json or xml, not {fmt!r}")
    names = [_word(e, "event name") for e in events]
    if not names:
        raise ValueError("subscribe to at least one event")
    plain = [n for n in names if "::" not in n]
    custom = [n for n in names if "::" in n]
    if custom and "CUSTOM" not in plain:
        plain.append("CUSTOM")
    if custom:
        plain.remove("CUSTOM")
        plain += ["CUSTOM"] + custom
    return f"event {fmt} " + " ".join(plain)
