"""A carrier's 302, never followed (docs/routing.md §4a, row `3xx`), from FreeSWITCH
1.10.12's own records of a leg that refused it (tests/fixtures/redirect/, captured by
tests/realswitch/test_redirect.py's scenario).

Every carrier leg carries `outbound_redirect_fatal=true`; sofia then ends the leg
REQUESTED_CHAN_UNAVAIL and keeps the 302 only as `proto_specific_hangup_cause` `sip:302`,
with no `sip_term_status`. Both paths (ESL and the switch's CDR) read the 302 from there,
so the leg is recorded as the carrier's redirect, charged to it, and costs nothing."""
from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from dialplan import causes, failover, xml_answer
from dialplan.lcr import RouteChoice
from dialplan.model import Carrier, Gateway
from switchd.accounting.cdrs.ingest import to_records
from switchd.accounting.cdrs.json_cdr import parse
from switchd.adapters.esl.events import channel_event_from_plain, to_typed
from switchd.adapters.esl.framing import parse_event_plain

FIX = Path(__file__).parent / "fixtures" / "redirect"


def test_the_switchs_event_gives_the_302_as_the_legs_status():
    body = (FIX / "redirect-b-leg.hangup-complete.txt").read_bytes()
    event = channel_event_from_plain(body)
    assert event == to_typed(parse_event_plain(body))          # fast path = full parse
    assert (event.name, event.direction, event.gateway) == (
        "CHANNEL_HANGUP_COMPLETE", "outbound", "gw_a")
    assert (event.hangup_cause, event.sip_status, event.answered_us, event.billsec) == (
        "REQUESTED_CHAN_UNAVAIL", 302, 0, 0)


def test_the_switchs_cdr_gives_the_302_and_costs_nothing():
    leg = parse((FIX / "redirect-b-leg.cdr.json").read_bytes())
    assert (leg.hangup_cause, leg.sip_status, leg.answer_us) == ("REQUESTED_CHAN_UNAVAIL", 302, 0)
    rec, _ = to_records(leg)
    assert (rec.carrier, rec.sip_status, rec.disposition) == ("alpha", 302, "carrier_failure")
    assert (rec.answered_at, rec.billed_seconds, rec.cost, rec.unrated) == (
        None, 0, Decimal("0.000000"), False)


@pytest.mark.parametrize("term, proto, status", [
    (None, "sip:302", 302), (None, "sip:301", 301), (None, "SIP:305", 305),
    (403, "sip:403", 403),          # a status FreeSWITCH gives: it wins
    (None, "sip:487", None),        # our own CANCEL's 487: no status, as before
    (None, "sip:200", None), (None, None, None), (None, "q850:44", None), (None, "sip:3O2", None),
])
def test_leg_sip_status_reads_only_a_redirect_from_the_proto_cause(term, proto, status):
    assert failover.leg_sip_status(term, proto) == status


def test_a_redirect_is_the_carriers_failure_and_fails_over():
    verdict = failover.decide(failover.FailoverTable(), "REQUESTED_CHAN_UNAVAIL", 302)
    assert (verdict.key, verdict.action, verdict.blame) == ("3xx", "next", "carrier")
    assert failover.caller_code(verdict) == 503           # the caller never hears a 302
    assert failover.blame("REQUESTED_CHAN_UNAVAIL", 302, False) == "carrier"
    assert causes.disposition("REQUESTED_CHAN_UNAVAIL", 302, False) == "carrier_failure"
    stop = failover.parse_table({"3xx": "stop"})
    assert failover.decide(stop, "REQUESTED_CHAN_UNAVAIL", 302).action == "stop"
    assert not failover.originate_fails_over(stop, "REQUESTED_CHAN_UNAVAIL", 302)
    assert failover.originate_fails_over(failover.FailoverTable(), "REQUESTED_CHAN_UNAVAIL", 302)


def test_every_carrier_leg_refuses_redirects():
    class Rate:
        prefix, rate_per_min, connect_fee = "1", Decimal("0.0050"), Decimal("0")
        initial_increment, subsequent_increment = 1, 1
    gw = Gateway("gw_a", "alpha", leg_timeout=5)
    route = RouteChoice(Carrier("alpha", (gw,)), gw, Rate())
    leg = xml_answer.leg_for_route(route, "+12125550123")
    assert leg.vars["outbound_redirect_fatal"] == "true"
    routed = xml_answer.render_routes("public", "+12125550123", {}, [route, route],
                                      "+12125550123", 60)
    assert routed.count("[outbound_redirect_fatal=true,") == 2
    attempt = xml_answer.render_attempt("public", "+12125550123",
                                        {"switchd_route_id": "r", "switchd_attempt": 1},
                                        route, "+12125550123", 60, "+12125550123")
    assert "[outbound_redirect_fatal=true," in attempt
