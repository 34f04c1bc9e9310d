"""The continuation: each carrier attempt is one bridge; a failed attempt transfers back and
the next lookup carries its outcome as FreeSWITCH 1.10.12 posts it (docs/routing.md). The
router answers the next carrier's bridge or the caller's code, by the failover table, and
logs every step."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from dialplan.failover import parse_table
from dialplan.model import Carrier, Gateway, Tenant, World
from dialplan.ratedeck import RateDeckBuilder
from switchd.routing.books import HealthBook, SpendBook
from switchd.adapters.caps.base import Scope
from switchd.adapters.caps.local import LocalCaps
from switchd.config import load_config
from switchd.calls.policing import CapsGate
from switchd.routing.router import Router

CALL = "6f1c3a52-5d0e-4a51-9a1d-2f3f0b7b1c01"


@pytest.fixture
def setup():
    carriers = {name: Carrier(name=name, gateways=(Gateway(name=f"gw_{name}", carrier=name,
                                                           leg_timeout=7),))
                for name in ("alpha", "beta", "gamma")}
    world = World(tenants={"acme": Tenant(name="acme", accountcode="acme", default_region="GB")},
                  carriers=carriers, dids={})
    decks = {name: RateDeckBuilder().add("44", Decimal(rate)).build()
             for name, rate in (("alpha", "0.01"), ("beta", "0.02"), ("gamma", "0.03"))}
    decisions = []
    health = HealthBook()
    backend = LocalCaps()
    router = Router(world=lambda: world, decks=lambda: decks, health=health,
                    caps=CapsGate(backend, load_config(environ={})), spend=SpendBook({}),
                    settings={"tenant_from": "accountcode", "tenant_variable": "switchd_tenant",
                              "max_routes": 5, "health_cooldown": 60, "emergency_gateway": ""},
                    record=decisions.append,
                    clock=lambda: datetime(2026, 11, 30, tzinfo=timezone.utc))
    return router, decisions, health, backend


def _actions(xml: str):
    return [(a.get("application"), a.get("data")) for a in ET.fromstring(xml).iter("action")]


def _vars(actions) -> dict:
    return dict(d.split("=", 1) for a, d in actions if a == "set")


def _first(router, **extra):
    form = {"Unique-ID": CALL, "Caller-Destination-Number": "02079460123",
            "Caller-Context": "public", "variable_accountcode": "acme",
            "Caller-Caller-ID-Name": "Alice", "Caller-Caller-ID-Number": "+441234567890", **extra}
    return form, router.route(form)


def _after(form, decision, cause, proto=None, failure_status=None):
    """The continuation lookup FreeSWITCH posts after the attempt failed: the channel's
    variables (everything the answer set) plus the outcome variables it sets itself."""
    nxt = dict(form)
    for key, value in _vars(_actions(decision.xml)).items():
        nxt["variable_" + key] = value
    target = [d for a, d in _actions(decision.xml) if a == "transfer"][0].split()[0]
    nxt["Caller-Destination-Number"] = target
    nxt["variable_originate_disposition"] = cause
    nxt["variable_last_bridge_hangup_cause"] = cause
    if proto:
        nxt["variable_last_bridge_proto_specific_hangup_cause"] = proto
    if failure_status:
        nxt["variable_sip_invite_failure_status"] = str(failure_status)
    return nxt


def test_first_answer_is_one_carrier_then_transfer_back(setup):
    router, decisions, _, _ = setup
    form, decision = _first(router)
    actions = _actions(decision.xml)
    apps = [a for a, _ in actions]
    bridges = [d for a, d in actions if a == "bridge"]
    assert len(bridges) == 1 and bridges[0].count("sofia/gateway/") == 1
    assert "sofia/gateway/gw_alpha/+442079460123" in bridges[0] and "leg_timeout=7" in bridges[0]
    # the outcome variables are cleared before the bridge (FreeSWITCH leaves them stale)
    assert apps.index("unset") < apps.index("bridge") < apps.index("transfer")
    assert {d for a, d in actions if a == "unset"} >= {
        "last_bridge_proto_specific_hangup_cause", "sip_invite_failure_status",
        "originate_disposition"}
    assert ("transfer", "02079460123 XML public") in actions
    v = _vars(actions)
    assert v["continue_on_fail"] == "true" and v["hangup_after_bridge"] == "true"
    assert v["switchd_attempt"] == "1" and v["switchd_route_id"] == decision.id
    assert v["switchd_tried"] == "alpha/gw_alpha" and v["switchd_e164"] == "+442079460123"
    assert "fail_on_single_reject" not in v
    assert decisions[-1].reason == "lcr" and decisions[-1].result == "routed"


@pytest.mark.parametrize("cause, proto, code", [
    ("CALL_REJECTED", "sip:403", None), ("NO_USER_RESPONSE", "sip:480", None),
    ("NORMAL_TEMPORARY_FAILURE", "sip:503", None), ("ALLOTTED_TIMEOUT", None, None),
    ("RECOVERY_ON_TIMER_EXPIRE", None, None), ("DESTINATION_OUT_OF_ORDER", "sip:502", None),
    ("GATEWAY_DOWN", None, None),
    ("NORMAL_UNSPECIFIED", "sip:900", None), ("CALL_REJECTED", None, 401),
])
def test_carrier_side_failures_go_to_the_next_carrier(setup, cause, proto, code):
    router, decisions, _, backend = setup
    form, first = _first(router)
    decision = router.route(_after(form, first, cause, proto, code))
    actions = _actions(decision.xml)
    bridges = [d for a, d in actions if a == "bridge"]
    assert len(bridges) == 1 and "sofia/gateway/gw_beta/+442079460123" in bridges[0]
    v = _vars(actions)
    assert v["switchd_attempt"] == "2" and v["switchd_tried"] == "alpha/gw_alpha beta/gw_beta"
    assert v["switchd_route_id"] == first.id            # the same call's route
    assert decision.id != first.id                      # its own routing-log row
    assert decision.reason.startswith("failover: attempt 1 via alpha/gw_alpha: " + cause)
    assert decision.chosen[0]["carrier"] == "beta" and decision.result == "routed"
    assert decisions[-1] is decision
    assert ("transfer", "02079460123 XML public") in actions
    # no second admission: the call keeps its one slot per scope
    assert backend.count(Scope("global", "all")) == 1
    assert backend.count(Scope("tenant", "acme")) == 1


@pytest.mark.parametrize("cause, proto, heard", [
    ("USER_BUSY", "sip:486", "486 Busy Here"), ("USER_BUSY", "sip:600", "600 Busy Everywhere"),
    ("CALL_REJECTED", "sip:603", "603 Decline"), ("UNALLOCATED_NUMBER", "sip:404", "404 Not Found"),
    ("INVALID_NUMBER_FORMAT", "sip:484", "484 Address Incomplete"),
    ("ORIGINATOR_CANCEL", "sip:487", "487 Request Terminated"),
])
def test_callee_answers_stop_and_the_caller_hears_the_code(setup, cause, proto, heard):
    router, decisions, _, _ = setup
    form, first = _first(router)
    decision = router.route(_after(form, first, cause, proto))
    actions = _actions(decision.xml)
    assert "bridge" not in [a for a, _ in actions]
    assert ("respond", heard) in actions
    assert decision.result == "refused" and decision.reason.startswith("failover stop:")
    assert decision.sip_code == int(heard.split()[0])


def test_a_leg_our_switch_failed_is_placed_again_on_the_same_route_after_a_pause(setup):
    """DESTINATION_OUT_OF_ORDER with no SIP answer: FreeSWITCH itself failed the leg (its
    sessions-per-second throttle, max-sessions, RTP ports). The same route gets it once
    more, a second later, instead of the next carrier at once."""
    router, decisions, health, backend = setup
    form, first = _first(router)
    decision = router.route(_after(form, first, "DESTINATION_OUT_OF_ORDER"))
    actions = _actions(decision.xml)
    apps = [a for a, _ in actions]
    assert apps.index("sleep") == apps.index("bridge") - 1
    assert ("sleep", "1000") in actions
    assert "sofia/gateway/gw_alpha/+442079460123" in [d for a, d in actions if a == "bridge"][0]
    v = _vars(actions)
    assert v["switchd_attempt"] == "2" and v["switchd_tried"] == "alpha/gw_alpha"
    assert v["switchd_placed_again"] == "alpha/gw_alpha"
    assert decision.chosen[0]["carrier"] == "alpha" and decision.result == "routed"
    assert "our switch failed the leg: alpha/gw_alpha once more in 1000 ms" in decision.reason
    assert backend.count(Scope("global", "all")) == 1

    # failed the same way again: the next carrier, at once
    again = _after(_after(form, first, "DESTINATION_OUT_OF_ORDER"), decision,
                   "DESTINATION_OUT_OF_ORDER")
    third = router.route(again)
    actions = _actions(third.xml)
    assert "sleep" not in [a for a, _ in actions]
    assert "gw_beta" in [d for a, d in actions if a == "bridge"][0]
    assert _vars(actions)["switchd_tried"] == "alpha/gw_alpha beta/gw_beta"


def test_a_leg_placed_again_is_not_one_of_the_calls_routes(setup):
    router, _, _, _ = setup
    router.settings["max_routes"] = 1
    form, first = _first(router)
    again = router.route(_after(form, first, "DESTINATION_OUT_OF_ORDER"))
    assert "gw_alpha" in [d for a, d in _actions(again.xml) if a == "bridge"][0]
    last = router.route(_after(_after(form, first, "DESTINATION_OUT_OF_ORDER"), again,
                               "NORMAL_TEMPORARY_FAILURE", "sip:503"))
    assert last.reason.startswith("failover exhausted: attempt 2 via alpha/gw_alpha")


def test_stale_proto_cause_is_not_read_when_cleared(setup):
    """FreeSWITCH leaves last_bridge_proto_specific_hangup_cause from the previous attempt;
    the answer unsets it before each bridge, so a ring-out after a 403 is a ring-out."""
    router, _, _, _ = setup
    form, first = _first(router)
    second = router.route(_after(form, first, "CALL_REJECTED", "sip:403"))
    nxt = _after(_after(form, first, "CALL_REJECTED", "sip:403"), second, "ALLOTTED_TIMEOUT")
    nxt.pop("variable_last_bridge_proto_specific_hangup_cause", None)   # unset by the answer
    third = router.route(nxt)
    assert "gw_gamma" in [d for a, d in _actions(third.xml) if a == "bridge"][0]
    assert "-> timeout: next" in third.reason


def test_exhausted_carriers_answer_the_last_code(setup):
    router, _, _, _ = setup
    form, first = _first(router)
    second = router.route(_after(form, first, "NORMAL_TEMPORARY_FAILURE", "sip:503"))
    third = router.route(_after(form, second, "CALL_REJECTED", "sip:403"))
    # the form of attempt 3 carries the variables of attempt 2's answer
    last = router.route(_after(_after(form, second, "X"), third, "CALL_REJECTED", "sip:403"))
    assert ("respond", "403 Forbidden") in _actions(last.xml)
    assert last.reason.startswith("failover exhausted: attempt 3 via gamma/gw_gamma")


def test_operator_table_is_followed(setup):
    router, _, _, _ = setup
    router.settings["failover"] = parse_table({"486": "next", "403": "stop"})
    form, first = _first(router)
    busy = router.route(_after(form, first, "USER_BUSY", "sip:486"))
    assert "gw_beta" in [d for a, d in _actions(busy.xml) if a == "bridge"][0]
    forbidden = router.route(_after(form, first, "CALL_REJECTED", "sip:403"))
    assert ("respond", "403 Forbidden") in _actions(forbidden.xml)


@pytest.mark.parametrize("name, number, clean_name, clean_number", [
    ('Bad \\"q\\" <x>', "+441234567890", "Bad q x", "+441234567890"),
    ("x${uuid}", "12${uuid}34", "xuuid", "anonymous"),
    ("a%0Ab", "1001", "a b", "1001"),
    ("A" * 300, "1001", "A" * 48, "1001"),
    ("bad\udcffbytes", "", "badbytes", "anonymous"),
])
def test_hostile_caller_ids_route_with_a_clean_caller_id(setup, name, number, clean_name,
                                                         clean_number):
    router, _, _, _ = setup
    form, decision = _first(router, **{"Caller-Caller-ID-Name": name,
                                       "Caller-Caller-ID-Number": number})
    assert decision.result == "routed"
    v = _vars(_actions(decision.xml))
    assert v["effective_caller_id_name"] == clean_name
    assert v["effective_caller_id_number"] == clean_number
    nxt = router.route(_after(form, decision, "CALL_REJECTED", "sip:403"))
    v = _vars(_actions(nxt.xml))
    assert (v["effective_caller_id_name"], v["effective_caller_id_number"]) == (clean_name,
                                                                                clean_number)


@pytest.mark.parametrize("cause, sip, charged", [
    ("CALL_REJECTED", 403, True), ("NO_USER_RESPONSE", 480, True),
    ("NORMAL_TEMPORARY_FAILURE", 503, True), ("RECOVERY_ON_TIMER_EXPIRE", None, True),
    ("USER_BUSY", 486, False), ("CALL_REJECTED", 603, False), ("UNALLOCATED_NUMBER", 404, False),
    ("INVALID_NUMBER_FORMAT", 484, False), ("ORIGINATOR_CANCEL", 487, False),
    ("USER_BUSY", 600, False), ("ALLOTTED_TIMEOUT", 487, False),
    ("NORMAL_UNSPECIFIED", 900, False), ("DESTINATION_OUT_OF_ORDER", None, False),
    ("DESTINATION_OUT_OF_ORDER", 904, False),
])
def test_health_charges_only_carrier_side_failures(cause, sip, charged):
    book = HealthBook()
    now = datetime(2026, 11, 30, tzinfo=timezone.utc)
    book.record_leg("alpha", cause, sip, answered=False, now=now)
    assert book.get("alpha").score == (95 if charged else 100)


def test_ten_hostile_caller_id_legs_disable_nobody():
    """The field failure: ten calls whose legs sofia could not send took all carriers down."""
    book = HealthBook()
    now = datetime(2026, 11, 30, tzinfo=timezone.utc)
    for _ in range(30):
        for carrier in ("alpha", "beta", "gamma"):
            book.record_leg(carrier, "NORMAL_UNSPECIFIED", 900, answered=False, now=now)
    assert all(book.get(c).score == 100 and book.get(c).disabled_at is None
               for c in ("alpha", "beta", "gamma"))


def test_a_carrier_with_two_gateways_gets_both_tried_in_order(setup):
    router, _, _, _ = setup
    world = router.world()
    two = Carrier(name="alpha", gateways=(Gateway(name="gw_alpha", carrier="alpha", position=0),
                                          Gateway(name="gw_alpha2", carrier="alpha", position=1)))
    world.carriers["alpha"] = two
    form, first = _first(router)
    assert "gw_alpha/" in [d for a, d in _actions(first.xml) if a == "bridge"][0]
    second = router.route(_after(form, first, "NORMAL_TEMPORARY_FAILURE", "sip:503"))
    assert "sofia/gateway/gw_alpha2/" in [d for a, d in _actions(second.xml) if a == "bridge"][0]
    assert _vars(_actions(second.xml))["switchd_tried"] == "alpha/gw_alpha alpha/gw_alpha2"


def test_a_continuation_for_an_unknown_tenant_is_refused_cleanly(setup):
    router, _, _, _ = setup
    form, first = _first(router)
    nxt = _after(form, first, "CALL_REJECTED", "sip:403")
    nxt["variable_switchd_tenant"] = "gone"
    decision = router.route(nxt)
    assert decision.result == "refused" and ("respond", "403 Forbidden") in _actions(decision.xml)
    assert decision.destination == "+442079460123"


def test_a_refusal_with_every_carrier_unhealthy_says_so(setup):
    """Ten carrier failures each disable all three carriers: the refused decision names
    them and the rule, not a number nobody sells."""
    router, decisions, health, _ = setup
    now = datetime(2026, 11, 30, tzinfo=timezone.utc)
    for _ in range(10):
        for carrier in ("alpha", "beta", "gamma"):
            health.record_leg(carrier, "NORMAL_TEMPORARY_FAILURE", 503, answered=False, now=now)
    _first(router)
    assert decisions[-1].result == "refused"
    assert decisions[-1].reason == ("no carrier can take the number "
                                    "(alpha: unhealthy, beta: unhealthy, gamma: unhealthy)")


def _full(name: str, limit: int = 1):
    """A world where carrier `name` has `limit` channels, all taken by other calls."""
    def make(setup):
        router, decisions, health, backend = setup
        world = router.world()
        carrier = world.carriers[name]
        world.carriers[name] = Carrier(name=carrier.name, gateways=carrier.gateways,
                                       max_channels=limit)
        for n in range(limit):
            assert backend.acquire(f"other-{n}", [Scope("carrier", name, limit)])
        return router, decisions, backend
    return make


def test_a_full_carrier_is_passed_over_before_it_is_dialled(setup):
    """The continuation moves the call's carrier slot to the next carrier before answering
    its bridge: beta is full, so gamma's bridge comes back, the call holds gamma's slot and
    never beta's, and the routing log says beta was full."""
    router, decisions, backend = _full("beta")(setup)
    form, first = _first(router)
    assert backend.count(Scope("carrier", "alpha")) == 1
    decision = router.route(_after(form, first, "CALL_REJECTED", "sip:403"))
    bridges = [d for a, d in _actions(decision.xml) if a == "bridge"]
    assert len(bridges) == 1 and "sofia/gateway/gw_gamma/" in bridges[0]
    assert _vars(_actions(decision.xml))["switchd_tried"] == "alpha/gw_alpha gamma/gw_gamma"
    assert decision.reason.endswith("; passed over: beta (cap reached)") and decision.result == "routed"
    assert [backend.count(Scope("carrier", c)) for c in ("alpha", "beta", "gamma")] == [0, 1, 1]


def test_every_untried_carrier_full_ends_the_call_503_congestion(setup):
    router, decisions, backend = _full("beta")(setup)
    _full("gamma")((router, decisions, None, backend))
    form, first = _first(router)
    decision = router.route(_after(form, first, "CALL_REJECTED", "sip:403"))
    actions = _actions(decision.xml)
    assert not [d for a, d in actions if a == "bridge"]
    assert decision.result == "refused" and decision.sip_code == 503
    assert ("respond", "503 Service Unavailable") in actions
    assert ("hangup", "NORMAL_CIRCUIT_CONGESTION") in actions
    assert decision.reason.endswith(
        "; passed over: beta (cap reached), gamma (cap reached)")
    assert backend.count(Scope("carrier", "alpha")) == 1    # still held: nothing moved


def test_a_carrier_at_its_calls_per_second_is_passed_over_too(setup):
    """A failover is a new INVITE to the next carrier: it counts against that carrier's
    cps_limit, and a carrier at it is passed over like a full one."""
    router, decisions, _, backend = setup
    world = router.world()
    beta = world.carriers["beta"]
    world.carriers["beta"] = Carrier(name="beta", gateways=beta.gateways, cps_limit=Decimal(1))
    from switchd.adapters.caps.base import CpsScope
    assert backend.acquire("other", [Scope("global", "x")], [CpsScope("carrier", "beta", Decimal(1))])
    form, first = _first(router)
    decision = router.route(_after(form, first, "CALL_REJECTED", "sip:403"))
    assert decision.chosen[0]["carrier"] == "gamma" and decision.reason.endswith(
        "; passed over: beta (cps limit reached)")


def test_an_answered_call_transferred_back_is_ended_not_failed_over(setup):
    """A carrier's REFER after the answer: FreeSWITCH blind-transfers the caller to the
    Refer-To number, and the lookup comes with the answered bridge's SUCCESS (seen on
    FreeSWITCH 1.10.12, tests/realswitch/test_transfer.py). Neither a failover (the callee
    rung again through beta, alpha charged) nor the transfer's number is routed."""
    router, decisions, health, backend = setup
    form, first = _first(router)
    transferred = _after(form, first, "SUCCESS")
    transferred["Caller-Destination-Number"] = "19005550100"
    decision = router.route(transferred)
    actions = _actions(decision.xml)
    assert [a for a, _ in actions] == ["set", "hangup"]
    assert ("hangup", "NORMAL_CLEARING") in actions
    assert not any(a in ("bridge", "respond", "transfer") for a, _ in actions)
    assert decision.result == "transfer_refused" and decision.as_row()["result"] == "refused"
    assert decision.reason == ("transferred after answer: alpha/gw_alpha answered; the "
                               "transfer to 19005550100 is not followed")
    assert health.get("alpha").score == 100 and health.get("beta").score == 100
    assert backend.count(Scope("carrier", "alpha")) == 1      # the call's slots are its own
    assert decisions[-1] is decision


def test_a_channel_already_answered_gets_its_limit_at_once(setup):
    """A caller's blind transfer sends the carrier's answered leg into the dialplan: its
    limit starts now (sched_hangup), as execute_on_answer would never run on it."""
    router, _, _, _ = setup
    _, fresh = _first(router)
    assert ("set", "execute_on_answer=sched_hangup +3600 ALLOTTED_TIMEOUT") in _actions(fresh.xml)
    _, transferred = _first(router, **{"Answer-State": "answered"})
    actions = _actions(transferred.xml)
    limit = int(_vars(actions)["switchd_max_duration"])
    assert ("sched_hangup", f"+{limit} ALLOTTED_TIMEOUT") in actions
    assert not any(d.startswith("execute_on_answer") for a, d in actions if a == "set")
    assert [a for a, _ in actions].index("sched_hangup") < [a for a, _ in actions].index("bridge")
