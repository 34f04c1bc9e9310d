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
    a tenant name or a rate is worse than failing loudly. The rules are dialplan/validate.py,
    which every door (provision, rates import, config, API) applies to data as it enters,
    so this never fires on stored data.
Names are stricter still: variable names [A-Za-z_][A-Za-z0-9_]*, gateway and context names
[A-Za-z0-9_.-], dialled numbers +?digits.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from decimal import Decimal

from . import validate
from .causes import FREESWITCH_CAUSES, no_failover_causes

__all__ = ["BridgeLeg", "render_bridge", "render_local", "render_refusal", "render_not_found", "check_value",
           "leg_for_route", "format_value", "SIP_PHRASES"]

MAX_LEGS = 10

# The rules live in dialplan/validate.py, shared with every door where data enters
# (provision, rates import, config, the API): one set, so what is accepted renders.
MAX_VALUE_LENGTH = validate.MAX_VALUE_LENGTH
_VAR_NAME = validate.VAR_NAME
_GATEWAY = validate.GATEWAY
_CONTEXT = validate.CONTEXT
_NUMBER = validate.NUMBER
_EXTENSION = validate.EXTENSION
_SIP_URI = validate.SIP_URI
_DESTINATION = validate.DESTINATION
_FORBIDDEN_RE = validate.FORBIDDEN_RE
check_value = validate.check_value
# A tenant's SIP domain in user/EXT@domain (a DID to an extension in 'user' mode).
_DOMAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")

# Reason phrases for the codes switchd answers with (RFC 3261 / 3398).
SIP_PHRASES = {401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
               404: "Not Found", 407: "Proxy Authentication Required", 408: "Request Timeout",
               410: "Gone", 480: "Temporarily Unavailable", 484: "Address Incomplete",
               486: "Busy Here", 487: "Request Terminated", 500: "Server Internal Error",
               502: "Bad Gateway", 503: "Service Unavailable", 504: "Server Time-out",
               600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere"}

_HEADER = '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n'


@dataclass(frozen=True)
class BridgeLeg:
    gateway: str                # sofia gateway name
    number: str                 # E.164 with or without '+', digits only otherwise
    vars: dict = field(default_factory=dict)    # per-leg variables, rendered in order


def format_value(value) -> str:
    """Channel-variable text for str / int / Decimal; floats (money!) and bools refused."""
    kind = type(value)
    if kind is str:                          # exact types first: the common case, cheaply
        return value
    if kind is int:
        return str(value)
    if kind is Decimal and value.is_finite():
        return format(value, "f")           # never '1E-7'
    if isinstance(value, bool) or isinstance(value, float):
        raise TypeError(f"refusing {type(value).__name__} as a channel variable value")
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("non-finite Decimal")
        return format(value, "f")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    raise TypeError(f"unsupported channel variable value type {type(value).__name__}")


# Names that already passed their pattern (variable names are constants in the code;
# gateways and contexts come from the provisioned world): a set lookup instead of a regex.
# Only exact str instances are remembered, and each set is bounded.
_PASSED: dict[re.Pattern, set] = {}
_PASSED_MAX = 4096


def _name(text: str, pattern: re.Pattern, what: str) -> str:
    passed = _PASSED.get(pattern)
    if passed is None:
        passed = _PASSED[pattern] = set()
    if type(text) is str and text in passed:
        return text
    if not isinstance(text, str) or not pattern.fullmatch(text):
        raise ValueError(f"invalid {what}: {text!r}")
    if type(text) is str and len(passed) < _PASSED_MAX:
        passed.add(text)
    return text


_XML_SPECIAL = re.compile("[&<>\"']")


def _attr(text: str) -> str:
    if _XML_SPECIAL.search(text) is None:
        return text
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("'", "&apos;"))


def _safe(text: str) -> bool:
    """check_value's fast path as a predicate: True means check_value would pass `text`."""
    return (len(text) <= MAX_VALUE_LENGTH and text.isascii() and text.isprintable()
            and _FORBIDDEN_RE.search(text) is None)


def _fast_text(value) -> str | None:
    """Text of a value of the usual exact types (what format_value gives them); None sends
    the caller to the full per-value checks."""
    kind = type(value)
    if kind is str:
        return value
    if kind is int:
        return str(value)
    if kind is Decimal and value.is_finite():
        return format(value, "f")
    return None


def _assignments(variables: dict, what: str) -> list[str]:
    """["name=text"] for `variables`, every name and value checked (ValueError/TypeError).

    Fast path: names already seen valid, values of the usual types, and all the texts
    together printable ASCII without a forbidden character and within one value's length
    limit (so each one is too). Anything else runs the exact per-variable checks, which
    raise what they always raised, in the same order."""
    passed = _PASSED.setdefault(_VAR_NAME, set())
    if type(variables) is dict and passed.issuperset(variables):
        texts, out = [], []
        for k, v in variables.items():
            text = _fast_text(v)
            if text is None or type(k) is not str:   # str subclass equal to a known name
                break
            texts.append(text)
            out.append(f"{k}={text}")
        else:
            if _safe("".join(texts)):
                return out
    out = []
    for k, v in variables.items():
        _name(k, _VAR_NAME, f"{what} variable name")
        out.append(f"{k}={check_value(format_value(v), f'{what} variable {k}')}")
    return out


_EXPRESSION_CLASSES = str.maketrans({"+": "[+]", "*": "[*]", ".": "[.]"})


def _expression(destination: str) -> str:
    """Regex matching exactly `destination`, or anything when it has unusual characters.

    Metacharacters go in [] classes rather than behind backslashes, because FreeSWITCH's
    variable expander also treats backslashes. The answer is for this one lookup, so a
    catch-all condition cannot misroute another number.
    """
    if not isinstance(destination, str) or not _DESTINATION.fullmatch(destination):
        return "^.*$"
    return "^" + str.translate(destination, _EXPRESSION_CLASSES) + "$"


_DOC_OPEN = (_HEADER + '<document type="freeswitch/xml">\n'
             '  <section name="dialplan" description="switchd">\n'
             '    <context name="')
_DOC_CLOSE = ("        </condition>\n      </extension>\n    </context>\n"
              "  </section>\n</document>\n")


# context -> the document's text up to the condition's expression, for contexts that
# passed _CONTEXT (exact str only; bounded).
_HEADS: dict[str, str] = {}
_HEADS_MAX = 1024


def _document(context: str, destination: str, actions: list[tuple[str, str]]) -> str:
    head = _HEADS.get(context) if type(context) is str else None
    if head is None:
        _name(context, _CONTEXT, "context")
        head = (_DOC_OPEN + _attr(context) + '">\n      <extension name="switchd">\n'
                '        <condition field="destination_number" expression="')
        if type(context) is str and len(_HEADS) < _HEADS_MAX:
            _HEADS[context] = head
    parts = [head, _attr(_expression(destination)), '">\n']
    # One look for XML specials across all the data (usually there are none: checked
    # values cannot hold < > " ' at all), instead of one per action.
    if _XML_SPECIAL.search("".join([data for _, data in actions])) is None:
        parts += [f'          <action application="{app}" data="{data}"/>\n'
                  for app, data in actions]
    else:
        parts += [f'          <action application="{app}" data="{_attr(data)}"/>\n'
                  for app, data in actions]
    parts.append(_DOC_CLOSE)
    return "".join(parts)


def _dial_leg(leg: BridgeLeg) -> str:
    gw = _name(leg.gateway, _GATEWAY, "gateway name")
    num = _name(leg.number, _NUMBER, "dialled number")
    pairs = _assignments(leg.vars, "leg")
    block = "[" + ",".join(pairs) + "]" if pairs else ""
    return f"{block}sofia/gateway/{gw}/{num}"


def _dial_string(legs: list[BridgeLeg]) -> str:
    """"|".join(_dial_leg(leg) for leg in legs), with one pass over all the legs when every
    gateway and variable name was seen valid before and every value is a str, int or finite
    Decimal whose texts together are printable ASCII without a forbidden character; the
    per-leg path (same checks, same errors, same order) otherwise."""
    gateways = _PASSED.get(_GATEWAY)
    names = _PASSED.get(_VAR_NAME)
    if gateways and names:
        dials, texts = [], []
        for leg in legs:
            gw, num, variables = leg.gateway, leg.number, leg.vars
            if (type(gw) is not str or gw not in gateways or type(num) is not str
                    or type(variables) is not dict or not names.issuperset(variables)):
                break
            block = []
            for k, v in variables.items():
                text = _fast_text(v)
                if text is None or type(k) is not str or len(text) > MAX_VALUE_LENGTH:
                    break
                texts.append(text)
                block.append(f"{k}={text}")
            else:
                if _NUMBER.fullmatch(num) is None:
                    break
                head = "[" + ",".join(block) + "]" if block else ""
                dials.append(f"{head}sofia/gateway/{gw}/{num}")
                continue
            break
        else:
            joined = "".join(texts)
            if joined.isascii() and joined.isprintable() and _FORBIDDEN_RE.search(joined) is None:
                return "|".join(dials)
    return "|".join([_dial_leg(leg) for leg in legs])


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
        _fail_on_single_reject(),
        ("bridge", _dial_string(legs)),
        ("hangup", "${originate_disposition}"),
    ]
    return _document(context, destination, actions)


@functools.cache
def _fail_on_single_reject() -> tuple[str, str]:
    return ("set", "fail_on_single_reject=" + ",".join(no_failover_causes()))


_CONTROLS = (("set", "route_source=xml_curl"), ("set", "continue_on_fail=true"),
             ("set", "hangup_after_bridge=true"))


def _call_controls(call_vars: dict, max_duration_s: int, cause_on_answer: str,
                   answered: bool = False) -> list:
    if isinstance(max_duration_s, bool) or not isinstance(max_duration_s, int) or max_duration_s <= 0:
        # sched_hangup needs '+N' with N > 0; a bare or zero N hangs up at once (DESIGN §11)
        raise ValueError(f"max_duration_s must be a positive int, got {max_duration_s!r}")
    _check_cause(cause_on_answer)
    call_vars = dict(call_vars)
    declared = call_vars.setdefault("switchd_max_duration", max_duration_s)
    if format_value(declared) != str(max_duration_s):
        raise ValueError("call_vars switchd_max_duration disagrees with max_duration_s")
    actions = [("set", kv) for kv in _assignments(call_vars, "call")]
    actions += _CONTROLS
    if answered:
        # The channel asking was answered before (a call transferred after its answer):
        # execute_on_answer would never run, so the limit starts now.
        actions.append(("sched_hangup", f"+{max_duration_s} {cause_on_answer}"))
    else:
        actions.append(("set", f"execute_on_answer=sched_hangup +{max_duration_s} {cause_on_answer}"))
    return actions


# A DID's own target (a SIP URI, a directory user) answering 3xx fails, as a carrier leg
# does, instead of being followed: sofia would otherwise INVITE whatever its Contact names
# (a carrier that trusts this switch's address, say) as this leg, past routing, caps and
# billing, or transfer the caller into the dialplan with its number.
_REDIRECT_FATAL = "[outbound_redirect_fatal=true]"
# sofia then answers the caller with the failed leg's SIP status: a 3xx, without a
# Contact. sip_ignore_remote_cause (mod_sofia, sofia_on_hangup) makes it the hangup
# cause's own (503): true when the last bridge's leg ended on a 3xx (its
# proto_specific_hangup_cause "sip:3.."), else "false" (or cond's "-ERR" when the
# variable is unset: not true either), so every other status still passes through.
_NO_REDIRECT_STATUS = ("sip_ignore_remote_cause=${cond('${last_bridge_proto_specific_hangup_cause:0:5}'"
                       " == 'sip:3' ? true : false)}")


def _bridge_local(dial: str) -> list:
    """A DID's own target: its bridge, a 3xx's status kept from the caller, the hangup
    with the bridge's outcome."""
    return [("bridge", _REDIRECT_FATAL + dial), ("set", _NO_REDIRECT_STATUS),
            ("hangup", "${originate_disposition}")]


def render_local(context: str, destination: str, call_vars: dict, destination_type: str,
                 target: str, max_duration_s: int, *, profile: str = "",
                 extension_mode: str = "transfer", extension_context: str = "default",
                 user_domain: str | None = None,
                 cause_on_answer: str = "ALLOTTED_TIMEOUT") -> str:
    """Inbound DID answer for a local target (DESIGN §3 "Inbound").

    'extension', extension_mode 'transfer' → `transfer <ext> XML <extension_context>`: the
    channel re-enters the dialplan in that context, which FreeSWITCH looks up again (through
    mod_xml_curl first: switchd answers that lookup `not found`, so the context's static
    XML runs the extension); the scheduled hangup stays on the channel.
    'extension', extension_mode 'user' → `bridge user/<ext>@<user_domain>` (the directory
    user; `${domain_name}` when the tenant has no domain).
    'sip_uri' → `bridge sofia/<profile>/<uri>`, `profile` a sofia profile that exists
    (the router picks it: the DID's, the configured one, or the one the call came in on).
    A 'user' or 'sip_uri' target's redirect (3xx) is not followed: its leg fails, the
    caller gets 503.
    A DID whose destination is a number goes through LCR and render_bridge instead.
    """
    actions = _call_controls(call_vars, max_duration_s, cause_on_answer)
    if destination_type == "extension":
        ext = _name(target, _EXTENSION, "extension")
        if extension_mode == "transfer":
            actions.append(("transfer",
                            f"{ext} XML {_name(extension_context, _CONTEXT, 'context')}"))
        elif extension_mode == "user":
            domain = ("${domain_name}" if not user_domain
                      else _name(user_domain, _DOMAIN, "tenant domain"))
            actions += _bridge_local(f"user/{ext}@{domain}")
        else:
            raise ValueError(f"extension_mode is 'transfer' or 'user', not {extension_mode!r}")
    elif destination_type == "sip_uri":
        uri = _name(target, _SIP_URI, "SIP URI")
        actions += _bridge_local(f"sofia/{_name(profile, _GATEWAY, 'sofia profile')}/{uri}")
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
    actions = [("set", kv) for kv in _assignments(call_vars, "call")]
    actions += [
        ("set", "route_source=xml_curl"),
        ("respond", f"{code} {phrase}" if phrase else str(code)),
        ("hangup", cause),
    ]
    return _document(context, destination, actions)


def render_hangup(context: str, destination: str, cause: str, call_vars: dict) -> str:
    """Answer that ends an answered call: its variables, then `hangup <cause>` (a `respond`
    cannot reach a caller whose call was answered)."""
    actions = [("set", kv) for kv in _assignments(call_vars, "call")]
    actions.append(("hangup", _check_cause(cause)))
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
        # A carrier's 3xx is a failed attempt, never followed: FreeSWITCH would otherwise
        # send the call wherever its Contact says (any host, any number), past routing and
        # billing, or transfer the caller to that number when the host is our own.
        "outbound_redirect_fatal": "true",
        "leg_timeout": route.gateway.leg_timeout,
        **_media_timeout(route.gateway.media_timeout),
        "switchd_carrier": route.carrier.name,
        "switchd_rate": rate.rate_per_min,
        "switchd_connect_fee": rate.connect_fee,
        "switchd_increments": f"{rate.initial_increment}/{rate.subsequent_increment}",
        "switchd_prefix": rate.prefix,
    })


def _media_timeout(seconds: int) -> dict:
    """The carrier leg's `media_timeout` (FreeSWITCH reads milliseconds): a carrier that
    answers and then sends no RTP is cut MEDIA_TIMEOUT, not carried (and billed) until the
    call's max duration. Nothing for a gateway that turned it off (0). Provisioning stores
    whole seconds; any other value is left for format_value to refuse when rendered."""
    if type(seconds) is not int:
        return {"media_timeout": seconds}
    return {"media_timeout": seconds * 1000} if seconds else {}


# --- the router's bridge answer: per-leg dial-string fragments from precomputed texts -----
# A leg's text is "[leg vars]sofia/gateway/<gw>/" + number. For a Rate matched in a deck,
# the texts of its tariff (switchd_rate, switchd_connect_fee, switchd_increments) were made
# once when the deck was built (ratedeck.Tariff); the gateway's and carrier's come from the
# world. So a fragment is one f-string per leg, checked as a whole; anything else (a Rate
# built by hand, an unusual type, a value that fails the whole-text check) takes the exact
# per-leg path, with its errors.
def _fragment(route, number: str) -> str:
    """leg_for_route(route, number)'s dial text without the number (number checked valid
    by the caller)."""
    gateway, carrier, rate = route.gateway, route.carrier, route.rate
    tariff = getattr(rate, "tariff", None)
    gw, timeout, cname, prefix = gateway.name, gateway.leg_timeout, carrier.name, rate.prefix
    media = gateway.media_timeout
    if (tariff is not None and type(timeout) is int and type(media) is int and type(cname) is str
            and type(prefix) is str and type(gw) is str
            and rate.rate_per_min is tariff.rate_per_min and rate.connect_fee is tariff.connect_fee
            and rate.initial_increment == tariff.initial_increment
            and rate.subsequent_increment == tariff.subsequent_increment):
        media_var = f"media_timeout={media * 1000}," if media else ""
        values = (f"outbound_redirect_fatal=true,leg_timeout={timeout},{media_var}"
                  f"switchd_carrier={cname},"
                  f"switchd_rate={tariff.rate_text},switchd_connect_fee={tariff.fee_text},"
                  f"switchd_increments={tariff.increments_text},switchd_prefix={prefix}")
        if _safe(cname + prefix) and _GATEWAY.fullmatch(gw) is not None:
            return f"[{values}]sofia/gateway/{gw}/"
    text = _dial_leg(leg_for_route(route, number))
    return text[:len(text) - len(number)]


def render_routes(context: str, destination: str, call_vars: dict, routes: list,
                  number: str, max_duration_s: int,
                  cause_on_answer: str = "ALLOTTED_TIMEOUT") -> str:
    """render_bridge(context, destination, call_vars,
    [leg_for_route(r, number) for r in routes], max_duration_s, cause_on_answer): the same
    document, or the same exception, with the legs' fragments from _fragment."""
    if (not routes or len(routes) > MAX_LEGS or type(number) is not str
            or _NUMBER.fullmatch(number) is None):
        return render_bridge(context, destination, call_vars,
                             [leg_for_route(r, number) for r in routes], max_duration_s,
                             cause_on_answer)
    actions = _call_controls(call_vars, max_duration_s, cause_on_answer)
    dial = "|".join([_fragment(r, number) + number for r in routes])
    actions += [
        _fail_on_single_reject(),
        ("bridge", dial),
        ("hangup", "${originate_disposition}"),
    ]
    return _document(context, destination, actions)


# --- failover by the carrier's answer: one bridge per attempt ----------------------------
# FreeSWITCH's `|` list cannot tell a carrier's 403 from a callee's 603 (both CALL_REJECTED,
# and fail_on_single_reject matches cause names only). So each attempt bridges ONE carrier
# leg; when it fails (continue_on_fail), the answer transfers the call back to the same
# destination and context, FreeSWITCH asks switchd again, and switchd reads the attempt's
# outcome from the channel (docs/routing.md "How the continuation works").
#
# The outcome variables are unset before each bridge: FreeSWITCH 1.10.12 leaves
# last_bridge_proto_specific_hangup_cause at the previous attempt's `sip:403` when the next
# attempt fails without a SIP answer (verified), which would blame the wrong carrier.
ATTEMPT_OUTCOME_VARS = ("last_bridge_proto_specific_hangup_cause", "sip_invite_failure_status",
                        "last_bridge_hangup_cause", "originate_disposition")
_UNSETS = tuple(("unset", name) for name in ATTEMPT_OUTCOME_VARS)


def render_attempt(context: str, destination: str, call_vars: dict, route, number: str,
                   max_duration_s: int, transfer_to: str,
                   cause_on_answer: str = "ALLOTTED_TIMEOUT", pause_ms: int = 0,
                   answered: bool = False) -> str:
    """Answer for one carrier attempt: call variables, one bridge to `route`, and on
    failure `transfer <transfer_to> XML <context>` so FreeSWITCH asks switchd what next.
    `pause_ms`: a `sleep` before the bridge (a leg placed again after the switch's own
    refusal waits for its throttle to refill). `answered`: the channel asking is already
    answered (a call transferred after its answer): `sched_hangup` at once, not on answer.

    call_vars must carry switchd_route_id and switchd_attempt (the continuation's keys)."""
    if "switchd_route_id" not in call_vars or "switchd_attempt" not in call_vars:
        raise ValueError("render_attempt needs switchd_route_id and switchd_attempt")
    if type(number) is not str or _NUMBER.fullmatch(number) is None:
        raise ValueError(f"invalid dialled number: {number!r}")
    target = _name(transfer_to, _EXTENSION, "transfer destination")
    ctx = _name(context, _CONTEXT, "context")
    actions = _call_controls(call_vars, max_duration_s, cause_on_answer, answered)
    actions += _UNSETS
    if pause_ms:
        if type(pause_ms) is not int or not 0 < pause_ms <= 10_000:
            raise ValueError(f"invalid pause before the bridge: {pause_ms!r} ms")
        actions.append(("sleep", str(pause_ms)))
    actions += [
        ("bridge", _fragment(route, number) + number),
        ("transfer", f"{target} XML {ctx}"),
    ]
    return _document(context, destination, actions)
