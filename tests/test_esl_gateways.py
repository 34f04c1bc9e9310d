"""`sofia xmlstatus gateway` as captured from FreeSWITCH 1.10.12, and the down set it rebuilds."""
from __future__ import annotations

import pytest

from switchd.routing.books import HealthBook
from switchd.adapters.esl import commands
from switchd.adapters.esl.events import GatewayEvent, to_typed
from switchd.adapters.esl.framing import FrameParser, parse_event
from switchd.adapters.esl.gateways import GatewayStatusError, parse_xmlstatus
from switchd.sim.api import sofia_xmlstatus_gateway


def test_captured_all_up(fixtures_dir):
    statuses = parse_xmlstatus((fixtures_dir / "sofia-xmlstatus-gateway.xml").read_text("latin-1"))
    assert sorted(statuses) == ["carrier_a", "carrier_b", "carrier_c"]
    assert all(s.up and s.profile == "edge" and s.state == "NOREG" for s in statuses.values())


def test_captured_one_down(fixtures_dir):
    statuses = parse_xmlstatus(
        (fixtures_dir / "sofia-xmlstatus-gateway-one-down.xml").read_text("latin-1"))
    assert {n for n, s in statuses.items() if not s.up} == {"carrier_b"}
    assert statuses["carrier_b"].status == "DOWN"


@pytest.mark.parametrize("reply", ["-ERR sofia Command not found!\n", "", "Invalid Gateway!\n",
                                   "<gateways><gateway>", "<html/>"])
def test_not_a_status_document(reply):
    with pytest.raises(GatewayStatusError):
        parse_xmlstatus(reply)


def test_sync_replaces_what_events_said(fixtures_dir):
    book = HealthBook()
    for name in ("carrier_a", "carrier_b", "carrier_c"):        # FreeSWITCH shutting down
        book.gateway_event(name, "delete", None, None)
    assert book.down_gateways == {"carrier_a", "carrier_b", "carrier_c"}
    statuses = parse_xmlstatus(
        (fixtures_dir / "sofia-xmlstatus-gateway-one-down.xml").read_text("latin-1"))
    # carrier_x is provisioned but the switch has no such gateway: a bridge would fail.
    book.sync_gateways(statuses, {"carrier_a", "carrier_b", "carrier_x"})
    assert book.down_gateways == {"carrier_b", "carrier_x"} and book.gateways_synced


def test_captured_gateway_delete_events(fixtures_dir):
    raw = (fixtures_dir / "events-plain-gateway-delete-at-shutdown.txt").read_bytes()
    parser = FrameParser()
    parser.feed(raw)
    events = []
    while (frame := parser.next_frame()) is not None:
        headers = parse_event(frame)
        if headers:
            events.append(to_typed(headers))
    deletes = [e for e in events if isinstance(e, GatewayEvent)]
    assert [(e.kind, e.gateway) for e in deletes] == [
        ("delete", "carrier_c"), ("delete", "carrier_b"), ("delete", "carrier_a")]


def test_command_and_simulator_reply_agree():
    assert commands.sofia_gateway_status() == "api sofia xmlstatus gateway"

    class Sim:
        gateway_status = {"gw1": "UP", "gw2": "DOWN"}
    statuses = parse_xmlstatus(sofia_xmlstatus_gateway(Sim, []))
    assert {n: s.up for n, s in statuses.items()} == {"gw1": True, "gw2": False}
