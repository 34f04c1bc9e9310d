from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dialplan.numbers import InvalidNumber, Number, SpecialNumber, normalise

LONDON = Number(e164="+442079460000", digits="442079460000", region="GB", kind="fixed_line")


@pytest.mark.parametrize("raw,region", [
    ("020 7946 0000", "GB"),
    ("02079460000", "GB"),
    ("+44 20 7946 0000", "US"),
    ("+442079460000", "DE"),
    ("0044 20 7946 0000", "GB"),
    ("0044 20 7946 0000", "US"),          # 00 accepted outside its home regions
    ("011 44 20 7946 0000", "US"),        # NANP exit code
    ("011-44-20-7946-0000", "CA"),
    ("sip:+442079460000@carrier.example.net", "US"),
    ("sip:+442079460000@10.0.0.1:5060;user=phone", "US"),
    ("<sip:00442079460000@pbx>", "FR"),
    ("tel:+44-20-7946-0000", "US"),
    ("+44 (20) 7946.0000", "US"),
    ("+44/20/7946/0000", "US"),
])
def test_forms_of_one_number(raw, region):
    assert normalise(raw, region) == LONDON


def test_us_national_and_region_case():
    n = normalise("(212) 555-1234", "us")
    assert n.e164 == "+12125551234" and n.digits == "12125551234" and n.region == "US"


def test_non_geographic_has_no_region():
    n = normalise("+80012345678", "US")
    assert n.region is None and n.kind == "toll_free"


@pytest.mark.parametrize("raw,region", [
    ("911", "US"), ("112", "GB"), ("999", "GB"), ("112", "US"), ("000", "AU"),
    ("110", "DE"), ("911", "DE"), ("sip:911@pbx", "US"), ("9-1-1", "US"),
])
def test_emergency_numbers_never_normalise(raw, region):
    with pytest.raises(SpecialNumber) as e:
        normalise(raw, region)
    assert e.value.kind == "emergency"


@pytest.mark.parametrize("raw,region", [("611", "US"), ("118118", "GB")])
def test_short_numbers_are_special(raw, region):
    with pytest.raises(SpecialNumber) as e:
        normalise(raw, region)
    assert e.value.kind == "short"


@pytest.mark.parametrize("raw", [
    "", "   ", "abc", "1-800-FLOWERS", "+", "+1", "12", "1001", "*72", "#31#",
    "+44 20 7946 0000 ext 12", "+4420794600001234567", "2125551234\n", "+١٢٣",
    "0" * 200, "sip:@host", "+44 20 7946 0000; drop table",
])
def test_invalid_numbers(raw):
    with pytest.raises(InvalidNumber) as e:
        normalise(raw, "US")
    assert e.value.sip_code == 484 and e.value.reason


def test_unknown_default_region():
    with pytest.raises(InvalidNumber):
        normalise("02079460000", "XX")


def test_non_string():
    with pytest.raises(InvalidNumber):
        normalise(2079460000, "GB")  # type: ignore[arg-type]


def test_strict_false_accepts_possible_numbers():
    raw = "+12121551234"          # exchange 155 does not exist: possible, not valid
    with pytest.raises(InvalidNumber):
        normalise(raw, "US")
    assert normalise(raw, "US", strict=False).e164 == raw


# --- properties ----------------------------------------------------------------------------

def _example_numbers():
    out = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for t in (phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE):
            n = phonenumbers.example_number_for_type(region, t)
            if n is not None and phonenumbers.is_valid_number(n):
                out.append((region, n))
    return out


EXAMPLES = _example_numbers()
REGIONS = sorted(phonenumbers.SUPPORTED_REGIONS)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(EXAMPLES), st.sampled_from(REGIONS))
def test_valid_e164_round_trips(example, caller_region):
    _, n = example
    e164 = phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.E164)
    got = normalise(e164, caller_region)
    assert got.e164 == e164 and got.digits == e164[1:]
    assert normalise(got.e164, caller_region) == got


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(EXAMPLES), st.sampled_from(["", " ", "-", "."]),
       st.sampled_from(["plain", "sip", "tel", "00"]))
def test_formatting_variants_agree(example, sep, wrap):
    region, n = example
    e164 = phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.E164)
    expected = normalise(e164, region)
    variants = [
        phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.NATIONAL),
        phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.INTERNATIONAL),
        phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.RFC3966),
        e164,
    ]
    intl = phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    wrapped = {"plain": intl.replace(" ", sep), "sip": f"sip:{e164}@gw.example",
               "tel": f"tel:{e164}", "00": "00" + e164[1:]}[wrap]
    variants.append(wrapped)
    for v in variants:
        try:
            got = normalise(v, region)
        except SpecialNumber:
            assume(False)       # a national form that is also a short code in its region
        assert got == expected, v


@given(st.text(max_size=40))
def test_never_crashes_on_garbage(raw):
    try:
        n = normalise(raw, "GB")
    except (InvalidNumber, SpecialNumber):
        return
    assert n.e164.startswith("+") and n.digits.isdigit()


_CALLING_CODES = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.one_of(st.sampled_from(EXAMPLES).map(lambda e: phonenumbers.format_number(
                     e[1], phonenumbers.PhoneNumberFormat.E164)[:-3]),
                 st.sampled_from(_CALLING_CODES).map(lambda cc: f"+{cc}")),
       st.text(alphabet="0123456789", min_size=0, max_size=12),
       st.sampled_from(REGIONS + [None]))
def test_validity_from_region_and_type_equals_is_valid_number(head, tail, region):
    """numbers._valid (the region and type worked out once) against phonenumbers' own
    is_valid_number, on numbers near valid ones and on any digits after a calling code."""
    from dialplan.numbers import _valid
    try:
        parsed = phonenumbers.parse(head + tail, region)
    except phonenumbers.NumberParseException:
        return
    where = phonenumbers.region_code_for_number(parsed)
    kind = phonenumbers.number_type(parsed)
    assert _valid(parsed, where, kind) == phonenumbers.is_valid_number(parsed)


def test_start_up_compiles_every_type_pattern_routing_matches(monkeypatch):
    """compile_type_patterns covers every national-number pattern `number_type` matches:
    normalising each region's example numbers matches none outside type_patterns() (a
    missing description would leave its patterns to each region's first call)."""
    import phonenumbers
    from phonenumbers import phonenumberutil, re_util

    from dialplan import numbers
    covered = numbers.type_patterns()
    assert numbers.compile_type_patterns() == len(covered) > 1000
    assert covered <= set(re_util._COMPILED_PATTERNS)
    matched = set()
    real = phonenumberutil._match_national_number

    def recording(number, desc, allow_prefix_match):
        if desc is not None and desc.national_number_pattern:
            matched.add(desc.national_number_pattern)
        return real(number, desc, allow_prefix_match)
    monkeypatch.setattr(phonenumberutil, "_match_national_number", recording)
    routed = 0
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in (phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE):
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None:
                continue
            e164 = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
            try:
                numbers._normalise(e164, "GB", True)
                routed += 1
            except numbers.NumberError:
                pass
    assert routed > 300 and len(matched) > 500
    assert matched <= covered
