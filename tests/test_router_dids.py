"""Inbound DIDs through the router (no I/O): each destination type, the extension hand-off
lookup, the SIP-URI profile, and tenant resolution under every tenant_from mode."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from decimal import Decimal

import pytest

from dialplan.model import Carrier, Did, Gateway, Tenant, World
from dialplan.ratedeck import RateDeckBuilder
from switchd.routing.books import HealthBook, SpendBook
from switchd.adapters.caps.local import LocalCaps
from switchd.config import load_config
from switchd.calls.policing import CapsGate
from switchd.routing.router import Router

DIDS = {
    "+442079460100": Did("+442079460100", "acme", "extension", "1000"),
    "+442079460101": Did("+442079460101", "acme", "sip_uri", "sip:alice@127.0.0.1:43999"),
    "+442079460102": Did("+442079460102", "acme", "number", "+12125550100"),
    "+442079460103": Did("+442079460103", "globex", "sip_uri", "sip:bob@pbx.example.com",
                         profile="pbx"),
}


def router(**settings) -> Router:
    world = World(
        tenants={"acme": Tenant(name="acme", accountcode="acme-code", domain="acme.example.com",
                                default_region="GB", max_call_seconds=600),
                 "globex": Tenant(name="globex", accountcode="globex-code",
                                  domain="globex.example.com")},
        carriers={"alpha": Carrier(name="alpha", gateways=(
            Gateway(name="gw_a", carrier="alpha", profile="edge"),))},
        dids=DIDS)
    deck = RateDeckBuilder().add("1", Decimal("0.02")).add("44", Decimal("0.01")).build()
    base = {"tenant_from": "accountcode", "tenant_variable": "switchd_tenant", "max_routes": 5,
            "health_cooldown": 60, "emergency_gateway": ""}
    return Router(world=lambda: world, decks=lambda: {"alpha": deck}, health=HealthBook(),
                  caps=CapsGate(LocalCaps(), load_config(environ={})), spend=SpendBook({}),
                  settings={**base, **settings})


def lookup(dialled, context="public", **variables):
    form = {"Unique-ID": "3f0c5a52-0000-4000-8000-000000000001",
            "Caller-Destination-Number": dialled, "Caller-Context": context,
            "variable_sofia_profile_name": "edge"}
    form.update({f"variable_{k}": v for k, v in variables.items()})
    return form


def actions(xml):
    return [(a.get("application"), a.get("data")) for a in ET.fromstring(xml).iter("action")]


# A carrier's INVITE as each tenant_from mode sees it: no accountcode, the To host is the
# switch's own address (not a tenant domain), no tenant variable.
CARRIER_SIDE = {"accountcode": {}, "domain": {"sip_to_host": "127.0.0.1"}, "variable": {}}


@pytest.mark.parametrize("mode", ["accountcode", "domain", "variable"])
@pytest.mark.parametrize("did,kind", [("+442079460100", "transfer"),
                                      ("+442079460101", "bridge"),
                                      ("+442079460102", "bridge")])
def test_every_did_reachable_under_every_tenant_from_mode(mode, did, kind):
    decision = router(tenant_from=mode).route(lookup(did, **CARRIER_SIDE[mode]))
    assert (decision.result, decision.direction, decision.tenant) == ("routed", "inbound", "acme")
    assert kind in [a for a, _ in actions(decision.xml)]
    assert ("set", "switchd_direction=inbound") in actions(decision.xml)


@pytest.mark.parametrize("mode,variables", [
    ("accountcode", {"accountcode": "globex-code"}),
    ("domain", {"domain_name": "globex.example.com"}),
    ("variable", {"switchd_tenant": "globex"})])
def test_a_did_names_its_own_tenant_whoever_dials_it(mode, variables):
    # globex's user dials acme's DID: the call is acme's (the DID's tenant), as from outside.
    decision = router(tenant_from=mode).route(lookup("+442079460102", **variables))
    assert (decision.result, decision.tenant) == ("routed", "acme")
    assert ("set", "switchd_tenant=acme") in actions(decision.xml)


@pytest.mark.parametrize("mode,variables", [
    ("accountcode", {"accountcode": "globex-code"}),
    ("domain", {"domain_name": "globex.example.com"}),
    ("variable", {"switchd_tenant": "globex"})])
def test_outbound_still_resolves_the_tenant_in_every_mode(mode, variables):
    decision = router(tenant_from=mode).route(lookup("+12125550123", **variables))
    assert (decision.result, decision.direction, decision.tenant) == ("routed", "outbound", "globex")


def test_unknown_number_without_tenant_is_refused_404():
    decision = router().route(lookup("+442079469999"))
    assert (decision.result, decision.sip_code, decision.reason) == ("refused", 404, "unknown DID")


def test_did_to_number_goes_through_lcr_for_the_dids_tenant():
    decision = router().route(lookup("442079460102"))      # digits without '+' match too
    bridge = dict(actions(decision.xml))["bridge"]
    assert "sofia/gateway/gw_a/+12125550100" in bridge
    assert decision.tenant == "acme" and decision.destination == "+12125550100"


def test_sip_uri_goes_through_the_profile_the_call_came_in_on():
    acts = actions(router().route(lookup("+442079460101")).xml)
    assert ("bridge", "[outbound_redirect_fatal=true]sofia/edge/sip:alice@127.0.0.1:43999") in acts


def test_sip_uri_profile_precedence():
    # The DID's own profile, then routing.sip_uri_profile, then the arriving profile,
    # then a provisioned gateway's.
    assert ("bridge", "[outbound_redirect_fatal=true]sofia/pbx/sip:bob@pbx.example.com") in actions(
        router(sip_uri_profile="conf").route(lookup("+442079460103")).xml)
    assert ("bridge", "[outbound_redirect_fatal=true]sofia/conf/sip:alice@127.0.0.1:43999") in actions(
        router(sip_uri_profile="conf").route(lookup("+442079460101")).xml)
    form = lookup("+442079460101")
    del form["variable_sofia_profile_name"]
    assert ("bridge", "[outbound_redirect_fatal=true]sofia/edge/sip:alice@127.0.0.1:43999") in actions(router().route(form).xml)


def test_extension_transfer_then_its_own_lookup_is_not_found():
    r = router()
    first = r.route(lookup("+442079460100"))
    acts = actions(first.xml)
    assert acts[-1] == ("transfer", "1000 XML default")
    assert ("set", "switchd_did_extension=1000") in acts
    # FreeSWITCH's lookup for that transfer: same channel (variables kept), context default.
    again = r.route(lookup("1000", context="default", switchd_did_extension="1000",
                           switchd_tenant="acme", accountcode="acme-code"))
    assert again.result == "routed" and again.reason == "did_extension_handoff"
    assert 'status="not found"' in again.xml


def test_hand_off_only_for_the_transferred_extension_in_its_context():
    r = router()
    # A user in context default dialling out is routed as ever, not handed off.
    out = r.route(lookup("+12125550123", context="default", accountcode="acme-code"))
    assert out.direction == "outbound" and "not found" not in out.xml
    # The marker with another number or in another context is no hand-off either.
    other = r.route(lookup("1001", context="default", switchd_did_extension="1000"))
    assert "not found" not in other.xml
    wrong_ctx = r.route(lookup("1000", context="public", switchd_did_extension="1000"))
    assert "not found" not in wrong_ctx.xml


def test_extension_context_is_configurable():
    r = router(extension_context="pbx")
    assert actions(r.route(lookup("+442079460100")).xml)[-1] == ("transfer", "1000 XML pbx")
    assert "not found" in r.route(lookup("1000", context="pbx", switchd_did_extension="1000")).xml


def test_extension_mode_user_bridges_the_directory_user():
    acts = actions(router(extension_mode="user").route(lookup("+442079460100")).xml)
    assert ("bridge", "[outbound_redirect_fatal=true]user/1000@acme.example.com") in acts
    assert not any(a == "transfer" for a, _ in acts)
