"""ESL faults end to end: the simulator (FreeSWITCH) → `switchd run` (a real subprocess).

Each test breaks the event socket the way the field does (DESIGN.md §5, §9, §11) — a cut
TCP connection, a restart with other calls, garbage on the wire, a silent stalled peer, a
wrong password — and checks what an operator relies on: the daemon reconnects by itself,
its registry matches the switch again, calls that ended unseen are closed as reconstructed
CDRs in PostgreSQL exactly once, caps slots follow, HTTP keeps serving, nothing hangs.

Synchronisation is on HTTP readiness, /v1/calls, /metrics and PostgreSQL rows.
"""
from __future__ import annotations

import time

import pytest

from switchd.demo_world import write_decks, write_world
from switchd.admin.provision import provision
from switchd.admin.rates_import import import_rates
from switchd.sim import GatewayBehaviour, Simulator
from daemon_harness import DaemonProcess, metric, rows

pytestmark = pytest.mark.slow

PASSWORD = "faults-secret"
ANSWERING = GatewayBehaviour(answer_delay_s=1.0)
TENANT_CAP = 3
HOLD = 3600          # simulated seconds: calls stay up until the test kills them


@pytest.fixture
def world_url(migrated_pg_url, tmp_path):
    """The demo world, with acme capped at TENANT_CAP concurrent calls."""
    path = write_world(tmp_path)
    text = path.read_text()
    assert "max_concurrent = 200" in text
    path.write_text(text.replace("max_concurrent = 200", f"max_concurrent = {TENANT_CAP}"))
    provision(migrated_pg_url, path)
    for carrier, deck in write_decks(tmp_path / "decks").items():
        import_rates(migrated_pg_url, deck, carrier)
    return migrated_pg_url


@pytest.fixture
def make_switch(world_url, tmp_path):
    """make_switch(sim_kwargs, env) → a started simulator and daemon."""
    started = []

    def make(env=None, require_ready=True, daemon_password=PASSWORD, **sim_kwargs):
        sim_kwargs.setdefault("heartbeat_interval", None)
        sim = Simulator(password=PASSWORD, seed=23, time_scale=sim_kwargs.pop("time_scale", 50.0),
                        default_gateway=ANSWERING, **sim_kwargs)
        _, port = sim.start()
        daemon = DaemonProcess(world_url, port, daemon_password, tmp_path, extra_env=env)
        started.append((sim, daemon))
        daemon.start(require_ready=require_ready)
        sim.dialplan_url = daemon.base_url + "/fs/dialplan"
        return sim, daemon
    yield make
    for sim, daemon in started:
        sim.resume()
        rc = daemon.terminate()
        sim.stop()
        assert rc == 0, daemon.log()[-3000:]


# --- helpers ---------------------------------------------------------------------------------
def _cdr(url, call_uuid):
    found = rows(url, "SELECT reconstructed, hangup_cause, billed_seconds, cost, tenant, carrier "
                      "FROM calls WHERE call_uuid = %s AND ended_at IS NOT NULL", call_uuid)
    return found[0] if found else None


def _wait_cdr(daemon, url, call_uuid, reconstructed=None):
    def ready():
        row = _cdr(url, call_uuid)
        return row if row and (reconstructed is None or row[0] is reconstructed) else None
    return daemon.wait_until(ready, what=f"CDR of {call_uuid} (reconstructed={reconstructed})")


def _listed(daemon) -> dict[str, dict]:
    status, body = daemon.get("/v1/calls")
    assert status == 200, body
    return {c["call_uuid"]: c for c in body["calls"]}


def _switch_calls(sim) -> set[str]:
    """Call UUIDs FreeSWITCH has live: what `show channels` groups by call_uuid."""
    return {row["call_uuid"] for row in sim.live_channels()}


def _wait_answered(daemon, calls):
    want = {c.uuid for c in calls}
    daemon.wait_until(lambda: all(
        (c := _listed(daemon).get(u)) and c["state"] == "answered" and c["tenant"]
        for u in want), what=f"{len(want)} call(s) answered and listed")


def _ready(daemon) -> bool:
    return daemon.get("/readyz")[0] == 200


def _not_ready_on_esl(daemon):
    status, body = daemon.get("/readyz")
    return body if status == 503 and "esl" in body.get("problems", {}) else None


def _outage(sim):
    """Cut every ESL connection and refuse new ones: the network is down."""
    sim.server.stop()
    sim.drop_connections()


# --- a. connection cut mid-call ----------------------------------------------------------------
def test_drop_mid_call_reconnects_resyncs_and_closes_calls_that_ended_unseen(make_switch, world_url):
    sim, daemon = make_switch()
    calls = [sim.place_call(f"+4930123{i:03d}", accountcode="acme", hold_seconds=HOLD)
             for i in range(TENANT_CAP)]
    _wait_answered(daemon, calls)
    ended_unseen, survivor = calls[:2], calls[2]

    _outage(sim)
    for call in ended_unseen:                           # they hang up while we are cut off
        sim.kill_call(call.uuid)
    assert all(call.wait(10) for call in ended_unseen)
    assert daemon.wait_until(lambda: _not_ready_on_esl(daemon), what="/readyz 503 naming esl")
    assert daemon.get("/healthz")[0] == 200
    sim.server.start()                                  # the network is back

    daemon.wait_until(lambda: _ready(daemon), what="ready again after the cut")
    for call in ended_unseen:
        row = _wait_cdr(daemon, world_url, call.uuid)
        assert row[0] is True and row[1] == "UNKNOWN_AFTER_RESYNC", row
        # Billed provisionally from what was known (answer time, tariff), never unrated or
        # silently 0-by-default: the switch's CDR would settle it (issue 9).
        [(provisional, unrated)] = rows(world_url, "SELECT provisional, unrated FROM calls "
                                                   "WHERE call_uuid = %s", call.uuid)
        assert provisional and not unrated
        legs = rows(world_url, "SELECT provisional, rate_per_min IS NOT NULL, cost IS NOT NULL "
                               "FROM call_legs WHERE call_uuid = %s AND carrier IS NOT NULL "
                               "AND answered_at IS NOT NULL", call.uuid)
        assert legs == [(True, True, True)], legs
    daemon.wait_until(lambda: set(_listed(daemon)) == _switch_calls(sim) == {survivor.uuid},
                      what="registry == switch")

    # Slots of the calls that ended unseen are free again, the survivor's is still held:
    # two new calls fit under the cap of three, a third is refused (503, cap reached).
    fresh = [sim.place_call(f"+4930124{i:03d}", accountcode="acme", hold_seconds=HOLD)
             for i in range(2)]
    _wait_answered(daemon, fresh)
    refused = sim.place_call("+4930125000", accountcode="acme", hold_seconds=HOLD)
    assert refused.wait(10) and refused.result == "refused", refused.result

    # The survivor was followed through the cut: its CDR is the real one, not reconstructed.
    for call in [survivor] + fresh:
        sim.kill_call(call.uuid)
        assert call.wait(10)
    row = _wait_cdr(daemon, world_url, survivor.uuid)
    assert row[0] is False and row[1] == "NORMAL_CLEARING" and row[4] == "acme", row
    leg = rows(world_url, "SELECT billmsec FROM call_legs WHERE call_uuid = %s AND carrier IS "
                           "NOT NULL", survivor.uuid)
    assert leg == [(survivor.billmsec,)]
    for call in fresh:
        assert _wait_cdr(daemon, world_url, call.uuid)[0] is False

    # Nothing counted twice: one CDR per call, one finished-call count per call.
    everyone = calls + fresh + [refused]
    _wait_cdr(daemon, world_url, refused.uuid)
    assert rows(world_url, "SELECT count(*), count(DISTINCT call_uuid) FROM calls") == [
        (len(everyone), len(everyone))]
    assert rows(world_url, "SELECT count(*) FROM calls WHERE reconstructed") == [(2,)]
    assert daemon.wait_until(lambda: metric(daemon, "switchd_calls_total") == len(everyone),
                             what="switchd_calls_total == calls")
    assert _listed(daemon) == {} and _switch_calls(sim) == set()


# --- b. FreeSWITCH restarts with other calls ----------------------------------------------------
def test_restart_with_different_calls_adopts_and_closes(make_switch, world_url):
    sim, daemon = make_switch()
    before = [sim.place_call(f"+4930126{i:03d}", accountcode="acme", hold_seconds=HOLD)
              for i in range(2)]
    _wait_answered(daemon, before)

    sim.restart(down_seconds=0.3, live_calls=[
        {"destination": "+4930127001", "gateway": "globex_gw1", "accountcode": "acme",
         "hold_seconds": HOLD},
        {"destination": "+4930127002", "gateway": "budgetel_gw1", "accountcode": "acme",
         "hold_seconds": HOLD}])
    injected = sim.calls[-2:]
    assert _switch_calls(sim) == {c.uuid for c in injected}

    daemon.wait_until(lambda: _ready(daemon), what="ready after the restart")
    daemon.wait_until(lambda: set(_listed(daemon)) == _switch_calls(sim),
                      what="registry == the restarted switch's calls")
    listed = _listed(daemon)
    assert all(listed[c.uuid]["state"] == "answered" and listed[c.uuid]["legs"] == 2
               for c in injected), listed
    for call in before:                                 # vanished in the restart
        row = _wait_cdr(daemon, world_url, call.uuid)
        assert row[0] is True and row[1] == "UNKNOWN_AFTER_RESYNC", row

    # Adopted calls are followed from here on: their hangup ends them, once.
    for call in injected:
        sim.kill_call(call.uuid)
        assert call.wait(10)
        _wait_cdr(daemon, world_url, call.uuid)
    daemon.wait_until(lambda: _listed(daemon) == {}, what="no live calls")
    assert rows(world_url, "SELECT count(*) FROM calls") == [(4,)]


# --- c. garbage on the wire -----------------------------------------------------------------------
def test_garbage_frame_recycles_the_connection_and_http_keeps_serving(make_switch, world_url):
    sim, daemon = make_switch()
    call = sim.place_call("+4930128000", accountcode="acme", hold_seconds=HOLD)
    _wait_answered(daemon, [call])
    errors = metric(daemon, "switchd_esl_protocol_errors_total")
    connects = metric(daemon, "switchd_esl_reconnects_total", result="ok")

    sim.send_garbage()
    daemon.wait_until(lambda: metric(daemon, "switchd_esl_protocol_errors_total") == errors + 1,
                      what="protocol error counted")
    assert daemon.get("/healthz")[0] == 200
    daemon.wait_until(lambda: metric(daemon, "switchd_esl_reconnects_total", result="ok")
                      == connects + 1 and _ready(daemon), what="reconnected and ready")
    assert set(_listed(daemon)) == _switch_calls(sim) == {call.uuid}
    assert "protocol error" in daemon.log()

    sim.kill_call(call.uuid)
    assert call.wait(10)
    assert _wait_cdr(daemon, world_url, call.uuid)[0] is False


# --- d. a silent, stalled peer ------------------------------------------------------------------
def test_stalled_switch_is_detected_recycled_and_nothing_hangs(make_switch, world_url):
    # 21 s is the smallest heartbeat timeout config allows; the supervisor probes a silent
    # connection at half of it and gives the probe command_timeout to answer.
    sim, daemon = make_switch(env={"SWITCHD_ESL_HEARTBEAT_TIMEOUT": "21",
                                   "SWITCHD_ESL_COMMAND_TIMEOUT": "1"},
                              heartbeat_interval=1.0)
    call = sim.place_call("+4930129000", accountcode="acme", hold_seconds=HOLD)
    _wait_answered(daemon, [call])
    timeouts = metric(daemon, "switchd_esl_command_errors_total", reason="timeout")

    sim.stall()
    body = daemon.wait_until(lambda: _not_ready_on_esl(daemon), timeout=20,
                             what="stall detected (/readyz 503 naming esl)")
    # Detected by the liveness probe (at half the timeout), not by the 21 s deadline: the
    # supervisor says which, instead of a wall-clock window deciding it.
    assert "no reply to a probe within" in daemon.log()
    assert daemon.get("/healthz")[0] == 200 and daemon.get("/v1/calls")[0] == 200, body
    assert metric(daemon, "switchd_esl_command_errors_total", reason="timeout") > timeouts

    sim.resume()
    daemon.wait_until(lambda: _ready(daemon), what="ready after resume")
    daemon.wait_until(lambda: set(_listed(daemon)) == _switch_calls(sim) == {call.uuid},
                      what="the call is still tracked")
    sim.kill_call(call.uuid)
    assert call.wait(10)
    assert _wait_cdr(daemon, world_url, call.uuid)[0] is False

    # Wedged again, and told to stop: the goodbye to the switch times out, nothing hangs.
    sim.stall()
    began = time.monotonic()
    assert daemon.terminate(timeout=15) == 0
    assert time.monotonic() - began < 6, time.monotonic() - began


# --- e. wrong password ----------------------------------------------------------------------------
def test_wrong_password_is_named_not_ready_and_not_hammered(make_switch):
    attempts = []

    def make_counting(**kw):
        # Count TCP connections (each one an authentication attempt) as the sim accepts them.
        import switchd.sim.server as server_mod
        original = server_mod.EslServer._handle

        def counting(self, sock, addr):
            attempts.append(time.monotonic())
            return original(self, sock, addr)
        server_mod.EslServer._handle = counting
        try:
            return make_switch(**kw)
        finally:
            server_mod.EslServer._handle = original
    wrong = "not-the-password-42"
    # The sim's StreamServer bound its handler at start, so the counter stays in place.
    sim, daemon = make_counting(daemon_password=wrong, require_ready=False)
    daemon.wait_until(lambda: len(attempts) >= 4, what="four authentication attempts")
    # backoff_max is 1 s in the harness: after a wrong password the daemon waits the longest
    # delay, jittered into 0.5–1 s, before trying again (never a tight loop).
    gaps = [later - earlier for earlier, later in zip(attempts, attempts[1:4])]
    assert all(gap >= 0.45 for gap in gaps), gaps

    status, body = daemon.get("/readyz")
    assert status == 503 and "password" in body["problems"]["esl"], body
    log = daemon.log()
    assert "SWITCHD_ESL_PASSWORD" in log and wrong not in log
    assert metric(daemon, "switchd_esl_reconnects_total", result="auth_failed") >= 2

    began = time.monotonic()                             # SIGTERM while never connected
    assert daemon.terminate(timeout=15) == 0
    assert time.monotonic() - began < 5


# --- a2. the first snapshot after a gap still lists calls that ended in it -------------------
def test_calls_the_switch_still_listed_after_the_gap_are_closed_by_the_follow_up(
        make_switch, world_url):
    """`show channels` is written behind the calls: the snapshot right after a gap can still
    list calls that hung up in it, their HANGUP_COMPLETE lost with the connection. The
    follow-up resync closes them once the list has caught up, billed to the gap's start:
    their slots do not wait for the periodic resync (an hour here)."""
    sim, daemon = make_switch(env={"SWITCHD_ESL_RESYNC_INTERVAL": "3600"},
                              listed_after_hangup_s=HOLD)
    calls = [sim.place_call(f"+4930126{i:03d}", accountcode="acme", hold_seconds=HOLD)
             for i in range(2)]
    _wait_answered(daemon, calls)
    ended_unseen, survivor = calls

    _outage(sim)
    sim.kill_call(ended_unseen.uuid)
    assert ended_unseen.wait(10)
    assert daemon.wait_until(lambda: _not_ready_on_esl(daemon), what="/readyz 503 naming esl")
    sim.server.start()
    daemon.wait_until(lambda: _ready(daemon), what="ready again after the cut")
    # the switch still lists the call that ended in the gap: switchd keeps it for now
    assert _switch_calls(sim) == {ended_unseen.uuid, survivor.uuid}
    assert set(_listed(daemon)) == {ended_unseen.uuid, survivor.uuid}

    sim.catch_up_listing()
    daemon.wait_until(lambda: set(_listed(daemon)) == _switch_calls(sim) == {survivor.uuid},
                      what="the call that ended in the gap closed by the follow-up resync")
    row = _wait_cdr(daemon, world_url, ended_unseen.uuid)
    assert row[0] is True and row[1] == "UNKNOWN_AFTER_RESYNC", row
    # billed to the start of the gap, which came before the call's real end
    [(ended_at,)] = rows(world_url, "SELECT ended_at FROM call_legs WHERE call_uuid = %s "
                                    "AND carrier IS NOT NULL", ended_unseen.uuid)
    assert ended_at.timestamp() * 1_000_000 <= ended_unseen.legs[0].hangup_us
    assert metric(daemon, "switchd_resyncs_total") == 3     # connect, reconnect, follow-up
