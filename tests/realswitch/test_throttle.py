"""FreeSWITCH's own sessions-per-second throttle on the real switch: an originate attempt
it refuses is the switch's congestion, not the carrier's fault (docs/routing.md, `local`
causes). Read from FreeSWITCH's job results and the carriers' own INVITE counts."""
from __future__ import annotations

import gevent
import pytest

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
