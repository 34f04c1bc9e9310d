from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dialplan.lcr import RouteChoice
from dialplan.model import Carrier, Gateway
from dialplan.policy import REFUSALS, refusal
from dialplan.xml_answer import (BridgeLeg, check_value, leg_for_route, render_attempt,
                                 render_bridge, render_local, render_not_found, render_refusal)

CALL = {"switchd_tenant": "acme", "switchd_route_id": "3ea30e5f-6258-4225-b4a4-31cbc0030d47",
        "switchd_direction": "outbound"}
LEGS = [BridgeLeg("carrier_a", "1003", {"leg_timeout": 30}), BridgeLeg("carrier_b", "1003")]


def actions(xml: str) -> list[tuple[str, str]]:
    root = ET.fromstring(xml.encode())
    return [(a.get("application"), a.get("data")) for a in root.iter("action")]


def test_shape_matches_the_capture(fixtures_dir):
    capture = (fixtures_dir / "xml-curl-dialplan-request.txt").read_text()
    start = capture.index("<?xml", capture.index("scenario=c "))      # the answer for 1003
    real = capture[start:capture.index("</document>", start) + len("</document>")]
    real_root = ET.fromstring(real.encode())
    ours = ET.fromstring(render_bridge("public", "1003", CALL, LEGS, 5).encode())
    for root in (real_root, ours):
        assert root.tag == "document" and root.get("type") == "freeswitch/xml"
        sec = root.find("section")
        assert sec.get("name") == "dialplan"
        cond = sec.find("context").find("extension").find("condition")
        assert cond.get("field") == "destination_number"
        assert re.fullmatch(cond.get("expression"), "1003")
    real_actions = [(a.get("application"), a.get("data")) for a in real_root.iter("action")]
    ours_actions = actions(render_bridge("public", "1003", {}, LEGS, 5))
    for a in real_actions:
        if a[0] == "set":
            assert a in ours_actions, a
    assert ("bridge", "[leg_timeout=30]sofia/gateway/carrier_a/1003|sofia/gateway/carrier_b/1003") in ours_actions


def test_bridge_actions_in_order():
    acts = actions(render_bridge("public", "+442079460000", CALL, LEGS, 300))
    assert acts[:4] == [("set", "switchd_tenant=acme"),
                        ("set", "switchd_route_id=3ea30e5f-6258-4225-b4a4-31cbc0030d47"),
                        ("set", "switchd_direction=outbound"),
                        ("set", "switchd_max_duration=300")]
    data = dict(a[1].split("=", 1) for a in acts if a[0] == "set")
    assert data["continue_on_fail"] == "true" and data["hangup_after_bridge"] == "true"
    assert data["execute_on_answer"] == "sched_hangup +300 ALLOTTED_TIMEOUT"
    assert "USER_BUSY" in data["fail_on_single_reject"]
    assert [a[0] for a in acts][-2:] == ["bridge", "hangup"]
    assert sum(a[0] == "bridge" for a in acts) == 1


def test_expression_matches_only_the_destination():
    root = ET.fromstring(render_bridge("public", "+44.20*7946", {}, LEGS, 5).encode())
    expr = root.find(".//condition").get("expression")
    assert "\\" not in expr
    assert re.fullmatch(expr, "+44.20*7946") and not re.fullmatch(expr, "+44x20*7946")


def test_leg_for_route_vars():
    class Rate:
        prefix, rate_per_min, connect_fee = "4420", Decimal("0.0120"), Decimal("0")
        initial_increment, subsequent_increment = 60, 6
    gw = Gateway("carrier_a", "a", leg_timeout=25)
    leg = leg_for_route(RouteChoice(Carrier("a", (gw,)), gw, Rate()), "+442079460000")
    acts = actions(render_bridge("public", "+442079460000", CALL, [leg], 60))
    bridge = [d for a, d in acts if a == "bridge"][0]
    assert bridge == ("[outbound_redirect_fatal=true,leg_timeout=25,media_timeout=60000,switchd_carrier=a,"
                      "switchd_rate=0.0120,switchd_connect_fee=0,"
                      "switchd_increments=60/6,switchd_prefix=4420]sofia/gateway/carrier_a/+442079460000")


def test_a_gateway_without_media_timeout_sets_none_on_its_leg():
    class Rate:
        prefix, rate_per_min, connect_fee = "4420", Decimal("0.0120"), Decimal("0")
        initial_increment, subsequent_increment = 60, 6
    gw = Gateway("carrier_a", "a", leg_timeout=25, media_timeout=0)
    leg = leg_for_route(RouteChoice(Carrier("a", (gw,)), gw, Rate()), "+442079460000")
    assert "media_timeout" not in leg.vars
    slow = Gateway("carrier_b", "b", media_timeout=5)
    assert leg_for_route(RouteChoice(Carrier("b", (slow,)), slow, Rate()),
                         "+442079460000").vars["media_timeout"] == 5000


def _route():
    class Rate:
        prefix, rate_per_min, connect_fee = "4420", Decimal("0.0120"), Decimal("0")
        initial_increment, subsequent_increment = 60, 6
    gw = Gateway("carrier_a", "a", leg_timeout=25)
    return RouteChoice(Carrier("a", (gw,)), gw, Rate())


def test_an_attempt_placed_again_sleeps_just_before_its_bridge():
    call = {**CALL, "switchd_attempt": "2"}
    acts = actions(render_attempt("public", "02079460000", call, _route(), "+442079460000", 60,
                                  "02079460000", pause_ms=1000))
    apps = [a for a, _ in acts]
    assert apps[apps.index("bridge") - 1:apps.index("bridge") + 2] == ["sleep", "bridge",
                                                                       "transfer"]
    assert ("sleep", "1000") in acts
    plain = actions(render_attempt("public", "02079460000", call, _route(), "+442079460000", 60,
                                   "02079460000"))
    assert "sleep" not in [a for a, _ in plain]


@pytest.mark.parametrize("pause", [-1, 10_001, True, 1.5, "1000"])
def test_a_pause_before_the_bridge_is_a_sane_number_of_ms(pause):
    with pytest.raises(ValueError, match="pause"):
        render_attempt("public", "1003", {**CALL, "switchd_attempt": "2"}, _route(),
                       "+442079460000", 60, "1003", pause_ms=pause)


@pytest.mark.parametrize("n", [0, -5, True, 1.5, "30"])
def test_max_duration_must_be_positive_int(n):
    with pytest.raises(ValueError):
        render_bridge("public", "1003", {}, LEGS, n)


def test_unknown_cause_refused():
    with pytest.raises(ValueError):
        render_bridge("public", "1003", {}, LEGS, 5, cause_on_answer="alloted_timeout")


def test_needs_legs_and_consistent_duration():
    with pytest.raises(ValueError):
        render_bridge("public", "1003", {}, [], 5)
    with pytest.raises(ValueError):
        render_bridge("public", "1003", {"switchd_max_duration": 10}, LEGS, 5)


def test_float_money_refused():
    with pytest.raises(TypeError):
        render_bridge("public", "1", {}, [BridgeLeg("gw", "1", {"switchd_rate": 0.01})], 5)


HOSTILE = ['a"b', "a'b", "a<b>", "a\nb", "a\rb", "a|b", "a,b", "a}b", "a{b", "a[b", "a]b",
           "${system rm -rf /}", "$${x}", "a^^:b", "a\\b", "a\x00b", "a\u2028b", "x" * 300,
           '"/><action application="hangup"/><x a="']


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_refused_everywhere(value):
    with pytest.raises(ValueError):
        render_bridge("public", "1003", {"switchd_tenant": value}, LEGS, 5)
    with pytest.raises(ValueError):
        render_bridge("public", "1003", {}, [BridgeLeg("gw", "1003", {"switchd_carrier": value})], 5)
    with pytest.raises(ValueError):
        render_refusal("public", "1003", REFUSALS["no_route"], {"switchd_tenant": value})


@pytest.mark.parametrize("bad", [{"gateway": "gw/../x"}, {"gateway": "gw|b"}, {"gateway": ""},
                                 {"number": "1003|sofia/gateway/evil/1"}, {"number": "12a"},
                                 {"number": ""}, {"number": "1 2"}])
def test_bad_gateway_or_number(bad):
    leg = BridgeLeg(**{"gateway": "gw", "number": "1003", **bad})
    with pytest.raises(ValueError):
        render_bridge("public", "1003", {}, [leg], 5)


@pytest.mark.parametrize("name", ["a=b", "a b", "1abc", "a,b", "", "a\nb"])
def test_bad_variable_names(name):
    with pytest.raises(ValueError):
        render_bridge("public", "1003", {name: "x"}, LEGS, 5)


def test_bad_context():
    with pytest.raises(ValueError):
        render_bridge('pub"lic', "1003", {}, LEGS, 5)


def test_unicode_and_xml_specials_that_are_allowed_round_trip():
    value = "Müller & Söhne — 東京 ☎ a=b;c"
    xml = render_bridge("public", "1003", {"switchd_tenant": value}, LEGS, 5)
    assert ("set", f"switchd_tenant={value}") in actions(xml)
    assert "&amp;" in xml


@given(st.text(max_size=80))
def test_any_value_is_refused_or_parses_back_without_new_actions(value):
    try:
        xml = render_bridge("public", "1003", {"switchd_tenant": value}, LEGS, 5)
    except ValueError:
        return
    acts = actions(xml)
    assert acts[0] == ("set", f"switchd_tenant={value}")
    assert len(acts) == len(actions(render_bridge("public", "1003", {"switchd_tenant": "x"}, LEGS, 5)))
    assert not any(c in value for c in ",|[]{}<>'\"^$\\\n\r")


@given(st.text(max_size=40))
def test_any_destination_is_safe(dest):
    for xml in (render_bridge("public", dest, {}, LEGS, 5),
                render_refusal("public", dest, REFUSALS["bad_number"], {})):
        root = ET.fromstring(xml.encode())
        expr = root.find(".//condition").get("expression")
        assert "$" not in expr[:-1] and "{" not in expr and "\\" not in expr
        re.compile(expr)


@pytest.mark.parametrize("reason", sorted(REFUSALS))
def test_refusals(reason):
    r = REFUSALS[reason]
    acts = actions(render_refusal("public", "+442079460000", r, CALL))
    assert ("set", f"switchd_refusal_cause={r.cause}") in acts
    assert ("set", f"switchd_refusal_reason={r.reason}") in acts
    respond = [d for a, d in acts if a == "respond"]
    assert len(respond) == 1 and respond[0].split()[0] == str(r.sip_code)
    assert acts[-1] == ("hangup", r.cause)
    assert not any(a == "bridge" for a, _ in acts)


def test_refusal_402_phrase():
    acts = actions(render_refusal("public", "1", refusal("budget_exhausted"), {}))
    assert ("respond", "402 Payment Required") in acts


def test_refusal_validation():
    @dataclass
    class Bad:
        sip_code: int = 200
        cause: str = "CALL_REJECTED"
        reason: str = "x"
    with pytest.raises(ValueError):
        render_refusal("public", "1", Bad(), {})
    with pytest.raises(ValueError):
        render_refusal("public", "1", Bad(sip_code=403, cause="NOT_A_CAUSE"), {})


def test_not_found_is_the_captured_document(fixtures_dir):
    capture = (fixtures_dir / "xml-curl-dialplan-request.txt").read_text()
    start = capture.index('<?xml', capture.index("scenario=h-notfound"))
    real = capture[start:capture.index("</document>", start) + len("</document>")]
    assert render_not_found().strip() == real.strip()


def test_check_value():
    assert check_value("0.0120") == "0.0120"
    with pytest.raises(ValueError):
        check_value("a|b")


def test_render_local_extension_and_uri():
    acts = actions(render_local("public", "+442079460001", CALL, "extension", "1001", 600))
    assert acts[-1] == ("transfer", "1001 XML default")
    assert ("set", "execute_on_answer=sched_hangup +600 ALLOTTED_TIMEOUT") in acts
    acts = actions(render_local("public", "+442079460001", CALL, "sip_uri",
                                "sip:alice@pbx.example.com:5060", 600, profile="edge"))
    assert ("bridge", "[outbound_redirect_fatal=true]sofia/edge/sip:alice@pbx.example.com:5060") in acts
    # after a failed bridge, the caller never gets the target's 3xx (a redirect's status
    # without its Contact): tests/realswitch/test_dids.py shows what FreeSWITCH does with it
    bridge = acts.index(("bridge", "[outbound_redirect_fatal=true]sofia/edge/sip:alice@pbx.example.com:5060"))
    assert acts[bridge + 1:] == [
        ("set", "sip_ignore_remote_cause=${cond('${last_bridge_proto_specific_hangup_cause:0:5}'"
                " == 'sip:3' ? true : false)}"),
        ("hangup", "${originate_disposition}")]
    acts = actions(render_local("public", "+442079460001", CALL, "extension", "1001", 600,
                                extension_mode="user", user_domain="acme.example.com"))
    assert ("bridge", "[outbound_redirect_fatal=true]user/1001@acme.example.com") in acts
    acts = actions(render_local("public", "+442079460001", CALL, "extension", "1001", 600,
                                extension_mode="user"))
    assert ("bridge", "[outbound_redirect_fatal=true]user/1001@${domain_name}") in acts


def test_render_local_sip_uri_needs_a_profile():
    with pytest.raises(ValueError, match="sofia profile"):
        render_local("public", "1", {}, "sip_uri", "sip:alice@pbx.example.com", 60)


@pytest.mark.parametrize("kind,target", [("extension", "1001 XML evil"), ("extension", "${x}"),
                                         ("sip_uri", "sip:a@b|sofia/gateway/x/1"),
                                         ("sip_uri", "alice@host"), ("number", "+4420"),
                                         ("sip_uri", "sip:a@b,c")])
def test_render_local_refuses_bad_targets(kind, target):
    with pytest.raises(ValueError):
        render_local("public", "1", {}, kind, target, 60)
