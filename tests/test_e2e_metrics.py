"""/metrics of a running `switchd run`: build info, process collectors, no `_created`
series, deck size and age, database up, gateway state and carrier_up following the
gateways FreeSWITCH reports (simulator `sofia::gateway_state` events)."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from daemon_harness import metric


def _samples(daemon) -> dict:
    status, text = daemon.get("/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_show_build_process_decks_backends_and_gateways(switch):
    sim, daemon = switch
    samples = _samples(daemon)
    names = {name for name, _ in samples}
    assert not [n for n in names if n.endswith("_created")]
    assert {"process_cpu_seconds_total", "process_open_fds", "process_max_fds",
            "process_resident_memory_bytes", "python_info"} <= names
    build = [labels for name, labels in samples if name == "switchd_build_info"]
    assert len(build) == 1 and dict(build[0])["version"]
    assert metric(daemon, "switchd_database_up") == 1
    assert not [n for n in names if n == "switchd_redis_up"]          # no Redis configured
    for carrier in ("budgetel", "globex", "primo"):
        assert metric(daemon, "switchd_deck_prefixes", carrier=carrier) > 0
        assert 0 <= metric(daemon, "switchd_deck_age_seconds", carrier=carrier) < 3600
        assert metric(daemon, "switchd_carrier_up", carrier=carrier) == 1
    assert metric(daemon, "switchd_gateway_up", carrier="globex", gateway="globex_gw2") == 1

    # One of globex's two gateways down: the carrier is still usable.
    sim.emit_gateway_state("globex_gw1", state="NOREG", ping_status="DOWN")
    daemon.wait_until(lambda: metric(daemon, "switchd_gateway_up", gateway="globex_gw1") == 0
                      or None, what="globex_gw1 reported down")
    assert metric(daemon, "switchd_carrier_up", carrier="globex") == 1
    # Both down: the carrier cannot be used, and says so (it used to stay 1).
    sim.emit_gateway_state("globex_gw2", state="NOREG", ping_status="DOWN")
    daemon.wait_until(lambda: metric(daemon, "switchd_carrier_up", carrier="globex") == 0
                      or None, what="globex down once all its gateways are")
    assert metric(daemon, "switchd_carrier_up", carrier="budgetel") == 1
    # Back up.
    sim.emit_gateway_state("globex_gw2", state="REGED", ping_status="UP", status=200)
    daemon.wait_until(lambda: metric(daemon, "switchd_carrier_up", carrier="globex") == 1
                      or None, what="globex up again")
