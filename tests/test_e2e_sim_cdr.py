"""The simulator posts FreeSWITCH's CDRs (mod_json_cdr) like the real switch does, and they
settle the money of calls that ended while switchd could not see them.

What the real switch does here is proven in tests/realswitch/test_cdr.py and test_faults.py;
this is the same story on the simulator, so the demo and the fast suite bill from the
switch's record too.
"""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

from daemon_harness import DaemonProcess, rows
from switchd.accounting.cdrs import json_cdr
from switchd.admin.provision import provision
from switchd.admin.rates_import import import_rates
from switchd.demo_world import write_decks, write_world
from switchd.sim import CdrSink, GatewayBehaviour, Simulator

CAPTURE = Path(__file__).parent / "fixtures" / "json_cdr" / "post-1.http"   # a carrier leg

pytestmark = pytest.mark.slow

PASSWORD = "sim-cdr-secret"
CREDENTIALS = "freeswitch:cdr-secret"
HOLD = 3600                      # simulated seconds: calls stay up until the test ends them
BERLIN = "+4930123{:03d}"        # globex: 0.0100/min, no connect fee, 6/6


def hand_cost(billsec: int) -> tuple[int, Decimal]:
    """globex's 49 line by hand: 6 s first increment, then 6 s steps, 0.0100 per minute."""
    billed = 0 if billsec <= 0 else 6 + -(-max(billsec - 6, 0) // 6) * 6
    cost = (Decimal("0.0100") * billed / 60).quantize(Decimal("0.000001"), ROUND_HALF_UP)
    return billed, cost


@pytest.fixture
def switch(migrated_pg_url, tmp_path):
    provision(migrated_pg_url, write_world(tmp_path))
    for carrier, deck in write_decks(tmp_path / "decks").items():
        import_rates(migrated_pg_url, deck, carrier)
    sim = Simulator(password=PASSWORD, seed=31, time_scale=50.0, heartbeat_interval=None,
                    default_gateway=GatewayBehaviour(answer_delay_s=1.0))
    _, port = sim.start()
    daemon = DaemonProcess(migrated_pg_url, port, PASSWORD, tmp_path,
                           extra_env={"SWITCHD_CDR_CREDENTIALS": CREDENTIALS})
    daemon.start()
    sim.dialplan_url = daemon.base_url + "/fs/dialplan"
    sim.set_cdr_sink(CdrSink(daemon.base_url + "/fs/cdr", credentials=CREDENTIALS,
                             retries=3, delay_s=0.2, err_dir=tmp_path / "json_cdr"))
    yield sim, daemon, migrated_pg_url
    sim.resume()
    rc = daemon.terminate()
    sim.stop()
    assert rc == 0, daemon.log()[-3000:]


def _carrier_leg(call):
    [leg] = [leg for leg in call.legs if leg.answered_us]
    return leg


def test_the_record_reads_like_the_real_switchs(switch):
    sim, daemon, url = switch
    call = sim.place_call(BERLIN.format(1), accountcode="acme", hold_seconds=7.3)
    assert call.wait(20) and call.result == "answered"
    assert sim.cdr_poster.wait_idle(20)
    b = _carrier_leg(call)
    assert set(sim.cdr_poster.delivered) == {call.uuid, b.uuid}
    # What switchd stored is the switch's record: its billsec, rated by hand.
    daemon.wait_until(lambda: rows(url, "SELECT 1 FROM call_legs WHERE leg_uuid = %s AND "
                                        "cdr_source = 'switch'", b.uuid),
                      what="the carrier leg's switch CDR")
    billsec = b.hangup_us // 1_000_000 - b.answered_us // 1_000_000
    [(carrier, stored_billsec, billed, cost, provisional)] = rows(
        url, "SELECT carrier, billsec, billed_seconds, cost, provisional FROM call_legs "
             "WHERE leg_uuid = %s", b.uuid)
    assert (carrier, stored_billsec, provisional) == ("globex", billsec, False)
    assert (billed, cost) == hand_cost(billsec)


def test_calls_that_end_in_an_esl_gap_are_settled_by_the_switchs_cdr(switch):
    sim, daemon, url = switch
    calls = [sim.place_call(BERLIN.format(10 + i), accountcode="acme", hold_seconds=HOLD)
             for i in range(2)]
    daemon.wait_until(lambda: all(c.answered_leg for c in calls), what="both calls answered")
    daemon.wait_until(lambda: len(daemon.get("/v1/calls")[1]["calls"]) == 2,
                      what="both calls listed")

    sim.server.stop()                     # the ESL network is down ...
    sim.drop_connections()
    for call in calls:                    # ... while both calls hang up
        sim.kill_call(call.uuid)
    assert all(call.wait(10) for call in calls)
    assert sim.cdr_poster.wait_idle(20)   # the switch posted its CDRs over HTTP meanwhile
    sim.server.start()

    for call in calls:
        b = _carrier_leg(call)
        daemon.wait_until(lambda: rows(url, "SELECT 1 FROM calls WHERE call_uuid = %s AND "
                                            "cdr_source = 'switch' AND NOT provisional",
                                       call.uuid), what=f"call {call.uuid} settled")
        billsec = b.hangup_us // 1_000_000 - b.answered_us // 1_000_000
        [(stored, billed, cost, source, provisional)] = rows(
            url, "SELECT billsec, billed_seconds, cost, cdr_source, provisional FROM call_legs "
                 "WHERE leg_uuid = %s", b.uuid)
        assert (stored, source, provisional) == (billsec, "switch", False)
        assert (billed, cost) == hand_cost(billsec)
    assert rows(url, "SELECT count(*), count(DISTINCT call_uuid) FROM calls") == [(2, 2)]
    assert sim.cdr_poster.written == [] and sim.cdr_poster.dropped == []


def test_cdrs_that_cannot_be_posted_go_to_the_error_directory(switch, tmp_path):
    sim, daemon, url = switch
    sim.set_cdr_sink(CdrSink(daemon.base_url + "/fs/cdr", credentials="freeswitch:wrong",
                             retries=1, delay_s=0.05, err_dir=tmp_path / "err"))
    call = sim.place_call(BERLIN.format(30), accountcode="acme", hold_seconds=7.3)
    assert call.wait(20)
    assert sim.cdr_poster.wait_idle(20)
    b = _carrier_leg(call)
    assert sim.cdr_poster.delivered == []
    assert {p.name for p in sim.cdr_poster.written} == {f"{call.uuid}.cdr.json",
                                                       f"{b.uuid}.cdr.json"}
    parsed = json_cdr.parse((tmp_path / "err" / f"{b.uuid}.cdr.json").read_bytes())
    assert (parsed.uuid, parsed.call_uuid, parsed.gateway) == (b.uuid, call.uuid, b.gateway)
    # The variables switchd reads are where FreeSWITCH 1.10.12 puts them (capture).
    real = json_cdr.decode_body(CAPTURE.read_bytes().split(b"\n\n", 1)[1])
    ours = json_cdr.decode_body((tmp_path / "err" / f"{b.uuid}.cdr.json").read_bytes())
    read = {"uuid", "originating_leg_uuid", "start_uepoch", "answer_uepoch", "progress_uepoch",
            "end_uepoch", "billsec", "billmsec", "hangup_cause",
            "sip_gateway_name", "switchd_carrier", "switchd_rate"}
    assert read <= set(real["variables"]) and read <= set(ours["variables"])
    assert set(real) - {"callStats"} == set(ours)
