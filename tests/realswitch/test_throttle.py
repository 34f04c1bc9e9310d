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


def test_originate_attempts_the_switch_throttles_cost_no_carrier_its_health(realswitch,
                                                                           make_rs_daemon):
    """With `fsctl sps 2` FreeSWITCH starts one new session a second (its budget refilled
    each second; what was left of the old one is used up first, which may take all of the
    first second). Bursts of four originates at once until the switch throttles some
    attempts, which it does at the latest in the burst after its next refill: FreeSWITCH
    answers those DESTINATION_OUT_OF_ORDER before any INVITE leaves it, the originate goes
    on to the next carrier, and no carrier's health moves."""
    rs_daemon = make_rs_daemon(world_toml=UNCAPPED_WORLD)
    assert "+OK" in realswitch.api("fsctl sps 2")
    pool = gevent.get_hub().threadpool
    bodies = []
    for _ in range(100):            # each burst takes >= 50 ms: past a refill long before
        asks = [pool.spawn(rs_daemon.originate, {"tenant": "acme",
                                                 "destination": world.US_NUMBER})
                for _ in range(4)]
        for status, body in (a.get() for a in asks):
            assert status == 200, body
            bodies.append(body)
            if body["answered"]:
                realswitch.api(f"uuid_kill {body['attempts'][-1]['leg_uuid']}")
        if any(a["result"] == THROTTLED for b in bodies for a in b["attempts"]):
            break
    attempts = [a for b in bodies for a in b["attempts"]]
    throttled = [a for a in attempts if a["result"] == THROTTLED]
    assert throttled, "FreeSWITCH never throttled an attempt"
    assert all(a["hangup_cause"] == "DESTINATION_OUT_OF_ORDER" for a in throttled)
    # every other attempt was placed and answered; a throttled one never left the switch
    assert sum(realswitch.invites().values()) == len(attempts) - len(throttled)
    assert all(b["outcome"] == ("answered" if b["answered"] else "congestion") for b in bodies)
    assert rs_daemon.rows("SELECT name, health, consecutive_failures FROM carriers "
                          "ORDER BY name") == [("alpha", 100, 0), ("bravo", 100, 0),
                                               ("charlie", 100, 0)]
