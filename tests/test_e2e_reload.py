"""Business data changes reach a running daemon without a restart or a dropped call."""
from __future__ import annotations

import signal

import psycopg

import pytest

from switchd.admin.provision import provision
from switchd.admin.rates_import import import_rates

pytestmark = pytest.mark.slow


def _decision(url, call_uuid):
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT result, chosen FROM routing_decisions WHERE call_uuid = %s "
                           "ORDER BY created_at LIMIT 1",   # the call's first lookup
                           (call_uuid,)).fetchone()
    return row


def test_rate_import_switches_the_cheapest_carrier_live(switch, world_url, tmp_path):
    sim, daemon = switch
    before = sim.place_call("02079460300", accountcode="acme", hold_seconds=5)
    assert before.wait(30)
    row = daemon.wait_until(lambda: _decision(world_url, before.uuid), what="first decision")
    assert row[1][0]["carrier"] == "budgetel"
    deck = tmp_path / "primo-cheap.csv"
    deck.write_text("prefix,rate_per_min\n44,0.0010\n4420,0.0005\n")
    # A long call stays up across the reload: it must not be dropped.
    long_call = sim.place_call("+4930123777", accountcode="acme", hold_seconds=3000)
    import_rates(world_url, deck, "primo")

    def routed_to_primo():
        call = sim.place_call("02079460301", accountcode="acme", hold_seconds=5)
        call.wait(30)
        got = daemon.wait_until(lambda: _decision(world_url, call.uuid), what="decision")
        return got[1][0]["carrier"] == "primo" and got[1][0]["prefix"] == "4420"
    daemon.wait_until(routed_to_primo, timeout=20, what="primo's new deck used")
    assert not long_call.done.is_set(), "a reload must not drop live calls"
    sim.kill_call(long_call.uuid)


def test_provisioned_did_works_without_restart_and_sighup_keeps_serving(switch, world_url, tmp_path):
    sim, daemon = switch
    extra = tmp_path / "more.toml"
    extra.write_text('[[dids]]\nnumber = "+442079460199"\ntenant = "acme"\n'
                     'destination_type = "extension"\ndestination = "2000"\n')
    provision(world_url, extra)

    def did_routed():
        call = sim.place_call("+442079460199", caller="+12125550100", hold_seconds=3)
        call.wait(30)
        got = daemon.wait_until(lambda: _decision(world_url, call.uuid), what="decision")
        return got[0] == "routed"
    daemon.wait_until(did_routed, timeout=20, what="new DID routed")

    # A DID written behind the daemon's back (no NOTIFY): only a reload can show it.
    with psycopg.connect(world_url, autocommit=True) as conn:
        conn.execute("INSERT INTO dids (number, tenant_id, destination_type, destination) "
                     "SELECT '+442079460198', id, 'extension', '2001' FROM tenants "
                     "WHERE name = 'acme'")

    def routed(number):
        call = sim.place_call(number, caller="+12125550100", hold_seconds=3)
        call.wait(30)
        return daemon.wait_until(lambda: _decision(world_url, call.uuid), what="decision")[0]
    assert routed("+442079460198") == "refused"          # not seen without a reload
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_until(lambda: routed("+442079460198") == "routed", timeout=20,
                      what="the DID inserted behind the daemon's back routed after SIGHUP")
    assert routed("+442079460199") == "routed"           # and the rest still served
    assert daemon.proc.poll() is None and daemon.get("/readyz")[0] == 200
