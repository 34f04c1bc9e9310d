"""The rules for every value that can reach a dial string, a channel variable or the XML
answer — one set, used by the renderer (dialplan/xml_answer.py) and at every door where
data enters (switchd provision, rates import, config, the originate API, the world load).

Pure: no I/O. Each check takes a value and returns it (normalised where said), or raises
Invalid whose message is the reason only — the caller adds where it came from (file,
line, field), e.g. ``world.toml: carriers[2].name: 'bad,carrier' may only contain
letters, digits, '.', '_' and '-'``.

Why these rules: a dial string splits on `,` and `|`, reads `[...]` `{...}` `<...>` as
variable blocks, `^^` changes the delimiter, `'` quotes, and `${...}` expands variables or
runs API commands; FreeSWITCH has no escape that works everywhere. So names are kept to a
plain alphabet, and free values (check_value) may not hold any of those characters.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

import phonenumbers

from dialplan import rating
from dialplan import retry as _retry


class Invalid(ValueError):
    """A value refused; the message says why (not where)."""


MAX_VALUE_LENGTH = 256
INT32_MAX = 2 ** 31 - 1     # PostgreSQL `integer`

# Patterns the renderer enforces (xml_answer imports these very objects).
VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# A variable switchd only reads from a lookup: FreeSWITCH names SIP header variables after
# the header, hyphens included (sip_h_X-Tenant).
READ_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,127}")
GATEWAY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")     # also profiles, object names
CONTEXT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
NUMBER = re.compile(r"\+?[0-9]{1,32}")                          # dialled number
EXTENSION = re.compile(r"[A-Za-z0-9_*#+.-]{1,64}")
SIP_URI = re.compile(r"sips?:[A-Za-z0-9_.+*#-]{1,64}@[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?")
DESTINATION = re.compile(r"[A-Za-z0-9+*#._-]{1,64}")
FORBIDDEN = frozenset(",|[]{}<>'\"^$\\")
FORBIDDEN_RE = re.compile("[" + re.escape("".join(sorted(FORBIDDEN))) + "]")
FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})

_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
_DID = re.compile(r"\+[0-9]{4,16}")
_PREFIX = re.compile(r"[0-9]{1,16}")
_DIAL_TARGET = re.compile(r"\+?[0-9]{1,20}")
_CALLER_ID = re.compile(r"\+?[0-9]{1,20}")
_NAME_CHARS = "letters, digits, '.', '_' and '-'"


# --- free values ------------------------------------------------------------------------
def check_value(text: str, what: str = "value") -> str:
    """Return `text` if it is safe inside `set` data and dial-string [...] blocks."""
    if len(text) > MAX_VALUE_LENGTH:
        raise Invalid(f"{what} longer than {MAX_VALUE_LENGTH} characters")
    # Fast path (every real value): printable ASCII has no Cc/Cs/Zl/Zp character, so only
    # the forbidden set needs a look, in C. Anything else takes the exact per-character
    # walk below, which also words the error.
    if text.isascii() and text.isprintable() and FORBIDDEN_RE.search(text) is None:
        return text
    for ch in text:
        if ch in FORBIDDEN:
            raise Invalid(f"{what} contains {ch!r}, which FreeSWITCH dial strings or "
                          f"variable expansion would interpret")
        if unicodedata.category(ch) in FORBIDDEN_CATEGORIES or ch in "\ufffe\uffff":
            raise Invalid(f"{what} contains control character U+{ord(ch):04X}")
    return text


def safe_text(value) -> str:
    """A free text that reaches a channel variable (check_value, reworded for a door)."""
    if not isinstance(value, str) or not value.strip():
        raise Invalid("must be a non-empty string")
    try:
        return check_value(value, repr(value))
    except Invalid as exc:
        raise Invalid(str(exc)) from None


# --- names -------------------------------------------------------------------------------
def name(value) -> str:
    """Tenant, carrier, gateway, campaign, profile names and accountcodes: they become
    channel variable values (switchd_tenant, switchd_carrier) and dial-string parts."""
    if not isinstance(value, str) or not value:
        raise Invalid("must be a non-empty string")
    if GATEWAY.fullmatch(value):
        return value
    if len(value) > 64:
        raise Invalid(f"{value[:20]!r}...: at most 64 characters")
    if re.fullmatch(r"[A-Za-z0-9_.-]+", value):
        raise Invalid(f"{value!r} must start with a letter or digit")
    raise Invalid(f"{value!r} may only contain {_NAME_CHARS}")


def context(value) -> str:
    if not isinstance(value, str) or not CONTEXT.fullmatch(value):
        raise Invalid(f"{value!r} is not a dialplan context name ({_NAME_CHARS}, "
                      f"at most 64)")
    return value


def variable_name(value) -> str:
    if not isinstance(value, str) or not VAR_NAME.fullmatch(value):
        raise Invalid(f"{value!r} is not a channel variable name (letters, digits and '_', "
                      f"not starting with a digit)")
    return value


def read_variable_name(value) -> str:
    """A channel variable switchd reads (never sets): SIP header variables keep hyphens."""
    if not isinstance(value, str) or not READ_VAR_NAME.fullmatch(value):
        raise Invalid(f"{value!r} is not a channel variable name (letters, digits, '_' and "
                      f"'-', not starting with a digit or '-')")
    return value


def hostname(value) -> str:
    if not isinstance(value, str) or not _HOSTNAME.fullmatch(value):
        raise Invalid(f"{value!r} is not a domain name (letters, digits, '-' and '.')")
    return value


def region(value) -> str:
    """An ISO 3166 region code phonenumbers has numbering tables for ('GB', not 'UK')."""
    if not isinstance(value, str):
        raise Invalid("must be an ISO 3166 region code like 'GB'")
    if value in phonenumbers.SUPPORTED_REGIONS:
        return value
    if value == "UK":
        raise Invalid("'UK' is not an ISO 3166 code: the United Kingdom is 'GB'")
    if value.upper() in phonenumbers.SUPPORTED_REGIONS:
        raise Invalid(f"{value!r}: region codes are upper case ({value.upper()!r})")
    raise Invalid(f"{value!r} is not an ISO 3166 region code known to phonenumbers")


def prefix(value) -> str:
    """An E.164 digit prefix without '+' (rate decks, allowed/blocked prefixes)."""
    if not isinstance(value, str) or not _PREFIX.fullmatch(value):
        raise Invalid(f"{value!r} is not 1 to 16 digits (an E.164 prefix without '+')")
    return value


def did_number(value) -> str:
    if not isinstance(value, str) or not _DID.fullmatch(value):
        raise Invalid(f"{value!r} is not an E.164 number with '+' (e.g. '+442079460000')")
    return value


def caller_id(value) -> str:
    if not isinstance(value, str) or not _CALLER_ID.fullmatch(value):
        raise Invalid(f"{value!r}: digits with an optional leading '+' (at most 20)")
    return value


DESTINATION_TYPES = ("extension", "sip_uri", "number")


def destination(kind: str, value) -> str:
    """A DID's destination, by its destination_type."""
    if not isinstance(value, str) or not value:
        raise Invalid("must be a non-empty string")
    if kind == "extension" and not EXTENSION.fullmatch(value):
        raise Invalid(f"{value!r} is not an extension (letters, digits and _ * # + . -, "
                      f"at most 64)")
    if kind == "sip_uri" and not SIP_URI.fullmatch(value):
        raise Invalid(f"{value!r} is not a SIP URI like 'sip:user@host[:port]'")
    if kind == "number" and not _DIAL_TARGET.fullmatch(value):
        raise Invalid(f"{value!r} is not a phone number (digits with an optional '+')")
    return value


# --- numbers and money ---------------------------------------------------------------------
def integer(low: int, high: int = INT32_MAX) -> Callable[[Any], int]:
    def check(value) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"{value!r} is not a whole number")
        if not low <= value <= high:
            raise Invalid(f"{value} is out of range {low}..{high}")
        return value
    return check


def decimal(scale: int, precision: int, *, positive: bool = False) -> Callable[[Any], Decimal]:
    """An exact decimal that fits numeric(precision, scale) without rounding: more decimal
    places than `scale` are refused, never rounded (money must be what was written)."""
    largest = Decimal(10) ** (precision - scale) - Decimal(1).scaleb(-scale)

    def check(value) -> Decimal:
        if isinstance(value, bool) or isinstance(value, float):
            raise Invalid(f"{value!r} must be an exact decimal (write it as a TOML number "
                          f"or a string), not {type(value).__name__}")
        if not isinstance(value, (int, Decimal, str)):
            raise Invalid(f"{value!r} is not a number")
        text = value.strip() if isinstance(value, str) else str(value)
        try:
            number = Decimal(text)
        except InvalidOperation:
            raise Invalid(f"{text!r} is not a number") from None
        if not number.is_finite():
            raise Invalid(f"{text!r} is not a number")
        if number < 0:
            raise Invalid(f"{text} is negative")
        if positive and number == 0:
            raise Invalid(f"{text} must be greater than 0")
        if number.as_tuple().exponent < -scale:
            raise Invalid(f"{text} has more than {scale} decimal places")
        if number > largest:
            raise Invalid(f"{text} is too large (at most {largest})")
        return number
    return check


# The integers FreeSWITCH reports (ESL event headers, mod_json_cdr variables): what it
# produces and what the ledger's columns hold. Both doors read them through switch_int, so
# a value PostgreSQL could not store (and that would fail a whole CDR batch), a time no
# datetime holds, or a negative figure is refused where it enters, never further in.
MAX_UEPOCH = 253_402_300_799_999_999     # 9999-12-31T23:59:59.999999Z, the last datetime
SWITCH_INTS: dict[str, tuple[int, int]] = {
    "uepoch": (0, MAX_UEPOCH),           # a time in µs since the epoch; 0 = never
    "sip_status": (100, 699),            # a SIP final status (RFC 3261 §7.2)
    "billsec": (0, INT32_MAX),           # call_legs.billsec: integer
    "billmsec": (0, 2 ** 63 - 1),        # call_legs.billmsec: bigint
    "sequence": (0, 2 ** 63 - 1),        # call_events.event_seq: bigint
}


def switch_int(text: str | None, kind: str) -> int | None:
    """An integer figure of FreeSWITCH's (`kind` names its range in SWITCH_INTS); None when
    absent (None or ""). Invalid, its message the reason to follow the figure's name, when
    it is not plain decimal digits with an optional '-' (FreeSWITCH writes no '+', spaces,
    '_' or other digits than 0-9) or is outside the range."""
    if text is None or text == "":
        return None
    low, high = SWITCH_INTS[kind]
    digits = text[1:] if text[:1] == "-" else text
    if not (0 < len(digits) <= 19 and digits.isascii() and digits.isdigit()):
        raise Invalid(f"is not an integer: {text[:40]!r}")
    value = int(text)
    if not low <= value <= high:
        raise Invalid(f"is out of range ({low}..{high}): {text!r}")
    return value


MONEY = decimal(6, 18)           # numeric(18,6): budgets
RATE = decimal(6, 12)            # numeric(12,6): rates, connect fees, rate caps
CPS = decimal(3, 10, positive=True)   # numeric(10,3): calls per second


def boolean(value) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"{value!r} is not true or false")
    return value


def choice(*choices: str) -> Callable[[Any], str]:
    def check(value) -> str:
        if value not in choices:
            raise Invalid(f"{value!r} is not one of " + ", ".join(repr(c) for c in choices))
        return value
    return check


def list_of(item: Callable) -> Callable[[Any], list]:
    def check(value) -> list:
        if not isinstance(value, (list, tuple)):
            raise Invalid("must be a list")
        out = []
        for i, x in enumerate(value):
            try:
                out.append(item(x))
            except Invalid as exc:
                raise Invalid(f"[{i}]: {exc}") from None
        return out
    return check


# --- the provisioned objects ----------------------------------------------------------------
@dataclass(frozen=True)
class Field:
    check: Callable[[Any], Any]
    required: bool = False
    nullable: bool = False     # "" in a provision file clears it (NULL: no limit / unset)


INCREMENT = integer(1, rating.MAX_INCREMENT)   # what rating bills by


def retry_policy(value) -> dict:
    """A tenant's `retry` table (dialplan/retry.py): delays per outcome, backoff, daily cap."""
    try:
        return _retry.parse_policy(value)
    except _retry.RetryError as exc:
        raise Invalid(str(exc).removeprefix("retry.").removeprefix("retry: ")) from None


TENANT = {
    "name": Field(name, required=True), "accountcode": Field(name, nullable=True),
    "domain": Field(hostname, nullable=True), "default_region": Field(region),
    "max_call_seconds": Field(integer(1)), "max_concurrent": Field(integer(0), nullable=True),
    "cps_limit": Field(CPS, nullable=True), "monthly_budget": Field(MONEY, nullable=True),
    "allowed_countries": Field(list_of(region)), "allowed_prefixes": Field(list_of(prefix)),
    "blocked_prefixes": Field(list_of(prefix)), "max_rate_per_min": Field(RATE, nullable=True),
    "allowed_carriers": Field(list_of(name)),
    "routing_mode": Field(choice("cost", "priority")), "enabled": Field(boolean),
    "retry": Field(retry_policy, nullable=True),
}
CARRIER = {
    "name": Field(name, required=True), "enabled": Field(boolean),
    "priority": Field(integer(-INT32_MAX)), "max_channels": Field(integer(0), nullable=True),
    "cps_limit": Field(CPS, nullable=True),
    "default_initial_increment": Field(INCREMENT), "default_subsequent_increment": Field(INCREMENT),
    # billed seconds: FreeSWITCH's billsec, or whole started seconds of billmsec by agreement
    "billing_rounding": Field(choice("billsec", "ceil_ms")),
}
GATEWAY_FIELDS = {
    "name": Field(name, required=True), "profile": Field(name),
    "position": Field(integer(0)), "leg_timeout": Field(integer(1, 3600)),
    "media_timeout": Field(integer(0, 86400)), "enabled": Field(boolean),
}
DID = {
    "number": Field(did_number, required=True), "tenant": Field(name, required=True),
    "destination_type": Field(choice(*DESTINATION_TYPES), required=True),
    "destination": Field(lambda v: v, required=True),     # by type: see record_problems
    "profile": Field(name, nullable=True),   # sofia profile for a sip_uri destination
}
CAMPAIGN = {
    "name": Field(name, required=True), "tenant": Field(name, required=True),
    "max_concurrent": Field(integer(0), nullable=True), "cps_limit": Field(CPS, nullable=True),
}
SPECS = {"tenants": TENANT, "carriers": CARRIER, "gateways": GATEWAY_FIELDS, "dids": DID,
         "campaigns": CAMPAIGN}


def check_field(spec: Field, value):
    """The value checked and normalised; None for a cleared nullable ("" or None)."""
    if spec.nullable and (value is None or value == ""):
        return None
    return spec.check(value)


def record_problems(section: str, record: dict) -> list[tuple[str, str]]:
    """[(key, reason)] for one object as stored or as written: every key present is
    checked (unknown keys are ignored here), plus the checks across keys."""
    spec = SPECS[section]
    problems = []
    for key, value in record.items():
        if key in spec:
            try:
                check_field(spec[key], value)
            except Invalid as exc:
                problems.append((key, str(exc)))
    if section == "dids" and record.get("destination_type") in DESTINATION_TYPES:
        try:
            destination(record["destination_type"], record.get("destination"))
        except Invalid as exc:
            problems.append(("destination", str(exc)))
    return problems
