"""DIDs on the real switch: to a number (LCR for the DID's tenant), to an extension (the
transfer comes back as a second lookup, which switchd answers `not found` so the static
`extensions` context runs it), to a SIP URI (through a profile that exists), each reaching
its target as FreeSWITCH and the target see it; and a DID is reachable whatever
routing.tenant_from says (docs/routing.md, DIDs)."""
from __future__ import annotations

import pytest

from . import world

pytestmark = pytest.mark.realswitch

DID_NUMBER, DID_EXTENSION, DID_URI = "+442079460500", "+442079460501", "+442079460502"
EXTENSION = "2000"


def _world(switch) -> str:
    uas = switch.plan.carriers["gw_c"].sip        # a sipp UAS that counts what it gets
    return world.WORLD_TOML + f"""
[[dids]]
number = "{DID_NUMBER}"
tenant = "acme"
destination_type = "number"
destination = "{world.US_NUMBER}"

[[dids]]
number = "{DID_EXTENSION}"
tenant = "acme"
destination_type = "extension"
destination = "{EXTENSION}"

[[dids]]
number = "{DID_URI}"
tenant = "acme"
destination_type = "sip_uri"
destination = "sip:did-target@127.0.0.1:{uas}"
"""


MODES = {"accountcode": {"SWITCHD_ROUTING_TENANT_FROM": "accountcode"},
         "domain": {"SWITCHD_ROUTING_TENANT_FROM": "domain"},
         "variable": {}}          # the harness default: sip_h_X-Tenant


def _daemon(make_rs_daemon, realswitch, mode="variable"):
    env = {**MODES[mode], "SWITCHD_ROUTING_EXTENSION_CONTEXT": "extensions"}
    return make_rs_daemon(extra_env=env, world_toml=_world(realswitch))


@pytest.mark.parametrize("mode", sorted(MODES))
def test_did_to_number_reaches_the_carrier_in_every_tenant_from_mode(realswitch, make_rs_daemon, mode):
    rs = _daemon(make_rs_daemon, realswitch, mode)
    result = realswitch.call(DID_NUMBER, tenant=None, hold_ms=1000)   # a carrier's call: no tenant
    assert result.code == 200, result
    legs = realswitch.wait_call(result)
    assert [h.gateway for h in legs[1:]] == ["gw_a"]            # US: alpha is cheapest
    assert realswitch.invites() == {"gw_a": 1, "gw_b": 0, "gw_c": 0}
    cdr = rs.wait_cdr(legs[0].uuid)
    assert (cdr["tenant"], cdr["direction"], cdr["carrier"]) == ("acme", "inbound", "alpha")
    assert cdr["cost"] > 0


def test_did_to_extension_reaches_the_static_extension(realswitch, make_rs_daemon):
    rs = _daemon(make_rs_daemon, realswitch)
    result = realswitch.call(DID_EXTENSION, tenant=None, hold_ms=1000)
    assert result.code == 200, result
    (a_leg,) = realswitch.wait_call(result)
    # The channel went through switchd (DID), then the static extension answered it.
    assert a_leg.headers.get("variable_route_source") == "static_extension"
    assert a_leg.headers.get("variable_switchd_did_extension") == EXTENSION
    assert a_leg.billmsec >= 900
    reasons = rs.rows("SELECT reason FROM routing_decisions WHERE call_uuid = %s "
                      "ORDER BY created_at", a_leg.uuid)
    assert reasons == [("did",), ("did_extension_handoff",)]
    assert realswitch.invites() == {"gw_a": 0, "gw_b": 0, "gw_c": 0}


def test_did_to_sip_uri_reaches_the_uri(realswitch, make_rs_daemon):
    rs = _daemon(make_rs_daemon, realswitch)
    result = realswitch.call(DID_URI, tenant=None, hold_ms=1000)
    assert result.code == 200, result
    legs = realswitch.wait_call(result)
    assert len(legs) == 2 and legs[1].cause == "NORMAL_CLEARING"
    invites = realswitch.carrier("gw_c").invite_log()
    assert len(invites) == 1 and "did-target@127.0.0.1" in invites[0]["request_uri"]
    decision = rs.rows("SELECT chosen FROM routing_decisions WHERE call_uuid = %s", legs[0].uuid)
    assert decision[0][0][0]["profile"] == "callers"            # the profile the call came in on


def test_domain_mode_routes_a_tenants_own_calls_and_dids_side_by_side(realswitch, make_rs_daemon):
    # acme's callers are known by their SIP domain (the To host, here the switch's address);
    # a DID is still the DID's tenant's inbound call, never LCR'd as acme's outbound number.
    toml = _world(realswitch).replace('name = "acme"\naccountcode = "acme"\n',
                                      'name = "acme"\naccountcode = "acme"\ndomain = "127.0.0.1"\n')
    assert 'domain = "127.0.0.1"' in toml
    rs = make_rs_daemon(extra_env={"SWITCHD_ROUTING_TENANT_FROM": "domain",
                                   "SWITCHD_ROUTING_EXTENSION_CONTEXT": "extensions"},
                        world_toml=toml)
    out = realswitch.call(world.US_NUMBER, tenant=None, hold_ms=500)
    assert out.code == 200, out
    legs = realswitch.wait_call(out)
    cdr = rs.wait_cdr(legs[0].uuid)
    assert (cdr["tenant"], cdr["direction"], cdr["carrier"]) == ("acme", "outbound", "alpha")
    did = realswitch.call(DID_EXTENSION, tenant=None, hold_ms=500)
    assert did.code == 200, did
    (a_leg,) = realswitch.wait_call(did)
    assert a_leg.headers.get("variable_route_source") == "static_extension"
