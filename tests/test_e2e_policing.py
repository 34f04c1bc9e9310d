"""End to end policing: max duration and concurrency caps through real `switchd run` processes.

The simulator plays FreeSWITCH in this process; each daemon is a real subprocess
(tests/daemon_harness.py); PostgreSQL and Redis are real. Outcomes are read back from
PostgreSQL (routing decisions, CDRs), the daemon's HTTP endpoints (/metrics, /readyz) and
Redis (slot sets), always by polling with a deadline.

Time: the daemon compares the switch's event timestamps with its own wall clock (the
watchdog), so every simulator here runs at time_scale=1.0 and calls are seconds long.
"""
from __future__ import annotations

import re
import time

import gevent
import pytest
import redis

from switchd.adapters.caps.base import Scope
from switchd.adapters.caps.redis_backend import RedisCaps
from switchd.demo_world import WORLD_TOML, write_decks
from switchd.adapters.devredis import RedisProcess
from switchd.admin.provision import provision
from switchd.admin.rates_import import import_rates
from switchd.sim import GatewayBehaviour, Simulator
from daemon_harness import DaemonProcess, metric, rows, wait_for

pytestmark = pytest.mark.slow

PASSWORD = "e2e-policing"
QUICK = GatewayBehaviour(answer_delay_s=0.2, fail_delay_s=0.1)
UK_FIXED = "0207946{:04d}"          # acme (GB) dials London: budgetel, then globex, then primo
BERLIN = "+49301234{:04d}"          # globex first
TENANT = Scope("tenant", "acme")
SLOTS = "{switchd}:slots:"


# --- world, switch and daemon ------------------------------------------------------------------
def provision_world(url, directory, *, max_call_seconds=3600, max_concurrent=200,
                    max_channels: dict | None = None) -> str:
    """The demo world with the tenant's limits and carriers' channel caps changed."""
    text = WORLD_TOML.replace("max_call_seconds = 3600", f"max_call_seconds = {max_call_seconds}")
    text = text.replace("max_concurrent = 200", f"max_concurrent = {max_concurrent}")
    for carrier, channels in (max_channels or {}).items():
        text, n = re.subn(rf'(name = "{carrier}"\npriority = \d+\nmax_channels = )\d+',
                          rf"\g<1>{channels}", text)
        assert n == 1, carrier
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "world.toml"
    path.write_text(text)
    provision(url, path)
    for carrier, deck in write_decks(directory / "decks").items():
        import_rates(url, deck, carrier)
    return url


class Switch:
    """One FreeSWITCH box (simulator) with its own daemon subprocess."""

    def __init__(self, db_url, data_dir, *, seed=1, redis_url=None, env=None, gateways=None,
                 start_us=None):
        data_dir.mkdir(parents=True, exist_ok=True)
        self.sim = Simulator(password=PASSWORD, seed=seed, time_scale=1.0,
                             heartbeat_interval=None, default_gateway=QUICK,
                             gateways=dict(gateways or {}), start_us=start_us)
        _, port = self.sim.start()
        self.daemon = DaemonProcess(db_url, port, PASSWORD, data_dir, redis_url=redis_url,
                                    extra_env=env).start()
        self.sim.dialplan_url = self.daemon.base_url + "/fs/dialplan"

    def stop(self) -> int:
        rc = self.daemon.terminate()
        self.sim.stop()
        return rc


@pytest.fixture
def switches():
    """Factory of started Switches, all stopped at the end (each daemon must exit 0 unless
    the test killed it)."""
    made: list[Switch] = []

    def make(*args, **kw) -> Switch:
        made.append(Switch(*args, **kw))
        return made[-1]
    yield make
    failures = []
    for switch in made:
        killed = switch.daemon.proc.poll() is not None
        rc = switch.stop()
        if not killed and rc != 0:
            failures.append(switch.daemon.log()[-3000:])
    assert not failures, failures


@pytest.fixture
def own_redis():
    """A private redis-server the test may stop and restart on the same port."""
    server = RedisProcess().start()
    yield server
    server.stop()


# --- reading outcomes --------------------------------------------------------------------------
def decisions(url, uuids):
    """call uuid -> (result, sip_code, reason) for the calls that have a decision row."""
    got = rows(url, "SELECT call_uuid, result, sip_code, reason FROM routing_decisions "
                    "WHERE call_uuid = ANY(%s)", list(uuids))
    return {r[0]: r[1:] for r in got}


def cdrs(url, uuids):
    got = rows(url, "SELECT call_uuid, hangup_cause, carrier, answered_at, ended_at "
                    "FROM calls WHERE call_uuid = ANY(%s)", list(uuids))
    return {r[0]: r[1:] for r in got}


def live_count(url, scope=TENANT) -> int:
    """Live slots of a scope, as the caps scripts count them (expired leases purged)."""
    caps = RedisCaps(redis.Redis.from_url(url))
    try:
        return caps.count(scope)
    finally:
        caps.close()


def all_done(calls, timeout):
    return all(call.wait(timeout) for call in calls)


def answered_live(sim) -> int:
    """Calls the switch has up and answered right now (A-legs with an answered partner)."""
    return sum(1 for leg in sim.live_legs() if leg.role == "a" and leg.answered_us)


# --- 1. max duration -----------------------------------------------------------------------------
def test_max_duration_is_enforced_by_the_switch_and_by_the_watchdog(migrated_pg_url, tmp_path,
                                                                      switches):
    """The XML schedules `sched_hangup +5 ALLOTTED_TIMEOUT`; the switch honours it. A gateway
    whose calls ignore it is caught by the daemon's watchdog after max + grace."""
    url = provision_world(migrated_pg_url, tmp_path / "world", max_call_seconds=5)
    switch = switches(url, tmp_path / "d", env={"SWITCHD_WATCHDOG_GRACE_SECONDS": "1"},
                      gateways={"globex_gw1": GatewayBehaviour(answer_delay_s=0.2,
                                                               ignore_sched_hangup=True)})
    sim, daemon = switch.sim, switch.daemon
    honoured = sim.place_call(UK_FIXED.format(1), accountcode="acme", hold_seconds=30)
    ignored = sim.place_call(BERLIN.format(1), accountcode="acme", hold_seconds=30)
    assert all_done([honoured, ignored], 20), (honoured.result, ignored.result)

    assert honoured.route.sched_hangup == ("+5", "ALLOTTED_TIMEOUT")
    assert honoured.gateway == "budgetel_gw1" and ignored.gateway == "globex_gw1"
    assert honoured.hangup_cause == ignored.hangup_cause == "ALLOTTED_TIMEOUT"
    # FreeSWITCH's scheduler fires on whole seconds: +5 is the answer's second + 5.
    assert 4_000 < honoured.billmsec <= 5_000, honoured.billmsec
    # killed by the watchdog, never before answer + max + grace, and long before the caller's
    # 30 s hang-up (how soon after depends on the machine's load, so no tighter bound)
    assert 6_000 <= ignored.billmsec < 30_000, ignored.billmsec

    got = wait_for(lambda: (lambda c: c if len(c) == 2 else None)(
        cdrs(url, [honoured.uuid, ignored.uuid])), 10, "both CDRs", daemon)
    assert got[honoured.uuid][0] == got[ignored.uuid][0] == "ALLOTTED_TIMEOUT"
    assert (got[honoured.uuid][1], got[ignored.uuid][1]) == ("budgetel", "globex")
    assert metric(daemon, "switchd_watchdog_kills_total") == 1.0   # only the ignoring call


def test_a_switch_whose_clock_lags_ours_has_no_call_cut_early(migrated_pg_url, tmp_path,
                                                               switches):
    """FreeSWITCH stamps its events with its own clock, which need not be ours (another
    host; on the real switch in CI its timer thread's clock stood 4.3 s behind). The
    watchdog and the live calls' age are measured in the switch's clock, as its
    sched_hangup is. With the switch two hours behind, a call of a tenant allowed an hour
    runs to its caller's end."""
    url = provision_world(migrated_pg_url, tmp_path / "world", max_call_seconds=3600)
    behind = int(time.time() * 1_000_000) - 7200 * 1_000_000
    switch = switches(url, tmp_path / "d", env={"SWITCHD_WATCHDOG_GRACE_SECONDS": "1"},
                      start_us=behind)
    sim, daemon = switch.sim, switch.daemon
    call = sim.place_call(UK_FIXED.format(2), accountcode="acme", hold_seconds=3)
    live = wait_for(lambda: [c for c in daemon.get("/v1/calls")[1].get("calls", [])
                             if c["state"] == "answered"], 10, "the call answered", daemon)
    assert 0 <= live[0]["age_s"] < 10, live
    assert call.wait(20) and call.hangup_cause == "NORMAL_CLEARING", call.hangup_cause
    assert 2_900 <= call.billmsec < 4_000, call.billmsec
    assert metric(daemon, "switchd_watchdog_kills_total") == 0.0
    got = wait_for(lambda: cdrs(url, [call.uuid]) or None, 10, "the CDR", daemon)
    assert got[call.uuid][0] == "NORMAL_CLEARING"


# --- 2. caps through routing ---------------------------------------------------------------------
def test_tenant_cap_admits_exactly_n_refuses_the_rest_and_frees_slots_once(
        migrated_pg_url, tmp_path, redis_url, switches):
    cap, extra = 3, 4
    url = provision_world(migrated_pg_url, tmp_path / "world", max_concurrent=cap)
    switch = switches(url, tmp_path / "d", redis_url=redis_url)
    sim, daemon = switch.sim, switch.daemon

    calls = [sim.place_call(UK_FIXED.format(100 + i), accountcode="acme", hold_seconds=600)
             for i in range(cap + extra)]
    got = wait_for(lambda: (lambda d: d if len(d) == len(calls) else None)(
        decisions(url, [c.uuid for c in calls])), 15, "every routing decision", daemon)
    routed = [c for c in calls if got[c.uuid][0] == "routed"]
    refused = [c for c in calls if got[c.uuid][0] == "refused"]
    assert len(routed) == cap and len(refused) == extra
    for call in refused:
        _, sip_code, reason = got[call.uuid]
        assert sip_code == 503 and "cap reached: tenant acme" in reason, reason
    assert all_done(refused, 10) and {c.result for c in refused} == {"refused"}
    assert {c.a_leg.sip_status for c in refused} == {503}
    wait_for(lambda: answered_live(sim) == cap, 10, "the admitted calls answered", daemon)
    assert metric(daemon, "switchd_cap_rejections_total", scope="tenant") == extra
    assert live_count(redis_url) == cap

    for call in routed:
        sim.kill_call(call.uuid)
    assert all_done(routed, 10)
    wait_for(lambda: live_count(redis_url) == 0, 10, "tenant slots released", daemon)
    # released once, not below zero, and nothing else held
    client = redis.Redis.from_url(redis_url)
    assert not client.keys("{switchd}:call:*")
    assert live_count(redis_url, Scope("global", "all")) == 0

    again = [sim.place_call(UK_FIXED.format(200 + i), accountcode="acme", hold_seconds=600)
             for i in range(cap)]
    got = wait_for(lambda: (lambda d: d if len(d) == cap else None)(
        decisions(url, [c.uuid for c in again])), 15, "decisions after the calls ended", daemon)
    assert {v[0] for v in got.values()} == {"routed"}
    wait_for(lambda: answered_live(sim) == cap, 10, "the new calls answered", daemon)
    assert live_count(redis_url) == cap
    for call in again:
        sim.kill_call(call.uuid)
    assert all_done(again, 10)
    wait_for(lambda: live_count(redis_url) == 0, 10, "slots released again", daemon)
    assert metric(daemon, "switchd_cap_rejections_total", scope="tenant") == extra


# --- 3. cluster-wide with Redis -----------------------------------------------------------------
def test_two_switches_sharing_redis_never_exceed_the_tenant_cap(
        migrated_pg_url, tmp_path, redis_url, switches):
    cap = 4
    url = provision_world(migrated_pg_url, tmp_path / "world", max_concurrent=cap)
    boxes = [switches(url, tmp_path / f"d{i}", seed=10 + i, redis_url=redis_url)
             for i in range(2)]
    client = redis.Redis.from_url(redis_url)
    peaks = {"answered": 0, "zcard": 0}

    def sample():
        while True:
            peaks["answered"] = max(peaks["answered"], sum(answered_live(b.sim) for b in boxes))
            peaks["zcard"] = max(peaks["zcard"], client.zcard(SLOTS + "tenant:acme"))
            gevent.sleep(0.01)

    sampler = gevent.spawn(sample)
    placed = []

    def burst(box, index):
        for wave in range(3):
            for i in range(5):
                hold = 0.8 + 0.3 * ((wave + i + index) % 4)
                placed.append(box.sim.place_call(UK_FIXED.format(1000 * index + 10 * wave + i),
                                                 accountcode="acme", hold_seconds=hold))
                gevent.sleep(0.02)
            gevent.sleep(0.6)

    gevent.joinall([gevent.spawn(burst, box, i) for i, box in enumerate(boxes)], raise_error=True)
    assert all_done(placed, 20)
    sampler.kill()

    got = wait_for(lambda: (lambda d: d if len(d) == len(placed) else None)(
        decisions(url, [c.uuid for c in placed])), 15, "every routing decision")
    routed = [c for c in placed if got[c.uuid][0] == "routed"]
    refused = [c for c in placed if got[c.uuid][0] == "refused"]
    assert len(routed) + len(refused) == len(placed) == 30
    for box in boxes:      # both switches were admitted calls and refused some: one shared cap
        mine = {id(c) for c in box.sim.calls}
        assert any(id(c) in mine for c in routed) and any(id(c) in mine for c in refused)
    assert refused and {got[c.uuid][1] for c in refused} == {503}
    assert {c.result for c in routed} == {"answered"} and {c.result for c in refused} == {"refused"}
    assert peaks["answered"] == cap and peaks["zcard"] <= cap, peaks
    rejections = sum(metric(b.daemon, "switchd_cap_rejections_total", scope="tenant") for b in boxes)
    assert rejections == len(refused)
    wait_for(lambda: live_count(redis_url) == 0, 10, "every slot released")


# --- 4. crash -> lease expiry ---------------------------------------------------------------
def test_slots_survive_a_peers_resync_and_expire_when_their_daemon_dies(
        migrated_pg_url, tmp_path, redis_url, switches):
    """Two switches on one host share Redis. A holds two live calls. B's ESL reconnect (and
    the reconciliation that follows it) must not release A's slots; A's leases outlive
    several lease periods while A lives, and expire within one lease once A is SIGKILLed."""
    lease = 2.0
    url = provision_world(migrated_pg_url, tmp_path / "world")
    env = {"SWITCHD_CAPS_LEASE_SECONDS": str(lease)}
    a, b = [switches(url, tmp_path / f"d{i}", seed=20 + i, redis_url=redis_url, env=env)
            for i in range(2)]
    calls = [a.sim.place_call(UK_FIXED.format(300 + i), accountcode="acme", hold_seconds=600)
             for i in range(2)]
    wait_for(lambda: answered_live(a.sim) == 2, 10, "two answered calls", a.daemon)
    assert live_count(redis_url) == 2
    # Older than the reconciliation grace (5 s), A's calls are fair game for a daemon that
    # wrongly thinks they are its own; meanwhile they must stay counted (A refreshes them).
    deadline = time.monotonic() + 5.5
    while time.monotonic() < deadline:
        assert live_count(redis_url) == 2, "a live daemon's slots expired"
        gevent.sleep(0.2)
    b.sim.drop_connections()
    wait_for(lambda: sum('"msg": "resync:' in line for line in b.daemon.log().splitlines()) >= 2,
             10, "B resynchronised after its reconnect", b.daemon)
    assert live_count(redis_url) == 2, "B's reconciliation released A's live calls"

    a.daemon.proc.kill()                                   # SIGKILL: no release, no drain
    a.daemon.proc.wait(5)
    killed_at = time.monotonic()
    wait_for(lambda: live_count(redis_url) == 0, lease + 2, "the dead daemon's slots to expire")
    assert time.monotonic() - killed_at <= lease + 1.5
    assert not any(c.done.is_set() for c in calls)         # the calls are still up on the switch
    assert live_count(redis_url, Scope("global", "all")) == 0


# --- 5. Redis down ------------------------------------------------------------------------------
def test_redis_down_fail_closed_refuses_then_recovers_without_restart(
        migrated_pg_url, tmp_path, own_redis, switches):
    url = provision_world(migrated_pg_url, tmp_path / "world")
    switch = switches(url, tmp_path / "d", redis_url=own_redis.url,
                      env={"SWITCHD_REDIS_ON_FAILURE": "fail_closed",
                           "SWITCHD_CAPS_LEASE_SECONDS": "1.5"})
    sim, daemon = switch.sim, switch.daemon
    before = sim.place_call(UK_FIXED.format(400), accountcode="acme", hold_seconds=2)
    assert before.wait(10) and before.result == "answered"
    wait_for(lambda: live_count(own_redis.url) == 0, 10, "the first call's slot released", daemon)

    port = own_redis.port
    own_redis.stop()
    # an idle node notices too: readiness must not wait for the next call to find out
    status, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(daemon.get("/readyz")),
                            5, "/readyz 503 while Redis is down", daemon)
    assert "caps" in body["problems"], body
    refused = sim.place_call(UK_FIXED.format(401), accountcode="acme", hold_seconds=2)
    assert refused.wait(10) and refused.result == "refused" and refused.a_leg.sip_status == 503
    got = wait_for(lambda: decisions(url, [refused.uuid]), 10, "refusal row", daemon)
    assert got[refused.uuid][1] == 503 and "unavailable" in got[refused.uuid][2]
    assert metric(daemon, "switchd_cap_rejections_total", scope="backend") >= 1
    assert metric(daemon, "switchd_caps_backend_up", backend="redis") == 0

    restarted = RedisProcess(port=port).start()
    try:
        wait_for(lambda: daemon.get("/readyz")[0] == 200, 15, "/readyz 200 after Redis is back",
                 daemon)
        after = sim.place_call(UK_FIXED.format(402), accountcode="acme", hold_seconds=2)
        assert after.wait(10) and after.result == "answered"
        assert decisions(url, [after.uuid])[after.uuid][0] == "routed"
        assert metric(daemon, "switchd_caps_backend_up", backend="redis") == 1
        wait_for(lambda: live_count(restarted.url) == 0, 10, "slot of the call released in Redis")
    finally:
        restarted.stop()


def test_redis_down_fail_open_admits_against_local_caps_only(
        migrated_pg_url, tmp_path, own_redis, switches):
    cap = 3
    url = provision_world(migrated_pg_url, tmp_path / "world", max_concurrent=cap)
    switch = switches(url, tmp_path / "d", redis_url=own_redis.url,
                      env={"SWITCHD_REDIS_ON_FAILURE": "fail_open",
                           "SWITCHD_CAPS_LEASE_SECONDS": "1.5"})
    sim, daemon = switch.sim, switch.daemon
    first = sim.place_call(UK_FIXED.format(500), accountcode="acme", hold_seconds=600)
    wait_for(lambda: answered_live(sim) == 1, 10, "a call up before the outage", daemon)

    own_redis.stop()
    calls = [sim.place_call(UK_FIXED.format(501 + i), accountcode="acme", hold_seconds=600)
             for i in range(4)]
    got = wait_for(lambda: (lambda d: d if len(d) == 4 else None)(
        decisions(url, [c.uuid for c in calls])), 15, "decisions during the outage", daemon)
    results = sorted(v[0] for v in got.values())
    # the call admitted before the outage counts against the local cap: 2 more, not 3 or 4
    assert results == ["refused", "refused", "routed", "routed"], got
    assert {v[1] for v in got.values() if v[0] == "refused"} == {503}
    wait_for(lambda: answered_live(sim) == cap, 10, "cap calls answered", daemon)
    assert daemon.get("/readyz")[0] == 200            # fail_open keeps serving
    assert metric(daemon, "switchd_caps_fail_open") == 1
    # Never beyond the local cap: every refused call has ended refused on the switch, so
    # nothing more can come up (a wait on their outcome, not a 0.5 s sleep).
    refused = [c for c in calls if got[c.uuid][0] == "refused"]
    assert all_done(refused, 10) and {c.result for c in refused} == {"refused"}
    assert answered_live(sim) == cap
    for call in [first, *calls]:
        sim.kill_call(call.uuid)
    assert all_done([first, *calls], 10)


# --- 6. failover to a carrier at its channel cap --------------------------------------------------
def test_failover_to_a_full_carrier_passes_it_over(migrated_pg_url, tmp_path, redis_url,
                                                   switches):
    """globex has one channel. UK calls try budgetel (failing here), then globex, then primo.
    The first call fails over onto globex and takes its channel; for the second, the
    failover lookup finds globex full and answers primo's bridge instead: globex is never
    dialled, so it cannot answer beyond its cap however fast it answers (on the real switch
    a leg killed when it started was up for 20 ms first: tests/realswitch/test_caps.py)."""
    url = provision_world(migrated_pg_url, tmp_path / "world", max_channels={"globex": 1})
    switch = switches(url, tmp_path / "d", redis_url=redis_url, gateways={
        "budgetel_gw1": GatewayBehaviour(fail_cause="NORMAL_TEMPORARY_FAILURE", sip_status=503,
                                         fail_delay_s=0.1)})
    sim, daemon = switch.sim, switch.daemon
    client = redis.Redis.from_url(redis_url)
    peak = {"globex": 0}

    def sample():
        while True:
            peak["globex"] = max(peak["globex"], client.zcard(SLOTS + "carrier:globex"))
            gevent.sleep(0.01)
    sampler = gevent.spawn(sample)

    first = sim.place_call(UK_FIXED.format(600), accountcode="acme", hold_seconds=600)
    wait_for(lambda: first.gateway == "globex_gw1", 10, "first call answered on globex", daemon)
    second = sim.place_call(UK_FIXED.format(601), accountcode="acme", hold_seconds=600)
    wait_for(lambda: second.gateway == "primo_gw1", 10, "second call answered on primo", daemon)
    sampler.kill()
    assert metric(daemon, "switchd_cap_rejections_total", scope="carrier") == 1
    assert [leg.gateway for leg in second.legs] == ["budgetel_gw1", "primo_gw1"]
    assert peak["globex"] == 1 and live_count(redis_url, Scope("carrier", "globex")) == 1
    assert live_count(redis_url, Scope("carrier", "primo")) == 1
    sim.kill_call(first.uuid)
    sim.kill_call(second.uuid)
    assert all_done([first, second], 10)
    got = wait_for(lambda: (lambda c: c if len(c) == 2 else None)(
        cdrs(url, [first.uuid, second.uuid])), 10, "CDRs", daemon)
    assert got[first.uuid][1] == "globex" and got[first.uuid][2] is not None
    assert got[second.uuid][1] == "primo" and got[second.uuid][2] is not None
    assert rows(url, "SELECT count(*) FROM call_legs WHERE call_uuid = %s AND carrier = 'globex'",
                second.uuid) == [(0,)]
    assert any(r[0].endswith("; passed over: globex (cap reached)") for r in rows(
        url, "SELECT reason FROM routing_decisions WHERE call_uuid = %s", second.uuid))
    wait_for(lambda: live_count(redis_url) == 0, 10, "every slot released", daemon)



def test_watchdog_kills_the_answered_attempt_of_an_originate(migrated_pg_url, tmp_path, switches):
    """An originate whose first attempt failed (403) and whose second answered and ignores
    its sched_hangup: the watchdog must kill that second attempt's channel, not the call
    UUID's (the failed first attempt)."""
    import json
    import urllib.request
    url = provision_world(migrated_pg_url, tmp_path / "world", max_call_seconds=3)
    switch = switches(url, tmp_path / "d", env={"SWITCHD_WATCHDOG_GRACE_SECONDS": "1"},
                      gateways={"budgetel_gw1": GatewayBehaviour(fail_cause="CALL_REJECTED",
                                                                 sip_status=403,
                                                                 fail_delay_s=0.1),
                                "globex_gw1": GatewayBehaviour(answer_delay_s=0.2,
                                                               ignore_sched_hangup=True)})
    daemon = switch.daemon

    def post():
        request = urllib.request.Request(daemon.base_url + "/v1/calls", data=json.dumps(
            {"tenant": "acme", "destination": UK_FIXED.format(7)}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)
    body = gevent.get_hub().threadpool.apply(post)
    assert body["answered"] and [a["gateway"] for a in body["attempts"]] == [
        "budgetel_gw1", "globex_gw1"]
    got = wait_for(lambda: cdrs(url, [body["call_uuid"]]) or None, 20, "the CDR", daemon)
    assert got[body["call_uuid"]][0] == "ALLOTTED_TIMEOUT"
    assert metric(daemon, "switchd_watchdog_kills_total") == 1.0
