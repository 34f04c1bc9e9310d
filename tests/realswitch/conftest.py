"""The real-switch suite: a real FreeSWITCH 1.10, sipp carriers and callers, `switchd run`.

Everything here carries the marker `realswitch` and is skipped, with one reason, when no
`freeswitch` binary is on PATH (or at SWITCHD_TEST_FREESWITCH) or sipp is missing. Run it
alone with `pytest -m realswitch`; SWITCHD_TEST_PORT_BASE (default 40000) is the first of
the 1000 loopback ports a run uses (ESL, SIP, sipp, the daemon's HTTP port, RTP at
base+600..base+999); every port is checked free before use.

Fixtures
--------
`realswitch` → `RealSwitch` (tests/realswitch/fsharness.py). One FreeSWITCH per session
(start ≈ 5 s), reset before each test: no channels, every carrier answering, every gateway
UP, INVITE counts and events forgotten. Config: one `freeswitch.xml` written into the run
dir (fsconfig.py): ESL with a password, SIP profile `callers` (context `public`, no auth),
gateways `gw_a`, `gw_b`, `gw_c` (ping 5 s) to three sipp carriers, mod_xml_curl posting every
dialplan lookup to `switch.dialplan_url` (the daemon's `/fs/dialplan`, 3 s timeout), a static
fallback that answers 503, mod_json_cdr posting every leg's CDR to the daemon's `/fs/cdr`
(`RealSwitch(cdr_url=...)`; when that fails, to `<run dir>/fs/log/json_cdr/`).

- `switch.carrier("gw_a").set_mode(mode)`: `answer` (200, waits for BYE), `ring` (180,
  never answers; CANCEL → 487), `early` (183 with SDP, never answers; CANCEL → 487),
  `hangup` (200, then its own BYE 1.5 s after the ACK), `down` (sipp stopped: port
  unreachable, the gateway's pings fail), or a final code: 401 403 404 407 408 480 484 486
  500 503 600 603.
  Carriers that answer and then fail (scenarios/uas-<mode>.xml, test_answer_then_fail.py):
  `answer-bad-sdp` (200 whose SDP offers only G.729), `answer-then-bye` (200, then its
  own BYE 30 ms after the ACK), `answer-no-sdp` (200 without SDP).
  `answer` sends no RTP; `answer-rtp` answers as `answer` and then streams RTP (PCMU
  silence) until the BYE (test_media_timeout.py).
  `.invites()` → INVITEs it received since the reset (one per Call-ID, from sipp's
  `-trace_msg` log); `.invite_log()` → the INVITEs themselves (`call_id`, `request_uri`,
  `from`, `to`, `text`). `switch.invites()` → `{"gw_a": n, ...}`. `.responses(method)` →
  the status codes FreeSWITCH answered the carrier's `method` requests with since its
  mode was set (e.g. `[405]` for a REFER).
- `switch.call(number, caller_number="1000", caller_name="switchd test", from_header=None,
  tenant="acme", headers=None, hold_ms=1000)` → `CallResult`: `code` (final SIP answer, 200
  when answered), `call_id` (the caller's SIP Call-ID), `progress_after`, `answered_after`,
  `duration` (answer → BYE, seconds), `ended_by` ('caller' | 'switch'), `bye_reason`.
  `from_header` (str or bytes, written byte for byte, no `[`, `]` or line breaks) replaces
  the whole From value for hostile caller IDs. `cancel_after_ms=N`: the caller gives up,
  CANCELling N ms after the first 180/183 (code 487), or after the switch's 100 Trying
  with `cancel_from="trying"`. `tenant` goes out as an `X-Tenant` header
  (None: none, as for a call to a DID); `headers` adds others. `call_async(...)` returns a handle whose
  `.wait()` gives the result (up to 8 callers at once).
- `switch.api(cmd)` → FreeSWITCH's text for an API command (own ESL connection).
- `switch.hangups(sip_call_id=None)` → `Hangup`s (CHANNEL_HANGUP_COMPLETE from the harness's
  own ESL listener): `uuid`, `direction` ('inbound' = caller leg, 'outbound' = carrier leg),
  `cause`, `billsec`, `billmsec`, `sip_term_status`, `gateway`, `sip_call_id`, `switchd`
  (the `variable_switchd_*` values), `headers` (everything). `switch.wait_call(result)` →
  every leg of that call once all of them have hung up: the A-leg first, then carrier legs
  in the order FreeSWITCH created them. `switch.events(name)` → raw events.
- `switch.gateway_state("gw_a")` → 'UP' / 'DOWN' / None; `switch.channel_count()`.
- `switch.gateway_ping("gw_a")` → `GatewayPing(next_at, pinging, up)`, FreeSWITCH's ping
  schedule. `set_mode` restarts a running carrier only while its gateway's next ping is
  2.5 s or more away (a ping on the closed port would take the gateway DOWN).
- `switch.restart()`: SIGTERM FreeSWITCH (it deletes its gateways, hangs up calls) and
  start it again with the same config; carriers keep running.
- `switch.set_cdr_url(url)`: mod_json_cdr on (every leg's CDR POSTed to `url`, e.g.
  `f"http://127.0.0.1:{switch.plan.http}/fs/cdr"`, the daemon's port) or off (None); the
  reset returns to the session's URL (the daemon's `/fs/cdr`). `switch.plan` holds every port (`esl`, `sip`, `http`, RTP range).
  `switch.sessions_per_second` (100) is FreeSWITCH's throttle, written at the next start
  (a call is two sessions; benchmarks/realswitch_calls.py raises it).
- `switch.set_profile_params({"disable-transfer": "true"})`: extra sofia profile settings;
  FreeSWITCH restarts with them (mod_sofia reads most only at a profile's start) and the
  call returns once the gateways are UP. The reset restarts it without them. Call it before
  `make_rs_daemon()`, so the daemon starts against the switch as the test wants it.

`rs_world_url` → a migrated PostgreSQL database (fixture `migrated_pg_url`) provisioned with
tests/realswitch/world.py: tenants `acme` and `brief` (max 3 s), carriers alpha/bravo/charlie
owning gw_a/gw_b/gw_c with decks that make a different carrier cheapest per destination.

`rs_daemon` → `RsDaemon`: `switchd run` (tests/daemon_harness.py `DaemonProcess`, as
`.process`) on that world, connected to the switch's ESL and serving its xml_curl URL, with
`routing.tenant_from = variable`, `routing.tenant_variable = sip_h_X-Tenant` (the caller's
`X-Tenant` header names its tenant). `.db_url`, `.rows(sql, *args)`,
`.wait_cdr(call_uuid)` (the `calls` row as a dict once FreeSWITCH's CDRs and ESL's record
are both merged into it: backends.SETTLED), `.cdr(call_uuid)` (the row as it is now),
`.wait_until(pred, what=...)`.
`make_rs_daemon(extra_env={...}, world_toml=...)` starts one with other settings (one per
test: it binds the switch's dialplan port). The daemon must exit 0 on SIGTERM at teardown.

`backend` (parametrised "sim" / "real") → the same scenario on the simulator (`start_switch`
from tests/conftest.py) and on the real switch: see backends.py (`set_carrier`, `call`,
`invites`, `db_url`, `daemon`).

Nothing survives the session: FreeSWITCH, every sipp and every daemon are stopped in
teardown (and at interpreter exit if a teardown never ran).
"""
from __future__ import annotations

import atexit

import pytest

from . import fsconfig, fsharness, world
from .backends import RealBackend, SimBackend, RsDaemon
from .sipp import Carrier

SKIP_REASON = fsharness.skip_reason()
ESL_PASSWORD = "rs-secret"


def pytest_collection_modifyitems(config, items):
    if SKIP_REASON is None:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if item.get_closest_marker("realswitch"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def _realswitch_session(tmp_path_factory):
    if SKIP_REASON:
        pytest.skip(SKIP_REASON)
    # mod_json_cdr posts every leg's CDR to the daemon's /fs/cdr (tests/realswitch/test_cdr.py);
    # with no daemon up it retries, then writes <fs>/log/json_cdr/ (CDR_ERR_DIR).
    plan = fsconfig.PortPlan.allocate()
    switch = fsharness.RealSwitch(tmp_path_factory.mktemp("realswitch"), esl_password=ESL_PASSWORD,
                                  plan=plan, cdr_url=f"http://127.0.0.1:{plan.http}/fs/cdr")
    atexit.register(switch.stop)
    switch.start()
    yield switch
    switch.stop()
    atexit.unregister(switch.stop)


@pytest.fixture
def realswitch(_realswitch_session):
    """The session's FreeSWITCH, reset for this test (see the module docstring)."""
    _realswitch_session.reset()
    return _realswitch_session


@pytest.fixture
def elsewhere(realswitch):
    """A sipp answering calls on 127.0.0.2 (gw_c's port numbers, another address): a host
    FreeSWITCH has no gateway to, as a carrier's redirect could name one."""
    ports = realswitch.plan.carriers["gw_c"]
    uas = Carrier("elsewhere", ports, realswitch.sipp, realswitch.run_dir, ip="127.0.0.2")
    uas.set_mode("answer")
    yield uas
    uas.stop()


@pytest.fixture
def rs_world_url(migrated_pg_url, tmp_path):
    from switchd.admin.provision import provision
    from switchd.admin.rates_import import import_rates
    world_path, decks = world.write(tmp_path / "world")
    provision(migrated_pg_url, world_path)
    for carrier, path in decks.items():
        import_rates(migrated_pg_url, path, carrier)
    return migrated_pg_url


@pytest.fixture
def make_rs_daemon(realswitch, rs_world_url, tmp_path):
    """Start `switchd run` against the real switch: make_rs_daemon(extra_env=None,
    world_toml=None, require_ready=True). `world_toml` re-provisions the world first."""
    started: list[RsDaemon] = []

    def make(extra_env: dict | None = None, world_toml: str | None = None,
             require_ready: bool = True) -> RsDaemon:
        if world_toml is not None:
            from switchd.admin.provision import provision
            provision(rs_world_url, world.write(tmp_path / f"world-{len(started)}", world_toml)[0])
        daemon = RsDaemon.start(realswitch, rs_world_url, tmp_path / f"daemon-{len(started)}",
                                extra_env, require_ready)
        started.append(daemon)
        return daemon
    yield make
    codes = [(d, d.process.terminate()) for d in started]
    for d, rc in codes:
        assert rc == 0, f"switchd exited {rc} on SIGTERM:\n{d.process.log()[-3000:]}"


@pytest.fixture
def rs_daemon(make_rs_daemon):
    return make_rs_daemon()


@pytest.fixture(params=["sim", pytest.param("real", marks=pytest.mark.realswitch)])
def backend(request, rs_world_url):
    """One scenario, two switches: the simulator and the real FreeSWITCH."""
    if request.param == "sim":
        sim, daemon = request.getfixturevalue("start_switch")(rs_world_url)
        return SimBackend(sim, daemon, rs_world_url)
    return RealBackend(request.getfixturevalue("realswitch"), request.getfixturevalue("rs_daemon"))
