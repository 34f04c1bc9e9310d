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


def _user_daemon(make_rs_daemon, realswitch):
    """routing.extension_mode = user: a DID to an extension is bridged to the directory user
    (fsconfig's DIRECTORY_USER, whose device is gw_c's sipp) in acme's SIP domain."""
    toml = _world(realswitch).replace('name = "acme"\naccountcode = "acme"\n',
                                      'name = "acme"\naccountcode = "acme"\ndomain = "127.0.0.1"\n')
    assert 'domain = "127.0.0.1"' in toml
    return make_rs_daemon(extra_env={"SWITCHD_ROUTING_EXTENSION_MODE": "user"}, world_toml=toml)


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


def test_did_to_a_directory_user_reaches_the_users_device(realswitch, make_rs_daemon):
    rs = _user_daemon(make_rs_daemon, realswitch)
    result = realswitch.call(DID_EXTENSION, tenant=None, hold_ms=1000)
    assert result.code == 200, result
    a, device = realswitch.wait_call(result)
    assert device.cause == "NORMAL_CLEARING" and device.billmsec >= 900
    invites = realswitch.carrier("gw_c").invite_log()
    assert len(invites) == 1 and f"{EXTENSION}@127.0.0.1" in invites[0]["request_uri"]
    assert realswitch.invites() == {"gw_a": 0, "gw_b": 0, "gw_c": 1}
    cdr = rs.wait_cdr(a.uuid)
    assert (cdr["tenant"], cdr["direction"], cdr["carrier"], cdr["cost"]) == (
        "acme", "inbound", None, 0)


@pytest.mark.parametrize("target", ["sip_uri", "user"])
@pytest.mark.parametrize("host", ["elsewhere", "own"])
def test_a_did_targets_redirect_is_not_followed(realswitch, make_rs_daemon, elsewhere, host,
                                                target):
    """The SIP URI or directory user a DID is bridged to answers 302. Followed, sofia would INVITE the
    Contact on the same leg ("elsewhere": a customer's PBX sending the call back out
    through a carrier that trusts this switch's address, a call nobody routed, capped or
    billed), or, with FreeSWITCH's own address, transfer the caller into the dialplan with
    the Contact's number. Neither happens: the target's leg ends REQUESTED_CHAN_UNAVAIL
    sip:302, the caller gets 503, nobody else gets an INVITE and nobody is charged."""
    rs = (_daemon if target == "sip_uri" else _user_daemon)(make_rs_daemon, realswitch)
    did = DID_URI if target == "sip_uri" else DID_EXTENSION
    number = world.US_NUMBER[1:]
    contact = (f"sip:{number}@{elsewhere.ip}:{elsewhere.ports.sip}" if host == "elsewhere"
               else f"sip:{number}@127.0.0.1:{realswitch.plan.sip}")
    realswitch.carrier("gw_c").set_mode("redirect", contact=contact)
    result = realswitch.call(did, tenant=None, hold_ms=1000)
    a, leg = realswitch.wait_call(result)
    assert result.code == 503, result           # not the 302, which has no Contact here
    assert (leg.cause, leg.sip_term_status, leg.billmsec) == ("REQUESTED_CHAN_UNAVAIL", None, 0)
    assert leg.headers["variable_proto_specific_hangup_cause"] == "sip:302"
    assert realswitch.invites() == {"gw_a": 0, "gw_b": 0, "gw_c": 1}
    assert elsewhere.invites() == 0
    assert a.headers["Caller-Destination-Number"] == did              # not transferred
    assert not rs.rows("SELECT 1 FROM routing_decisions WHERE destination LIKE %s", f"%{number}%")
    cdr = rs.wait_cdr(a.uuid)
    assert (cdr["tenant"], cdr["direction"], cdr["answered_at"]) == ("acme", "inbound", None)
    assert (cdr["carrier"], cdr["cost"]) == (None, 0)


@pytest.mark.parametrize("status", [486, 603])
def test_a_did_targets_refusal_reaches_the_caller_as_it_was(realswitch, make_rs_daemon, status):
    rs = _daemon(make_rs_daemon, realswitch)
    realswitch.carrier("gw_c").set_mode(str(status))
    result = realswitch.call(DID_URI, tenant=None, hold_ms=1000)
    assert result.code == status, result
    a, target = realswitch.wait_call(result)
    assert target.sip_term_status == status
    assert realswitch.invites() == {"gw_a": 0, "gw_b": 0, "gw_c": 1}
    assert rs.wait_cdr(a.uuid)["cost"] == 0


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
