"""What the router answers FreeSWITCH, as data, and the one place it becomes XML.

The router decides (switchd/routing/router.py) and records its answer on the Decision as
one of these values; `render` turns it into the mod_xml_curl document
(dialplan/xml_answer.py). Nothing else in switchd renders a dialplan answer, so the shape
of every answer is read here and tested through the router.
"""
from __future__ import annotations

from dataclasses import dataclass

from dialplan import xml_answer


@dataclass(frozen=True)
class Attempt:
    """One carrier leg; on failure a transfer back to switchd (the continuation)."""
    context: str
    destination: str
    call_vars: dict
    route: object               # lcr.RouteChoice
    number: str                 # E.164 dialled on the gateway
    max_duration: int
    transfer_to: str
    pause_ms: int = 0           # a sleep before the bridge (a leg placed again)
    answered: bool = False      # the channel asking is up already: its limit starts now


@dataclass(frozen=True)
class Bridge:
    """A `|` list of legs (the emergency route)."""
    context: str
    destination: str
    call_vars: dict
    legs: list
    max_duration: int


@dataclass(frozen=True)
class Local:
    """A DID to an extension or a SIP URI."""
    context: str
    destination: str
    call_vars: dict
    destination_type: str
    target: str
    max_duration: int
    profile: str
    extension_mode: str
    extension_context: str
    user_domain: str | None


@dataclass(frozen=True)
class Refuse:
    """A SIP refusal (policy.Refusal) with the variables the refused call's CDR reads."""
    context: str
    destination: str
    refusal: object
    call_vars: dict


@dataclass(frozen=True)
class HangUp:
    """`hangup <cause>`: an answered call that came back to the dialplan ends here."""
    context: str
    destination: str
    cause: str
    call_vars: dict


@dataclass(frozen=True)
class NotFound:
    """`not found`: FreeSWITCH falls through to its static dialplan."""


NOT_FOUND = NotFound()


def render(answer) -> str:
    """The XML document of an answer; ValueError when a value cannot be put in it."""
    kind = type(answer)
    if kind is Attempt:
        return xml_answer.render_attempt(answer.context, answer.destination, answer.call_vars,
                                         answer.route, answer.number, answer.max_duration,
                                         transfer_to=answer.transfer_to,
                                         pause_ms=answer.pause_ms, answered=answer.answered)
    if kind is Refuse:
        return xml_answer.render_refusal(answer.context, answer.destination, answer.refusal,
                                         answer.call_vars)
    if kind is Local:
        return xml_answer.render_local(
            answer.context, answer.destination, answer.call_vars, answer.destination_type,
            answer.target, answer.max_duration, profile=answer.profile,
            extension_mode=answer.extension_mode, extension_context=answer.extension_context,
            user_domain=answer.user_domain)
    if kind is Bridge:
        return xml_answer.render_bridge(answer.context, answer.destination, answer.call_vars,
                                        answer.legs, answer.max_duration)
    if kind is HangUp:
        return xml_answer.render_hangup(answer.context, answer.destination, answer.cause,
                                        answer.call_vars)
    if kind is NotFound:
        return xml_answer.render_not_found()
    raise TypeError(f"not a routing answer: {answer!r}")
