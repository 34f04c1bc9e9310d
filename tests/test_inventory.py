"""The inventory commands against a real PostgreSQL, through the CLI entry point:
provision --dry-run, tenants/carriers/dids list, rates list/export/delete (export →
import round-trip), and the other doors (config, originate API)."""
from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from switchd.cli import main
from switchd.config import ConfigError, load_config
from switchd.calls.originate import OriginateError, OriginateRequest
from switchd.admin.provision import provision
from switchd.admin.rates_import import import_rates

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "provision.toml"


@pytest.fixture
def db(migrated_pg_url, monkeypatch):
    monkeypatch.setenv("SWITCHD_DATABASE_URL", migrated_pg_url)
    monkeypatch.delenv("SWITCHD_CONFIG", raising=False)
    provision(migrated_pg_url, EXAMPLE)
    return migrated_pg_url


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _rates(url, carrier) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            """SELECT r.prefix, r.rate_per_min, r.connect_fee, r.initial_increment,
                      r.subsequent_increment, r.effective_from, r.effective_to, r.description
               FROM rates r JOIN rate_decks d ON d.id = r.deck_id
               JOIN carriers c ON c.id = d.carrier_id
               WHERE c.name = %s AND d.effective_from = '-infinity'
               ORDER BY 1, 6 NULLS FIRST""", (carrier,)).fetchall()


def test_provision_dry_run_through_the_cli(db, tmp_path, capsys):
    path = tmp_path / "w.toml"
    path.write_text('[[tenants]]\nname = "acme"\nmax_concurrent = 9\n')
    code, out, _ = _run(capsys, "provision", str(path), "--dry-run")
    assert code == 0
    assert out.splitlines()[:2] == ["~ tenant acme", "    max_concurrent: 50 -> 9"]
    assert "(dry run: nothing written)" in out
    code, out, _ = _run(capsys, "tenants", "list", "--json")
    assert json.loads(out)[0]["max_concurrent"] == 50


def test_provision_refusal_is_one_line_naming_each_problem(db, tmp_path, capsys):
    path = tmp_path / "w.toml"
    path.write_text('[[carriers]]\nname = "bad,carrier"\n[[tenants]]\nname = "ev|il"\n')
    code, _, err = _run(capsys, "provision", str(path))
    assert code == 4
    assert err.strip().splitlines() == [
        f"switchd provision: {path}:4: tenants[0].name: 'ev|il' may only contain letters, "
        "digits, '.', '_' and '-'; "
        f"{path}:2: carriers[0].name: 'bad,carrier' may only contain letters, "
        "digits, '.', '_' and '-'"]


def test_lists_as_tables_and_json(db, capsys):
    code, out, _ = _run(capsys, "tenants", "list")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["NAME", "ACCOUNTCODE", "DOMAIN"]
    assert "acme.pbx.example.net" in out and "500.000000" in out
    code, out, _ = _run(capsys, "carriers", "list", "--json")
    carriers = json.loads(out)
    assert [c["name"] for c in carriers] == ["alpha", "bravo", "charlie"]
    assert [g["name"] for g in carriers[0]["gateways"]] == ["alpha-lon", "alpha-ams"]
    assert carriers[0]["cps_limit"] == "10.000"             # money/decimals as strings
    code, out, _ = _run(capsys, "carriers", "list")
    assert "alpha-lon,alpha-ams" in out
    code, out, _ = _run(capsys, "dids", "list")
    assert out.splitlines()[0].split() == ["NUMBER", "TENANT", "TYPE", "DESTINATION"]
    assert len(out.splitlines()) == 4
    code, out, _ = _run(capsys, "dids", "list", "--json")
    assert json.loads(out)[1] == {"number": "+442079460001", "tenant": "acme",
                                  "destination_type": "sip_uri",
                                  "destination": "sip:support@acme.pbx.example.net"}


DECK = """prefix,rate_per_min,connect_fee,initial_increment,subsequent_increment,effective_from,effective_to,description
44,0.012,0.000100,60,6,,,UK fixed
447,0.050000,0,1,1,,2027-01-01T00:00:00+00:00,UK mobile old
447,0.045,0,1,1,2027-01-01T00:00:00+00:00,,"UK mobile, new"
1,0.008,,,,,,
"""


def test_export_import_round_trip(db, tmp_path, capsys):
    deck = tmp_path / "deck.csv"
    deck.write_text(DECK)
    import_rates(db, deck, "alpha")
    code, out, err = _run(capsys, "rates", "export", "--carrier", "alpha")
    assert code == 0 and "exported 4 rate(s)" in err
    exported = tmp_path / "exported.csv"
    exported.write_text(out)
    import_rates(db, exported, "bravo")
    assert _rates(db, "bravo") == _rates(db, "alpha")
    assert len(_rates(db, "alpha")) == 4
    # And again: export of the re-import is byte for byte the same text.
    code, again, _ = _run(capsys, "rates", "export", "--carrier", "bravo")
    assert again == out


def test_rates_list_export_at_and_delete(db, tmp_path, capsys):
    base, future = tmp_path / "base.csv", tmp_path / "future.csv"
    base.write_text("prefix,rate_per_min\n44,0.01\n33,0.02\n")
    future.write_text("prefix,rate_per_min\n44,0.009\n")
    import_rates(db, base, "alpha")
    from datetime import datetime, timezone
    later = datetime(2099, 1, 1, tzinfo=timezone.utc)
    import_rates(db, future, "alpha", effective_from=later)
    code, out, _ = _run(capsys, "rates", "list", "--carrier", "alpha", "--json")
    decks = json.loads(out)
    assert [(d["effective_from"], d["row_count"], d["state"]) for d in decks] == [
        (None, 2, "live"), ("2099-01-01T00:00:00+00:00", 1, "future")]
    code, out, _ = _run(capsys, "rates", "list", "--carrier", "alpha")
    assert "(base: always)" in out and "future" in out
    code, out, _ = _run(capsys, "rates", "export", "--carrier", "alpha", "--at", "2099-06-01")
    assert out.splitlines()[1:] == ["44,0.009000,0.000000,60,6,,,"]
    with psycopg.connect(db, autocommit=True) as listener:
        listener.execute("LISTEN switchd_rates")
        code, out, _ = _run(capsys, "rates", "delete", "--carrier", "alpha",
                            "--deck", str(decks[0]["id"]))
        got = list(listener.notifies(timeout=2, stop_after=1))
    assert code == 0 and got[0].payload == "alpha"
    assert f"deleted deck {decks[0]['id']} of carrier alpha (the base deck, 2 rows)" in out
    assert "live now: none" in out
    code, _, err = _run(capsys, "rates", "delete", "--carrier", "alpha", "--deck", str(decks[0]["id"]))
    assert code == 4 and f"carrier 'alpha' has no deck {decks[0]['id']}" in err
    code, _, err = _run(capsys, "rates", "export", "--carrier", "nosuch")
    assert code == 4 and "unknown carrier 'nosuch' (known: alpha, bravo, charlie)" in err
    code, _, err = _run(capsys, "rates", "export", "--carrier", "alpha")
    assert code == 4 and "has no deck live at" in err


# --- the other doors ---------------------------------------------------------------------
@pytest.mark.parametrize("env,value,reason", [
    ("SWITCHD_ROUTING_EMERGENCY_GATEWAY", "gw,evil", "'gw,evil' may only contain"),
    ("SWITCHD_ROUTING_TENANT_VARIABLE", "x${y}", "is not a channel variable name"),
])
def test_config_values_that_reach_the_switch(env, value, reason):
    with pytest.raises(ConfigError, match=reason):
        load_config(environ={env: value})
    assert load_config(environ={env: "emerg_gw1" if "GATEWAY" in env else "my_tenant"})


@pytest.mark.parametrize("field,value,reason", [
    ("tenant", "ev|il", "tenant: 'ev|il' may only contain"),
    ("campaign", "c,1", "campaign: 'c,1' may only contain"),
    ("destination", "+44${x}", r"destination: '\+44\$\{x\}' contains '\$'"),
    ("destination", "1" * 65, "destination: .* at most 64 characters"),
    ("caller_id", "123,x", "caller_id: '123,x': digits with an optional leading"),
])
def test_originate_api_fields(field, value, reason):
    payload = {"tenant": "acme", "destination": "+442079460000", field: value}
    with pytest.raises(OriginateError, match=reason) as info:
        OriginateRequest.from_json(payload)
    assert info.value.status == 400
    assert OriginateRequest.from_json({"tenant": "acme", "destination": "+44 20 7946 0000"})


@pytest.mark.parametrize("words", [["tenants", "list"], ["carriers", "list"], ["dids", "list"],
                                   ["rates", "list"], ["rates", "export"], ["rates", "delete"],
                                   ["provision"]])
def test_new_commands_explain_themselves(words, capsys):
    from switchd.cli import build_parser
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(words + ["--help"])
    assert info.value.code == 0
    assert "usage: switchd" in capsys.readouterr().out


def test_empty_lists_say_how_to_fill_them(migrated_pg_url, monkeypatch, capsys):
    monkeypatch.setenv("SWITCHD_DATABASE_URL", migrated_pg_url)
    code, out, _ = _run(capsys, "tenants", "list")
    assert code == 0 and out.strip() == "no tenants (load some with switchd provision)"
    code, out, _ = _run(capsys, "dids", "list", "--json")
    assert json.loads(out) == []
