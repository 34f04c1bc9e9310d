"""A campaign on the real switch: every contact dialled once through its LCR carrier, the
pace and the concurrency cap held, each contact's outcome and each call's money taken from
what FreeSWITCH did (its CHANNEL_HANGUP_COMPLETE events, their times and billsec, and the
INVITEs sipp received).

Contacts: four French numbers (bravo, gw_b, answers; the tenant `brief` allows 3 s, so
FreeSWITCH cuts each call) then four UK numbers (alpha, gw_a, set to answer 486 busy).
"""
from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal

import pytest

from . import world
from .common import peak_overlap, poll

pytestmark = pytest.mark.realswitch

FRANCE = [f"+3314268530{i}" for i in range(4)]
UK = [f"+4420794601{i:02d}" for i in range(4)]
PACE, MAX_CONCURRENT = 2, 3


def _cost(carrier: str, prefix: str, billsec: int) -> Decimal:
    """By hand, from the world's deck: increments then the connect fee."""
    rate, fee, initial, subsequent = world.rate_of(carrier, prefix)
    if billsec <= 0:
        return Decimal(0)
    billed = initial + max(0, math.ceil((billsec - initial) / subsequent)) * subsequent
    return (Decimal(rate) * billed / 60 + Decimal(fee)).quantize(Decimal("0.000001"), ROUND_HALF_UP)


def test_a_campaign_dials_each_contact_once_at_its_pace_within_its_cap(realswitch, rs_daemon):
    realswitch.carrier("gw_a").set_mode("486")
    status, body = rs_daemon.api("POST", "/v1/campaigns", {
        "name": "rs-spring", "tenant": "brief", "pace_cps": PACE,
        "max_concurrent": MAX_CONCURRENT, "timeout_s": 5,
        "contacts": [{"number": n} for n in FRANCE + UK], "start": True})
    assert status == 201, body

    def finished():
        status, body = rs_daemon.api("GET", "/v1/campaigns/rs-spring")
        return body if body.get("state") == "completed" else None
    poll(finished, 60, "the campaign to complete")
    _, listing = rs_daemon.api("GET", "/v1/campaigns/rs-spring/contacts?limit=100")
    contacts = {c["number"]: c for c in listing["contacts"]}
    assert set(contacts) == set(FRANCE + UK)

    # Each number reached its cheapest carrier exactly once, and no other carrier.
    invited = {gw: sorted(i["request_uri"] for i in realswitch.carrier(gw).invite_log())
               for gw in ("gw_a", "gw_b", "gw_c")}
    assert [len(invited[gw]) for gw in ("gw_a", "gw_b", "gw_c")] == [4, 4, 0], invited
    for gw, numbers in (("gw_b", FRANCE), ("gw_a", UK)):
        for number in numbers:
            assert sum(number.lstrip("+") in uri for uri in invited[gw]) == 1, (number, invited)

    # FreeSWITCH's own record of every call: cause, billsec, times.
    uuids = {n: contacts[n]["call_uuid"] for n in FRANCE + UK}
    assert all(uuids.values()) and len(set(uuids.values())) == 8, contacts

    hangups = {h.uuid: h for h in realswitch.wait_hangups(uuids.values(), timeout=30)}
    for number in FRANCE:
        h = hangups[uuids[number]]
        # answered, then cut by the switch at brief's 3 s (its sched_hangup)
        assert (h.gateway, h.cause) == ("gw_b", "ALLOTTED_TIMEOUT"), h
        assert int(h.headers["Caller-Channel-Answered-Time"]) > 0 and 2 <= h.billsec <= 4, h
        assert (contacts[number]["outcome"], contacts[number]["state"]) == ("answered", "done")
    for number in UK:
        h = hangups[uuids[number]]
        assert (h.gateway, h.cause, h.sip_term_status, h.billsec) == ("gw_a", "USER_BUSY", 486, 0)
        assert contacts[number]["outcome"] == "busy"
        assert contacts[number]["hangup_cause"] == "USER_BUSY"

    # Pace and cap, on FreeSWITCH's clock: channel creation and hangup times (µs).
    spans = [(int(h.headers["Caller-Channel-Created-Time"]),
              int(h.headers["Caller-Channel-Hangup-Time"])) for h in hangups.values()]
    assert peak_overlap(spans) <= MAX_CONCURRENT
    assert peak_overlap(spans) == MAX_CONCURRENT        # the cap was reached: it held something
    starts = sorted(start for start, _ in spans)
    for i in range(len(starts) - PACE):
        # never more than PACE calls begun within one second (a little slack for the switch)
        assert starts[i + PACE] - starts[i] >= 0.85e6, starts

    # The money: each answered call billed from FreeSWITCH's billsec at bravo's rate.
    for number in FRANCE:
        cdr = rs_daemon.wait_cdr(uuids[number])
        assert (cdr["tenant"], cdr["carrier"]) == ("brief", "bravo")
        assert cdr["cost"] == _cost("bravo", "33", hangups[uuids[number]].billsec)
    for number in UK:
        cdr = rs_daemon.wait_cdr(uuids[number])
        assert cdr["answered_at"] is None and cdr["cost"] in (0, None)
        assert cdr["hangup_cause"] == "USER_BUSY"
