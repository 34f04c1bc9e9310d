"""Dialled strings → E.164, or a clear reason why not.

Every outbound decision starts here, so this module is strict: a number that is not valid
for its country raises `InvalidNumber` (the router answers SIP 484), and an emergency or
short/special number raises `SpecialNumber`, so it can never drift into least-cost routing
by accident (the router uses an explicit route for it, or refuses).

Accepted input forms (all normalise to the same `Number`):
  national            "020 7946 0000" with default region GB
  international, '+'  "+44 20 7946 0000"
  international, 00   "0044 20 7946 0000" (ITU prefix; accepted whatever the default region)
  international, IDD  "011 44 20 7946 0000" (the region's own exit code, e.g. NANP 011)
  SIP/tel junk        "sip:+442079460000@carrier.example;user=phone", "<tel:+44-20-7946-0000>"
Visual separators (space, '-', '.', '(', ')', '/') are dropped. Letters (vanity numbers),
'*' and '#' are refused: feature codes and keypad words are not destinations for LCR.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import phonenumbers
from phonenumbers import re_util, shortnumberinfo

# phonenumbers compiles its metadata regexes through re.compile, whose cache holds 512
# patterns; a worldwide destination mix needs more than that, so without this every
# decision recompiled some of them (~40 % of a routing decision). The patterns come from
# the fixed metadata, so the cache is bounded. Process-wide, on purpose.
re_util.enable_pattern_cache()

__all__ = ["Number", "NumberError", "InvalidNumber", "SpecialNumber", "normalise",
           "EMERGENCY_EVERYWHERE", "compile_type_patterns", "type_patterns"]

# The number-type descriptions of a region's metadata that `number_type` (and so every
# strict normalisation) matches a number against.
_TYPE_DESCS = ("general_desc", "fixed_line", "mobile", "toll_free", "premium_rate",
               "shared_cost", "personal_number", "voip", "pager", "uan", "voicemail")


def _type_patterns(metadata) -> list[str]:
    descs = (getattr(metadata, name, None) for name in _TYPE_DESCS)
    return [d.national_number_pattern for d in descs
            if d is not None and d.national_number_pattern]


def type_patterns() -> set[str]:
    """Every region's (and non-geographic entity's) number-type patterns."""
    found: set[str] = set()
    for region in phonenumbers.SUPPORTED_REGIONS:
        found.update(_type_patterns(phonenumbers.PhoneMetadata.metadata_for_region(region)))
    for code in phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS:
        metadata = phonenumbers.PhoneMetadata.metadata_for_nongeo_region(code)
        if metadata is not None:
            found.update(_type_patterns(metadata))
    return found


def compile_type_patterns() -> int:
    """Compile every number-type pattern into the pattern cache now (~1,400, ~0.3 s): the
    daemon calls this once at start, so the first number it routes to each region does
    not pay ~0.5 ms compiling them (a worldwide mix kept paying it for thousands of calls
    after a restart). Returns how many patterns there are."""
    patterns = type_patterns()
    for pattern in sorted(patterns):
        re_util.re_compile(pattern)
    return len(patterns)

# Bound the work done on hostile input before phonenumbers sees it.
MAX_RAW_LENGTH = 128

# Dialled anywhere, these reach emergency services in some country; a switch must never
# send them to the cheapest carrier, even when the caller's default region does not list
# them (a roaming user dialling 112 from a US-homed account, say).
# Exact matches only: "1120" is not "112". The default region's own list comes from
# phonenumbers (shortnumberinfo.is_emergency_number).
EMERGENCY_EVERYWHERE = frozenset({"112", "911", "999", "000", "110", "119"})
_SEPARATORS = re.compile(r"[\s\-.()/\u00a0\u2010-\u2015]")
_ALLOWED = re.compile(r"\+?[0-9]+")
_TYPE_NAMES = {v: k.lower() for k, v in vars(phonenumbers.PhoneNumberType).items()
               if k.isupper()}


@dataclass(frozen=True)
class Number:
    e164: str            # '+442079460000'
    digits: str          # '442079460000' (what rate-deck prefixes are matched against)
    region: str | None   # ISO 3166 region, 'GB'; None for non-geographic (+800, +882 ...)
    kind: str            # phonenumbers type name: 'fixed_line', 'mobile', 'toll_free', ...


class NumberError(ValueError):
    """Base of the two ways a dialled string can fail to become a routable number."""


class InvalidNumber(NumberError):
    """Not a valid number: the router answers 484 (INVALID_NUMBER_FORMAT)."""
    sip_code = 484

    def __init__(self, reason: str, raw: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


class SpecialNumber(NumberError):
    """Emergency or short/special number: never least-cost routed."""

    def __init__(self, kind: str, digits: str, region: str):
        super().__init__(f"{kind} number {digits!r} (region {region})")
        self.kind = kind          # 'emergency' | 'short'
        self.digits = digits
        self.region = region


def _strip_sip(raw: str) -> str:
    """Reduce a SIP/tel URI or display form to its user part."""
    s = raw.strip(" ").strip("<>\"' ")
    low = s.lower()
    for scheme in ("sips:", "sip:", "tel:"):
        if low.startswith(scheme):
            s = s[len(scheme):]
            # URI parameters (;user=phone, ;phone-context=...) only exist inside a URI;
            # on a bare number a ';' is junk and is refused below.
            s = s.split("@", 1)[0].split(";", 1)[0]
            break
    else:
        s = s.split("@", 1)[0]      # bare user@host
    return s


def _clean(raw: str) -> str:
    if not isinstance(raw, str):
        raise InvalidNumber("number must be a string", repr(raw))
    if len(raw) > MAX_RAW_LENGTH:
        raise InvalidNumber(f"longer than {MAX_RAW_LENGTH} characters", raw[:32])
    if any(ord(c) < 32 or ord(c) == 127 for c in raw):
        # A newline in a dialled string is an injection attempt, not formatting.
        raise InvalidNumber("control characters in number", raw[:32])
    s = _SEPARATORS.sub("", _strip_sip(raw))
    if not s:
        raise InvalidNumber("empty number", raw)
    if not _ALLOWED.fullmatch(s):
        raise InvalidNumber("only digits and a leading '+' are allowed", raw)
    return s


def _candidates(s: str) -> list[str]:
    """Readings of the cleaned string, most specific first."""
    out = [s]
    # '00' is the ITU-recommended international prefix; phonenumbers only honours it where
    # it is the region's own exit code, but operators expect it everywhere (SIP trunks).
    if s.startswith("00") and len(s) > 4:
        out.append("+" + s[2:])
    return out


def _valid(parsed: phonenumbers.PhoneNumber, where: str | None, kind: int) -> bool:
    """`phonenumbers.is_valid_number(parsed)` from the region and type already known: it
    is `is_valid_number_for_region(parsed, region_code_for_number(parsed))`, which holds
    when the region belongs to the number's calling code (or is non-geographic) and the
    number matches a type pattern of that metadata, the one `number_type` reads
    (tests/test_dialplan_numbers.py holds the two equal)."""
    if where is None or kind == phonenumbers.PhoneNumberType.UNKNOWN:
        return False
    return where == "001" or parsed.country_code == phonenumbers.country_code_for_valid_region(where)


# normalise() is a pure function of (raw, default_region, strict) and its results are
# immutable, and dialled numbers repeat (the same customers, the same destinations), so
# the last outcomes are kept: ~10 µs for a hit against ~100-200 µs through phonenumbers.
# Bounded (an LRU, in C), so a flood of distinct numbers costs memory for at most this many.
NORMALISE_CACHE_SIZE = 16384


def normalise(raw: str, default_region: str, *, strict: bool = True) -> Number:
    """Return the E.164 `Number` for `raw`, dialled by a user homed in `default_region`.

    strict=True requires `phonenumbers.is_valid_number` (a known, allocated range);
    strict=False accepts `is_possible_number` (right length), for tenants whose traffic
    goes to ranges newer than the metadata. Raises InvalidNumber or SpecialNumber.
    """
    if (type(raw) is not str or len(raw) > MAX_RAW_LENGTH
            or not (default_region is None or type(default_region) is str)):
        return _normalise(raw, default_region, strict)
    outcome = _cached(raw, default_region, strict)
    if type(outcome) is Number:
        return outcome
    # A refusal is cached as (class, args); each caller gets its own exception object,
    # so tracebacks never pile up on a shared one.
    cls, args = outcome
    raise cls(*args)


@functools.lru_cache(maxsize=NORMALISE_CACHE_SIZE)
def _cached(raw: str, default_region, strict: bool):
    try:
        return _normalise(raw, default_region, strict)
    except SpecialNumber as exc:
        return SpecialNumber, (exc.kind, exc.digits, exc.region)
    except InvalidNumber as exc:
        return InvalidNumber, (exc.reason, exc.raw)


def _normalise(raw: str, default_region: str, strict: bool) -> Number:
    region = (default_region or "").upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise InvalidNumber(f"unknown default region {default_region!r}", str(raw))
    s = _clean(raw)

    # Emergency first, on the national form exactly as dialled: "911", "112", "999".
    if not s.startswith("+"):
        if shortnumberinfo.is_emergency_number(s, region) or s in EMERGENCY_EVERYWHERE:
            raise SpecialNumber("emergency", s, region)

    last_error = "not a valid number"
    for cand in _candidates(s):
        try:
            parsed = phonenumbers.parse(cand, region)
        except phonenumbers.NumberParseException as exc:
            last_error = f"unparseable: {exc._msg}"
            continue
        # The region and the type are each worked out once: is_valid_number, then
        # region_code_for_number, then number_type took the region three times and
        # matched the type patterns twice (the costliest part of a routing decision).
        where = phonenumbers.region_code_for_number(parsed)
        kind = phonenumbers.number_type(parsed)
        ok = _valid(parsed, where, kind) if strict else phonenumbers.is_possible_number(parsed)
        if ok:
            e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
            # "001" is phonenumbers' code for non-geographic entities (+800, +882 ...).
            return Number(e164=e164, digits=e164[1:],
                          region=None if where in (None, "001", "ZZ") else where,
                          kind=_TYPE_NAMES.get(kind, "unknown"))
        last_error = "not a valid number" if strict else "not a possible number"

    # Not a full number: a carrier/service short code ("611", "118118") is special, not LCR.
    if not s.startswith("+") and len(s) <= 8:
        try:
            parsed = phonenumbers.parse(s, region)
        except phonenumbers.NumberParseException:
            parsed = None
        if parsed is not None and shortnumberinfo.is_valid_short_number_for_region(parsed, region):
            raise SpecialNumber("short", s, region)
    raise InvalidNumber(last_error, raw)
