"""dialplan/validate.py: one refusal per field type, the cases seen in the field, and the
renderer using the very same rules (what a door accepts always renders)."""
from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings, strategies as st

from dialplan import validate, xml_answer
from dialplan.validate import Invalid

NAME_RULE = "may only contain letters, digits, '.', '_' and '-'"


@pytest.mark.parametrize("bad", ["bad,carrier", "ev|il", "evil${x}", "a b", "x[1]", "é"])
def test_names_refuse_dial_string_syntax(bad):
    with pytest.raises(Invalid) as info:
        validate.name(bad)
    assert str(info.value) == f"{bad!r} {NAME_RULE}"


def test_name_shape_and_length():
    assert validate.name("budgetel_gw1") == "budgetel_gw1"
    with pytest.raises(Invalid, match="must start with a letter or digit"):
        validate.name("-x")
    with pytest.raises(Invalid, match="at most 64"):
        validate.name("a" * 65)
    with pytest.raises(Invalid, match="non-empty string"):
        validate.name("")
    with pytest.raises(Invalid, match="non-empty string"):
        validate.name(5)


def test_regions_against_phonenumbers_tables():
    assert validate.region("GB") == "GB"
    with pytest.raises(Invalid, match=r"'UK' is not an ISO 3166 code: the United Kingdom is 'GB'"):
        validate.region("UK")
    with pytest.raises(Invalid, match=r"'XX' is not an ISO 3166 region code known to phonenumbers"):
        validate.region("XX")
    with pytest.raises(Invalid, match=r"upper case \('FR'\)"):
        validate.region("fr")


@pytest.mark.parametrize("kind,bad,reason", [
    ("extension", "1000|evil", "is not an extension"),
    ("extension", "1000${x}", "is not an extension"),
    ("sip_uri", "notauri", "is not a SIP URI"),
    ("sip_uri", "sip:a@b,c", "is not a SIP URI"),
    ("number", "+1 555|2", "is not a phone number"),
])
def test_did_destination_by_type(kind, bad, reason):
    with pytest.raises(Invalid, match=reason):
        validate.destination(kind, bad)


def test_good_destinations():
    assert validate.destination("extension", "1000") == "1000"
    assert validate.destination("sip_uri", "sip:support@acme.example:5060")
    assert validate.destination("number", "+33142685300")


@pytest.mark.parametrize("value,reason", [
    (-1, "-1 is out of range 0..2147483647"),
    (10 ** 12, "1000000000000 is out of range 0..2147483647"),
    (True, "True is not a whole number"),
    ("5", "'5' is not a whole number"),
])
def test_integers_in_column_range(value, reason):
    with pytest.raises(Invalid) as info:
        validate.integer(0)(value)
    assert str(info.value) == reason


@pytest.mark.parametrize("value,reason", [
    (Decimal("0.1234567"), "0.1234567 has more than 6 decimal places"),
    ("1e3", None),
    (Decimal("1000000"), "1000000 is too large (at most 999999.999999)"),
    (Decimal("-1"), "-1 is negative"),
    (0.5, "0.5 must be an exact decimal"),
    ("abc", "'abc' is not a number"),
    ("NaN", "'NaN' is not a number"),
])
def test_money_exact_or_refused(value, reason):
    if reason is None:
        assert validate.RATE(value) == Decimal("1000")
        return
    with pytest.raises(Invalid) as info:
        validate.RATE(value)
    assert str(info.value).startswith(reason)


def test_money_column_limits():
    assert validate.MONEY(Decimal("999999999999.999999"))
    with pytest.raises(Invalid, match="too large"):
        validate.MONEY(Decimal("1000000000000"))
    with pytest.raises(Invalid, match="more than 3 decimal places"):
        validate.CPS(Decimal("1.0005"))
    with pytest.raises(Invalid, match="must be greater than 0"):
        validate.CPS(0)


@pytest.mark.parametrize("check,bad,reason", [
    (validate.hostname, "acme..example", "not a domain name"),
    (validate.prefix, "44a", "not 1 to 16 digits"),
    (validate.did_number, "442079460000", "not an E.164 number"),
    (validate.caller_id, "123;x", "digits with an optional leading"),
    (validate.variable_name, "1var", "not a channel variable name"),
    (validate.context, "pub lic", "not a dialplan context name"),
    (validate.boolean, "yes", "not true or false"),
    (validate.choice("cost", "priority"), "cheap", "not one of 'cost', 'priority'"),
    (validate.list_of(validate.region), ["GB", "UK"], r"\[1\]: 'UK' is not"),
    (validate.list_of(validate.region), "GB", "must be a list"),
    (validate.safe_text, "a${b}", "contains '\\$'"),
])
def test_every_field_type_refuses(check, bad, reason):
    with pytest.raises(Invalid, match=reason):
        check(bad)


def test_record_problems_checks_destination_by_type():
    did = {"number": "+442079460000", "tenant": "acme", "destination_type": "extension",
           "destination": "1000|evil"}
    assert [k for k, _ in validate.record_problems("dids", did)] == ["destination"]


def test_renderer_uses_the_same_rules():
    assert xml_answer._GATEWAY is validate.GATEWAY
    assert xml_answer._SIP_URI is validate.SIP_URI
    assert xml_answer._EXTENSION is validate.EXTENSION
    assert xml_answer.check_value is validate.check_value


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=70))
def test_what_the_door_accepts_renders(text):
    """A name the door accepts renders as a gateway and as a channel variable value; a name
    it refuses is never one the renderer would have put in a dial string unchecked."""
    try:
        validate.name(text)
    except Invalid:
        return
    leg = xml_answer.BridgeLeg(gateway=text, number="442079460000",
                               vars={"switchd_carrier": text})
    xml = xml_answer.render_bridge("public", "442079460000", {"switchd_tenant": text},
                                   [leg], 60)
    assert f"sofia/gateway/{text}/442079460000" in xml
