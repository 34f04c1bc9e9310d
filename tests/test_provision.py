"""switchd provision against a real PostgreSQL: validation, idempotence, updates, NOTIFY."""
from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from switchd.adapters.db.store import load_world
from switchd.admin.provision import ProvisionError, parse, provision

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "provision.toml"


def _write(tmp_path, text, name="world.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_example_provisions_and_loads(migrated_pg_url):
    summary = provision(migrated_pg_url, EXAMPLE)
    assert summary.counts["tenants"]["inserted"] == 1
    assert summary.counts["carriers"]["inserted"] == 3
    assert summary.counts["gateways"]["inserted"] == 5
    assert summary.counts["dids"]["inserted"] == 3
    with psycopg.connect(migrated_pg_url) as conn:
        world = load_world(conn)
    acme = world.tenants["acme"]
    assert acme.monthly_budget == Decimal("500.00")
    assert acme.max_rate_per_min == Decimal("0.50")
    assert acme.allowed_countries == ("GB", "US", "FR", "DE")
    assert world.tenant_by_domain("acme.pbx.example.net") is acme
    assert [g.name for g in world.carriers["alpha"].gateways] == ["alpha-lon", "alpha-ams"]
    assert world.carriers["bravo"].default_initial_increment == 1
    assert world.dids["+442079460001"].destination_type == "sip_uri"
    assert world.campaigns["acme-renewals"].tenant == "acme"


def test_second_run_changes_nothing_and_edits_update(migrated_pg_url, tmp_path):
    provision(migrated_pg_url, EXAMPLE)
    again = provision(migrated_pg_url, EXAMPLE)
    assert not again.changed
    assert again.counts["gateways"]["unchanged"] == 5

    edited = EXAMPLE.read_text().replace("monthly_budget = 500.00", "monthly_budget = 750.25")
    summary = provision(migrated_pg_url, _write(tmp_path, edited))
    assert summary.counts["tenants"] == {"inserted": 0, "updated": 1, "unchanged": 0, "deleted": 0}
    assert summary.counts["carriers"]["updated"] == 0
    with psycopg.connect(migrated_pg_url) as conn:
        assert load_world(conn).tenants["acme"].monthly_budget == Decimal("750.25")


def test_notify_after_commit_only_when_changed(migrated_pg_url):
    with psycopg.connect(migrated_pg_url, autocommit=True) as listener:
        listener.execute("LISTEN switchd_world")
        provision(migrated_pg_url, EXAMPLE)
        got = list(listener.notifies(timeout=2, stop_after=1))
        assert len(got) == 1 and got[0].channel == "switchd_world"
        provision(migrated_pg_url, EXAMPLE)
        assert list(listener.notifies(timeout=0.3)) == []


def test_errors_name_file_line_index_and_key_and_write_nothing(migrated_pg_url, tmp_path):
    bad = _write(tmp_path, """
[[tenants]]
name = "a"
[[tenants]]
name = "b"
[[tenants]]
name = "c"
max_call_seconds = -5
monthly_budgett = 10

[[carriers]]
name = "x"
  [[carriers.gateways]]
  name = "gw 1"
  leg_timout = 3

[[dids]]
number = "442079460000"
tenant = "nobody"
destination_type = "extension"
destination = "1"
""")
    with pytest.raises(ProvisionError) as info:
        provision(migrated_pg_url, bad)
    errors = info.value.errors
    label = str(bad)
    assert f"{label}:8: tenants[2].max_call_seconds: -5 is out of range 1..2147483647" in errors
    assert any(e.startswith(f"{label}:9: tenants[2].monthly_budgett: unknown key") for e in errors)
    assert any(e.startswith(f"{label}:15: carriers[0].gateways[0].leg_timout: unknown key")
               for e in errors)
    assert f"{label}:14: carriers[0].gateways[0].name: 'gw 1' may only contain letters, digits, " \
        "'.', '_' and '-'" in errors
    assert any(e.startswith(f"{label}:18: dids[0].number: '442079460000' is not an E.164")
               for e in errors)
    with psycopg.connect(migrated_pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM tenants").fetchone()[0] == 0


def test_reference_error_rolls_back_everything(migrated_pg_url, tmp_path):
    # Valid on its own, but the DID names a tenant that exists nowhere: nothing is written.
    bad = _write(tmp_path, EXAMPLE.read_text() + """
[[dids]]
number = "+15551230000"
tenant = "globex"
destination_type = "extension"
destination = "2000"
""")
    with pytest.raises(ProvisionError, match=r"dids\[3\]\.tenant: no tenant named 'globex'"):
        provision(migrated_pg_url, bad)
    with psycopg.connect(migrated_pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM carriers").fetchone()[0] == 0


def test_toml_syntax_error_reports_line(tmp_path):
    bad = _write(tmp_path, '[[tenants]]\nname = "a"\nmax_call_seconds = = 3\n')
    with pytest.raises(ProvisionError, match=r"world\.toml: TOML syntax error: .*line 3"):
        parse(bad)


def test_unknown_top_level_and_duplicates(tmp_path):
    bad = _write(tmp_path, """
[[tenant]]
name = "a"
[[carriers]]
name = "x"
[[carriers]]
name = "x"
""")
    with pytest.raises(ProvisionError) as info:
        parse(bad)
    msgs = "\n".join(info.value.errors)
    assert "tenant: unknown key" in msgs
    assert "carriers[1].name: 'x' already used by carriers[0]" in msgs


def test_accountcode_clash_with_database(migrated_pg_url, tmp_path):
    provision(migrated_pg_url, EXAMPLE)
    other = _write(tmp_path, '[[tenants]]\nname = "globex"\naccountcode = "acme"\n')
    with pytest.raises(ProvisionError, match=r"tenants\[0\]\.accountcode: 'acme' already used "
                                             r"by tenant 'acme'"):
        provision(migrated_pg_url, other)


def test_carrier_billing_rounding_is_provisioned_and_checked(migrated_pg_url, tmp_path):
    text = '[[carriers]]\nname = "exact"\nbilling_rounding = "ceil_ms"\n\n[[carriers]]\nname = "plain"\n'
    provision(migrated_pg_url, _write(tmp_path, text))
    with psycopg.connect(migrated_pg_url) as conn:
        world = load_world(conn)
    assert world.carriers["exact"].billing_rounding == "ceil_ms"
    assert world.carriers["plain"].billing_rounding == "billsec"        # the default
    with pytest.raises(ProvisionError, match=r"carriers\[0\]\.billing_rounding"):
        parse(_write(tmp_path, '[[carriers]]\nname = "x"\nbilling_rounding = "floor"\n', "bad.toml"))


def test_a_missing_key_names_the_line_of_its_table_and_the_api_body_names_none(tmp_path):
    from switchd.admin.provision import parse, parse_doc
    path = _write(tmp_path, '# world\n\n[[carriers]]\nname = "x"\n  [[carriers.gateways]]\n'
                            '  profile = "external"\n\n[[carriers]]\nname = "y"\n')
    with pytest.raises(ProvisionError) as info:
        parse(path)
    assert info.value.errors == [f"{path}:5: carriers[0].gateways[0].name: required"]
    with pytest.raises(ProvisionError) as info:
        parse_doc("body", {"carriers": [{"name": "x", "gateways": [{"profile": "external"}]}]})
    assert info.value.errors == ["body: carriers[0].gateways[0].name: required"]
