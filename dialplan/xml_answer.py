"""The mod_xml_curl answer: bridge, refusal, or not-found (DESIGN §3, §11).

Shape follows tests/fixtures/freeswitch-1.10/xml-curl-dialplan-request.txt, which a real
FreeSWITCH 1.10 accepted.

Safety model — two layers, both needed:
 1. XML: every attribute value is escaped (& < > " '), so nothing can close the attribute
    or add an element.
 2. FreeSWITCH syntax inside the attribute: a dial string splits on `,` `|` and reads
    `[...]` `{...}` `<...>` as variable blocks, `^^` changes the delimiter, `'` quotes,
    and `${...}` / `$${...}` expand variables or even run API commands at execution time.
    Escaping XML does nothing about those, and FreeSWITCH has no escape that works in every
    place, so dynamic values containing , | [ ] { } < > ' " ^ $ \\ or any control character
    (newlines included) are REFUSED with ValueError rather than stripped: silently changing
    a tenant name or a rate is worse than failing loudly. Provisioning should validate
    names with `check_value` so this never fires on real data.
Names are stricter still: variable names [A-Za-z_][A-Za-z0-9_]*, gateway and context names
[A-Za-z0-9_.-], dialled numbers +?digits.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from decimal import Decimal

from .causes import FREESWITCH_CAUSES, no_failover_causes

__all__ = ["BridgeLeg", "render_bridge", "render_local", "render_refusal", "render_not_found", "check_value",
           "leg_for_route", "format_value", "SIP_PHRASES"]

MAX_VALUE_LENGTH = 256
MAX_LEGS = 10

_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_GATEWAY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_CONTEXT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_NUMBER = re.compile(r"\+?[0-9]{1,32}")
_EXTENSION = re.compile(r"[A-Za-z0-9_*#+.-]{1,64}")
_SIP_URI = re.compile(r"sips?:[A-Za-z0-9_.+*#-]{1,64}@[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?")
_DESTINATION = re.compile(r"[A-Za-z0-9+*#._-]{1,64}")
_FORBIDDEN = frozenset(",|[]{}<>'\"^$\\")
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})

# Reason phrases for the codes switchd answers with (RFC 3261 / 3398).
SIP_PHRASES = {402: "Payment Required", 403: "Forbidden", 404: "Not Found",
               480: "Temporarily Unavailable", 484: "Address Incomplete",
               486: "Busy Here", 503: "Service Unavailable", 603: "Decline"}

_HEADER = '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n'


@dataclass(frozen=True)
class BridgeLeg:
    gateway: str                # sofia gateway name
    number: str                 # E.164 with or without '+', digits only otherwise
    vars: dict = field(default_factory=dict)    # per-leg variables, rendered in order


def format_value(value) -> str:
    """Channel-variable text for str / int / Decimal; floats (money!) and bools refused."""
    if isinstance(value, bool) or isinstance(value, float):
        raise TypeError(f"refusing {type(value).__name__} as a channel variable value")
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("non-finite Decimal")
        return format(value, "f")           # never '1E-7'
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    raise TypeError(f"unsupported channel variable value type {type(value).__name__}")


def check_value(text: str, what: str = "value") -> str:
    """Return `text` if it is safe inside set data and dial-string [...] blocks."""
    if len(text) > MAX_VALUE_LENGTH:
        raise ValueError(f"{what} longer than {MAX_VALUE_LENGTH} characters")
    for ch in text:
        if ch in _FORBIDDEN:
            raise ValueError(f"{what} contains {ch!r}, which FreeSWITCH dial strings or "
                             f"variable expansion would interpret")
        if unicodedata.category(ch) in _FORBIDDEN_CATEGORIES or ch in "\ufffe\uffff":
            raise ValueError(f"{what} contains control character U+{ord(ch):04X}")
    return text


def _name(text: str, pattern: re.Pattern, what: str) -> str:
    if not isinstance(text, str) or not pattern.fullmatch(text):
        raise ValueError(f"invalid {what}: {text!r}")
    return text


def _attr(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("'", "&apos;"))


def _assignments(variables: dict, what: str) -> list[tuple[str, str]]:
    out = []
    for k, v in variables.items():
        _name(k, _VAR_NAME, f"{what} variable name")
        out.append((k, check_value(format_value(v), f"{what} variable {k}")))
    return out


def _expression(destination: str) -> str:
    """Regex matching exactly `destination`, or anything when it has unusual characters.

    Metacharacters go in [] classes rather than behind backslashes, because FreeSWITCH's
    variable expander also treats backslashes. The answer is for this one lookup, so a
    catch-all condition cannot misroute another number.
    """
    if not isinstance(destination, str) or not _DESTINATION.fullmatch(destination):
        return "^.*$"
    return "^" + "".join(f"[{c}]" if c in "+*." else c for c in destination) + "$"


def _document(context: str, destination: str, actions: list[tuple[str, str]]) -> str:
    _name(context, _CONTEXT, "context")
    lines = [_HEADER.rstrip("\n"),
             '<document type="freeswitch/xml">',
             '  <section name="dialplan" description="switchd">',
             f'    <context name="{_attr(context)}">',
             '      <extension name="switchd">',
             f'        <condition field="destination_number" expression="{_attr(_expression(destination))}">']
    for app, data in actions:
        lines.append(f'          <action application="{app}" data="{_attr(data)}"/>')
    lines += ["        </condition>", "      </extension>", "    </context>",
              "  </section>", "</document>", ""]
    return "\n".join(lines)


def _dial_leg(leg: BridgeLeg) -> str:
    gw = _name(leg.gateway, _GATEWAY, "gateway name")
    num = _name(leg.number, _NUMBER, "dialled number")
    pairs = _assignments(leg.vars, "leg")
    block = "[" + ",".join(f"{k}={v}" for k, v in pairs) + "]" if pairs else ""
    return f"{block}sofia/gateway/{gw}/{num}"


def _check_cause(cause: str) -> str:
    if cause not in FREESWITCH_CAUSES:
        raise ValueError(f"unknown FreeSWITCH hangup cause {cause!r} (it would silently "
                         f"become NORMAL_CLEARING)")
    return cause


def render_bridge(context: str, destination: str, call_vars: dict, legs: list[BridgeLeg],
                  max_duration_s: int, cause_on_answer: str = "ALLOTTED_TIMEOUT") -> str:
    """Answer that bridges to `legs` in failover order, hanging up after max_duration_s.

    Call variables first (switchd_tenant, switchd_route_id, ... — switchd_max_duration is
    added when missing), then the bridge controls, then one bridge, then a hangup that
    hands the last leg's cause back to the caller (a busy callee hears busy, not 480).
    fail_on_single_reject stops FreeSWITCH's `|` failover on the callee's answers
    (causes.no_failover_causes): 486/603 must not ring the callee a second time.
    """
    if not legs:
        raise ValueError("render_bridge needs at least one leg (refuse instead)")
    if len(legs) > MAX_LEGS:
        raise ValueError(f"at most {MAX_LEGS} legs")
    actions = _call_controls(call_vars, max_duration_s, cause_on_answer)
    actions += [
        ("set", "fail_on_single_reject=" + ",".join(no_failover_causes())),
        ("bridge", "|".join(_dial_leg(leg) for leg in legs)),
        ("hangup", "${originate_disposition}"),
    ]
    return _document(context, destination, actions)


def _call_controls(call_vars: dict, max_duration_s: int, cause_on_answer: str) -> list:
    if isinstance(max_duration_s, bool) or not isinstance(max_duration_s, int) or max_duration_s <= 0:
        # sched_hangup needs '+N' with N > 0; a bare or zero N hangs up at once (DESIGN §11)
        raise ValueError(f"max_duration_s must be a positive int, got {max_duration_s!r}")
    _check_cause(cause_on_answer)
    call_vars = dict(call_vars)
    declared = call_vars.setdefault("switchd_max_duration", max_duration_s)
    if format_value(declared) != str(max_duration_s):
        raise ValueError("call_vars switchd_max_duration disagrees with max_duration_s")
    actions = [("set", f"{k}={v}") for k, v in _assignments(call_vars, "call")]
    return actions + [
        ("set", "route_source=xml_curl"),
        ("set", "continue_on_fail=true"),
        ("set", "hangup_after_bridge=true"),
        ("set", f"execute_on_answer=sched_hangup +{max_duration_s} {cause_on_answer}"),
    ]


def render_local(context: str, destination: str, call_vars: dict, destination_type: str,
                 target: str, max_duration_s: int, *, profile: str = "external",
                 extension_context: str = "default",
                 cause_on_answer: str = "ALLOTTED_TIMEOUT") -> str:
    """Inbound DID answer for a local target (DESIGN §3 "Inbound").

    'extension' → `transfer <ext> XML <extension_context>` (the PBX dialplan takes over, the
    scheduled hangup stays on the channel); 'sip_uri' → `bridge sofia/<profile>/<uri>`.
    A DID whose destination is a number goes through LCR and render_bridge instead.
    """
    actions = _call_controls(call_vars, max_duration_s, cause_on_answer)
    if destination_type == "extension":
        ext = _name(target, _EXTENSION, "extension")
        actions.append(("transfer", f"{ext} XML {_name(extension_context, _CONTEXT, 'context')}"))
    elif destination_type == "sip_uri":
        uri = _name(target, _SIP_URI, "SIP URI")
        actions.append(("bridge", f"sofia/{_name(profile, _GATEWAY, 'sofia profile')}/{uri}"))
        actions.append(("hangup", "${originate_disposition}"))
    else:
        raise ValueError(f"render_local handles 'extension' and 'sip_uri', not {destination_type!r}")
    return _document(context, destination, actions)


def render_refusal(context: str, destination: str, refusal, call_vars: dict) -> str:
    """Answer that refuses the call with refusal.sip_code and records refusal.cause.

    `respond "<code> <phrase>"` makes sofia send exactly that final response (402 has no
    hangup-cause equivalent, so `hangup CAUSE` alone cannot produce it); sofia then hangs
    the channel up itself. The `hangup` after it only runs where respond could not (a
    non-SIP channel), so the call ends either way. The cause and reason are also set as
    switchd_refusal_cause / switchd_refusal_reason for the CDR.
    """
    code = refusal.sip_code
    if isinstance(code, bool) or not isinstance(code, int) or not 400 <= code <= 699:
        raise ValueError(f"refusal sip_code must be a 4xx-6xx int, got {code!r}")
    cause = _check_cause(refusal.cause)
    _name(refusal.reason, _VAR_NAME, "refusal reason")
    phrase = SIP_PHRASES.get(code)
    call_vars = dict(call_vars)
    call_vars["switchd_refusal_cause"] = cause
    call_vars["switchd_refusal_reason"] = refusal.reason
    actions = [("set", f"{k}={v}") for k, v in _assignments(call_vars, "call")]
    actions += [
        ("set", "route_source=xml_curl"),
        ("respond", f"{code} {phrase}" if phrase else str(code)),
        ("hangup", cause),
    ]
    return _document(context, destination, actions)


def render_not_found() -> str:
    """mod_xml_curl falls through to the next binding / static XML (DESIGN §11)."""
    return (_HEADER + '<document type="freeswitch/xml">\n'
            '  <section name="result">\n'
            '    <result status="not found"/>\n'
            '  </section>\n'
            '</document>\n')


def leg_for_route(route, number: str) -> BridgeLeg:
    """BridgeLeg for an lcr.RouteChoice, with the per-leg variables rating needs later
    (docs/internals.md: switchd_carrier, switchd_rate, ...)."""
    rate = route.rate
    return BridgeLeg(gateway=route.gateway.name, number=number, vars={
        "leg_timeout": route.gateway.leg_timeout,
        "switchd_carrier": route.carrier.name,
        "switchd_rate": rate.rate_per_min,
        "switchd_connect_fee": rate.connect_fee,
        "switchd_increments": f"{rate.initial_increment}/{rate.subsequent_increment}",
        "switchd_prefix": rate.prefix,
    })
