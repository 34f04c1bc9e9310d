"""The simulator's static XML dialplan: what FreeSWITCH runs when mod_xml_curl gets `not
found` (or no usable answer). A matching static extension plays the local user answering
(the switch answers the caller and parks it, no carrier leg: tests/realswitch/test_dids.py
verifies this on FreeSWITCH 1.10.12); a context or number without one stays
NO_ROUTE_DESTINATION."""
from __future__ import annotations

from test_sim_dialplan import NOT_FOUND, act, doc, form, hangup_complete, world  # noqa: F401

def TRANSFER(ext: str, ctx: str = "default"):
    """switchd's DID answer: `transfer EXT XML ctx`, then `not found` for the lookup in ctx."""
    return lambda body: (NOT_FOUND if form(body)["Hunt-Context"] == ctx
                         else doc(act("transfer", f"{ext} XML {ctx}")))


def _names(client, uuid):
    return [e["Event-Name"] for e in client.events if e.get("Unique-ID") == uuid]


def test_default_static_extension_answers_like_a_local_user(world):
    sim, dp, client = world(TRANSFER("1000"))
    call = sim.place_call("+442079460100", hold_seconds=20)
    assert call.wait(5) and call.result == "answered"
    assert call.legs == [] and call.hangup_cause == "NORMAL_CLEARING"
    assert [(d, c, s) for d, c, s in call.lookups] == [
        ("+442079460100", "public", "xml_curl"), ("1000", "default", "static_fallback")]
    a = hangup_complete(client, call.uuid)
    assert _names(client, call.uuid) == ["CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_HANGUP",
                                         "CHANNEL_HANGUP_COMPLETE"]
    assert a["variable_route_source"] == "static_extension"
    assert a["Hangup-Cause"] == "NORMAL_CLEARING" and a.get("Other-Leg-Unique-ID") is None
    assert int(a["variable_billsec"]) == 20 and a["variable_endpoint_disposition"] == "ANSWER"


def test_no_matching_static_extension_is_no_route(world):
    sim, dp, client = world(TRANSFER("2000"))          # default holds only 1xxx
    call = sim.place_call("+442079460100")
    assert call.wait(5) and call.result == "refused"
    assert call.hangup_cause == "NO_ROUTE_DESTINATION" and call.legs == []
    assert hangup_complete(client, call.uuid)["variable_sip_term_status"] == "404"


def test_added_static_extension_in_its_own_context(world):
    sim, dp, client = world(TRANSFER("2000", "extensions"), static_dialplan=[])
    sim.add_static_extension("extensions", r"^(2[0-9]{3})$")
    call = sim.place_call("+442079460501", hold_seconds=3)
    assert call.wait(5) and call.result == "answered" and call.legs == []
    assert hangup_complete(client, call.uuid)["variable_billsec"] == "3"
    # Another context has none: no route, as before.
    other = world(TRANSFER("1000"), static_dialplan=[])[0].place_call("+442079460100")
    assert other.wait(5) and other.hangup_cause == "NO_ROUTE_DESTINATION"


def test_static_extension_with_its_own_actions_and_a_whole_document(world):
    sim, _, _ = world(TRANSFER("1500"), static_dialplan=[
        ("default", r"^15\d\d$", [("respond", "486 Busy Here")])])
    call = sim.place_call("+442079460100")
    assert call.wait(5) and call.hangup_cause == "USER_BUSY"
    sim2, _, _ = world(TRANSFER("7"), static_dialplan=doc(act("answer", "") + act("park", ""),
                                                          context="default"))
    call2 = sim2.place_call("+442079460100", hold_seconds=1)
    assert call2.wait(5) and call2.result == "answered"


def test_a_kill_ends_a_parked_call(world):
    sim, dp, client = world(TRANSFER("1000"))
    call = sim.place_call("+442079460100", hold_seconds=600)
    assert client.wait_for(lambda evs: any(e["Event-Name"] == "CHANNEL_ANSWER" for e in evs))
    assert sim.kill_call(call.uuid, "MANAGER_REQUEST")
    assert call.wait(5) and call.hangup_cause == "MANAGER_REQUEST" and call.result == "answered"
