"""`switchd report` over CDRs the daemon wrote from simulated calls (simulator → `switchd
run` → PostgreSQL → report), in simulated time so the figures are exact.

London (+44 20) is budgetel's first (0.009, 60/60), then globex's (0.011 + 0.001 connect,
6/6), then primo's (0.015, 1/1), by the demo decks."""
from __future__ import annotations

import json

import pytest

from daemon_harness import rows
from switchd.cli import main
from switchd.sim import GatewayBehaviour

pytestmark = pytest.mark.slow
WINDOW = ["--since", "2000-01-01", "--until", "2100-01-01"]


def _report(capsys, *argv):
    assert main(["report", *argv, *WINDOW, "--json"]) == 0, capsys.readouterr().err
    return {r["key"]: r for r in json.loads(capsys.readouterr().out)}


def test_report_of_a_failover_and_a_busy_call(switch, world_url, monkeypatch, tmp_path, capsys):
    sim, daemon = switch
    ringing = GatewayBehaviour(progress_delay_s=0.8, answer_delay_s=3.0)
    for gw in ("globex_gw1", "globex_gw2", "primo_gw1"):
        sim.set_gateway(gw, ringing)
    sim.set_gateway("budgetel_gw1", GatewayBehaviour(sip_status=503))
    first = sim.place_call("02079460000", accountcode="acme", hold_seconds=60)
    assert first.wait(60)
    sim.set_gateway("budgetel_gw1", GatewayBehaviour(fail_cause="USER_BUSY"))
    second = sim.place_call("02079460001", accountcode="acme", hold_seconds=60)
    assert second.wait(60)
    daemon.wait_until(lambda: rows(world_url, "SELECT count(*) FROM calls WHERE ended_at IS "
                                              "NOT NULL")[0][0] == 2 or None, what="two CDRs")
    monkeypatch.setenv("SWITCHD_DATABASE_URL", world_url)
    monkeypatch.setenv("SWITCHD_DATA_DIR", str(tmp_path / "cli"))

    carriers = _report(capsys, "--by", "carrier", "--reference", "primo")
    budgetel, globex = carriers["budgetel"], carriers["globex"]
    # budgetel: a 503 (the network's failure) and a busy callee (not the network's).
    assert (budgetel["calls"], budgetel["answered"], budgetel["asr"], budgetel["ner"]) == \
        (2, 0, "0.00", "50.00")
    assert {c["cause"] for c in budgetel["top_causes"]} == {"NORMAL_TEMPORARY_FAILURE",
                                                            "USER_BUSY"}
    assert budgetel["dispositions"] == {"callee": 1, "carrier_failure": 1}
    # globex answered the failover: rang at 0.8 s, 60 s of talk billed 60 s (6/6):
    # 0.001 + 0.011 = 0.012. On primo's deck (0.015, 1/1): 0.015, so 0.003 saved.
    assert (globex["calls"], globex["answered"], globex["asr"], globex["ner"]) == \
        (1, 1, "100.00", "100.00")
    assert (globex["pdd_ms"], globex["acd_seconds"], globex["billed_minutes"], globex["cost"]) \
        == (800, "60.0", "1.00", "0.012000")
    assert (globex["reference_cost"], globex["savings"]) == ("0.015000", "0.003000")
    assert "primo" not in carriers

    (acme,) = _report(capsys, "--by", "tenant").values()
    assert (acme["calls"], acme["answered"], acme["asr"], acme["ner"], acme["cost"]) == \
        (2, 1, "50.00", "100.00", "0.012000")
