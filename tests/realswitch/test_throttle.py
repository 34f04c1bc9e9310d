"""FreeSWITCH's own sessions-per-second throttle on the real switch: an originate attempt
it refuses is the switch's congestion, not the carrier's fault (docs/routing.md, `local`
causes). Read from FreeSWITCH's job results and the carriers' own INVITE counts."""
from __future__ import annotations

import re

import gevent
import pytest

from dialplan import causes
from switchd.calls.originate import ATTEMPT_END_WAIT_S

from . import world

pytestmark = pytest.mark.realswitch

THROTTLED = "-ERR DESTINATION_OUT_OF_ORDER"


# No daily cap per number: the bursts below may need more than its default 20 originates.
UNCAPPED_WORLD = world.WORLD_TOML.replace(
    'max_call_seconds = 3600\n', 'max_call_seconds = 3600\nretry = { daily_cap = "none" }\n', 1)


def _first_tries_refused(body: dict) -> list[int]:
    """Indexes of the attempts the switch refused that were a route's first try (the
    attempt before them was not a refusal on the same gateway)."""
    attempts = body["attempts"]
    return [i for i, a in enumerate(attempts) if a["result"] == THROTTLED
            and not (i and attempts[i - 1]["result"] == THROTTLED
                     and attempts[i - 1]["gateway"] == a["gateway"])]


def test_a_leg_the_switch_throttles_is_placed_again_on_the_cheapest_carrier(realswitch,
                                                                            make_rs_daemon):
    """With `fsctl sps 2` FreeSWITCH starts one new session a second (its budget refilled
    each second; what was left of the old one is used up first). Pairs of originates at
    once until the switch throttles one: FreeSWITCH answers it DESTINATION_OUT_OF_ORDER
    before any INVITE leaves it, and switchd places that leg once more on the same carrier
    (alpha, the cheapest) rather than failing over to a dearer one; no carrier's health
    moves."""
    rs_daemon = make_rs_daemon(world_toml=UNCAPPED_WORLD)
    assert "+OK" in realswitch.api("fsctl sps 2")
    pool = gevent.get_hub().threadpool
    bodies = []
    for _ in range(30):            # each pair takes >= 50 ms: past a refill long before
        asks = [pool.spawn(rs_daemon.originate, {"tenant": "acme",
                                                 "destination": world.US_NUMBER})
                for _ in range(2)]
        for status, body in (a.get() for a in asks):
            assert status == 200, body
            bodies.append(body)
            if body["answered"]:
                realswitch.api(f"uuid_kill {body['attempts'][-1]['leg_uuid']}")
        if any(_first_tries_refused(b) for b in bodies):
            break
    attempts = [a for b in bodies for a in b["attempts"]]
    throttled = [a for a in attempts if a["result"] == THROTTLED]
    assert throttled, "FreeSWITCH never throttled an attempt"
    assert all(a["hangup_cause"] == "DESTINATION_OUT_OF_ORDER" and a["sip_status"] is None
               for a in throttled)
    # every refused first try was placed again, on the same gateway
    for body in bodies:
        for i in _first_tries_refused(body):
            assert body["attempts"][i + 1]["gateway"] == body["attempts"][i]["gateway"], body
    assert any(b["answered"] and b["attempts"][-1]["gateway"] == "gw_a"
               and b["attempts"][0]["result"] == THROTTLED for b in bodies), bodies
    # every other attempt was placed and answered; a throttled one never left the switch
    invites = realswitch.invites()
    assert sum(invites.values()) == len(attempts) - len(throttled)
    assert invites["gw_a"] == sum(a["gateway"] == "gw_a" for a in attempts
                                  if a["result"] != THROTTLED)
    assert all(b["outcome"] == ("answered" if b["answered"] else "congestion") for b in bodies)
    assert rs_daemon.rows("SELECT name, health, consecutive_failures FROM carriers "
                          "ORDER BY name") == [("alpha", 100, 0), ("bravo", 100, 0),
                                               ("charlie", 100, 0)]
    # FreeSWITCH made no channel for a throttled attempt: no event names it. So switchd
    # places it again one pause after the job's result (1 s), not after waiting for a
    # hangup event that never comes (2 s). Timed on FreeSWITCH's clock: from the refused
    # attempt's job result to the next attempt's channel (or job result, refused again);
    # the bound halves the difference.
    created = {e["Unique-ID"]: int(e["Event-Date-Timestamp"])
               for e in realswitch.events("CHANNEL_CREATE")}
    assert not created.keys() & {a["leg_uuid"] for a in throttled}
    placed = {m.group(1): int(e["Event-Date-Timestamp"])
              for e in realswitch.events("BACKGROUND_JOB")
              if (m := re.search(r"origination_uuid='?([0-9a-f-]{36})",
                                 e.get("Job-Command-Arg", "")))}
    placed.update(created)
    gaps = [(placed[b["attempts"][i + 1]["leg_uuid"]] - placed[b["attempts"][i]["leg_uuid"]])
            / 1e6 for b in bodies for i in _first_tries_refused(b)]
    bound = (causes.SWITCH_REFUSED_PAUSE_MS / 1000 + ATTEMPT_END_WAIT_S) / 2
    assert gaps and all(gap < bound for gap in gaps), gaps


def test_a_callers_carrier_leg_the_switch_throttles_goes_to_the_cheapest_a_second_later(
        realswitch, rs_daemon):
    """With `fsctl sps 2` (one new session a second) a caller's call takes the second's
    session, and its carrier leg, asked for milliseconds later, is refused ("Throttle
    Error!": no channel, DESTINATION_OUT_OF_ORDER). switchd's continuation answers a 1 s
    sleep and the same gateway, which then gets its session: the call is answered on
    alpha, no dearer carrier is dialled. Read from FreeSWITCH's hangup events (their
    creation times) and the carriers' INVITE counts."""
    assert "+OK" in realswitch.api("fsctl sps 2")
    placed = 0                      # calls that reached a carrier (one INVITE each)
    for _ in range(10):
        result = realswitch.call(world.US_NUMBER, headers={"X-Tenant": "acme"}, hold_ms=500)
        legs = realswitch.wait_call(result)
        if not legs:                # the caller's own session fell in a spent second
            continue
        a, *carriers = legs
        assert result.code == 200, (result, legs)     # every carrier throttled in turn
        assert len(carriers) == 1, legs
        placed += 1
        if _created_us(carriers[0]) - _created_us(a) >= 1_000_000:
            break                   # the carrier leg came a second later: it was throttled
    else:
        pytest.fail("FreeSWITCH never throttled a carrier leg in 10 calls")
    assert carriers[0].gateway == "gw_a" and carriers[0].billmsec > 0
    assert realswitch.invites() == {"gw_a": placed, "gw_b": 0, "gw_c": 0}
    rs_daemon.wait_until(lambda: any(
        "our switch failed the leg: alpha/gw_a once more in 1000 ms" in reason
        for reason, in rs_daemon.rows("SELECT reason FROM routing_decisions "
                                      "WHERE call_uuid = %s", a.uuid)),
        what="the continuation's step in the routing log")
    cdr = rs_daemon.wait_cdr(a.uuid)
    assert (cdr["carrier"], cdr["first_choice_carrier"]) == ("alpha", "alpha")
    assert rs_daemon.rows("SELECT name, health FROM carriers ORDER BY name") == [
        ("alpha", 100), ("bravo", 100), ("charlie", 100)]


def _created_us(leg) -> int:
    return int(leg.headers["Caller-Channel-Created-Time"])
