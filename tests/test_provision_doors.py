"""switchd provision against a real PostgreSQL: refusals at the door (the cases seen in the
field), partial files keep what they leave out, the dry run writes nothing, explicit
deletion ([delete], --prune) and the references it refuses to break."""
from __future__ import annotations

import logging
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from switchd.adapters.db.store import load_world
from switchd.admin.provision import ProvisionError, provision
from switchd.admin.rates_import import RatesImportError, import_rates

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "provision.toml"
TABLES = ("tenants", "carriers", "gateways", "dids", "campaigns", "rate_decks", "rates")


def _write(tmp_path, text, name="world.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def _counts(url) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


def _errors(url, path, **kw) -> list[str]:
    with pytest.raises(ProvisionError) as info:
        provision(url, path, **kw)
    return info.value.errors


FIELD_CASES = """
[[tenants]]
name = "ev|il"
accountcode = "evil${x}"
default_region = "XX"
allowed_countries = ["GB", "UK"]
max_concurrent = -1
monthly_budget = 10.1234567

[[carriers]]
name = "good"
[[carriers]]
name = "other"
max_channels = 1000000000000
[[carriers]]
name = "bad,carrier"

[[dids]]
number = "+442079460000"
tenant = "acme"
destination_type = "extension"
destination = "1000|evil"

[[dids]]
number = "+442079460001"
tenant = "acme"
destination_type = "sip_uri"
destination = "notauri"
"""


def test_field_cases_are_refused_with_file_and_field(migrated_pg_url, tmp_path):
    path = _write(tmp_path, FIELD_CASES)
    errors = _errors(migrated_pg_url, path)
    f = str(path)
    expected = [
        f"{f}:3: tenants[0].name: 'ev|il' may only contain letters, digits, '.', '_' and '-'",
        f"{f}:4: tenants[0].accountcode: 'evil${{x}}' may only contain letters, digits, '.', '_' and '-'",
        f"{f}:5: tenants[0].default_region: 'XX' is not an ISO 3166 region code known to phonenumbers",
        f"{f}:6: tenants[0].allowed_countries: [1]: 'UK' is not an ISO 3166 code: the United Kingdom is 'GB'",
        f"{f}:7: tenants[0].max_concurrent: -1 is out of range 0..2147483647",
        f"{f}:8: tenants[0].monthly_budget: 10.1234567 has more than 6 decimal places",
        f"{f}:14: carriers[1].max_channels: 1000000000000 is out of range 0..2147483647",
        f"{f}:16: carriers[2].name: 'bad,carrier' may only contain letters, digits, '.', '_' and '-'",
        f"{f}:22: dids[0].destination: '1000|evil' is not an extension (letters, digits and _ * # + . -, at most 64)",
        f"{f}:28: dids[1].destination: 'notauri' is not a SIP URI like 'sip:user@host[:port]'",
    ]
    for line in expected:
        assert line in errors
    assert _counts(migrated_pg_url)["carriers"] == 0       # the good carrier neither


def test_money_refused_with_the_same_words_as_rates_import(migrated_pg_url, tmp_path):
    provision(migrated_pg_url, EXAMPLE)
    errors = _errors(migrated_pg_url, _write(tmp_path, '[[tenants]]\nname = "acme"\n'
                                                       'max_rate_per_min = 0.1234567\n'))
    deck = tmp_path / "deck.csv"
    deck.write_text("prefix,rate_per_min\n44,0.1234567\n")
    with pytest.raises(RatesImportError) as info:
        import_rates(migrated_pg_url, deck, "alpha")
    reason = "0.1234567 has more than 6 decimal places"
    assert errors == [f"{tmp_path / 'world.toml'}:3: tenants[0].max_rate_per_min: {reason}"]
    assert str(info.value) == f"{deck}:2: rate_per_min {reason}"


@pytest.mark.parametrize("line,reason", [
    ("monthly_budget = 1000000000000", "too large (at most 999999999999.999999)"),
    ("cps_limit = 1.0005", "more than 3 decimal places"),
    ("cps_limit = 0", "must be greater than 0"),
    ("max_rate_per_min = 1000000", "too large (at most 999999.999999)"),
    ("max_call_seconds = 0", "out of range 1..2147483647"),
    ('domain = "acme example"', "not a domain name"),
    ('blocked_prefixes = ["44 9"]', "not 1 to 16 digits"),
    ('routing_mode = "cheap"', "not one of 'cost', 'priority'"),
    ('enabled = "yes"', "not true or false"),
])
def test_out_of_range_tenant_fields(migrated_pg_url, tmp_path, line, reason):
    errors = _errors(migrated_pg_url, _write(tmp_path, f'[[tenants]]\nname = "t"\n{line}\n'))
    assert len(errors) == 1 and reason in errors[0] and "tenants[0]." in errors[0]


def test_gateway_and_campaign_fields(migrated_pg_url, tmp_path):
    errors = _errors(migrated_pg_url, _write(tmp_path, """
[[carriers]]
name = "c"
  [[carriers.gateways]]
  name = "gw1"
  profile = "ext,ernal"
  leg_timeout = 100000
[[carriers]]
name = "d"
default_initial_increment = 7200
[[campaigns]]
name = "camp|1"
tenant = "t"
"""))
    assert any("carriers[0].gateways[0].profile: 'ext,ernal' may only" in e for e in errors)
    assert any("carriers[0].gateways[0].leg_timeout: 100000 is out of range 1..3600" in e
               for e in errors)
    assert any("campaigns[0].name: 'camp|1' may only" in e for e in errors)
    # an increment rating cannot bill: refused here, not at the deck's load
    assert any("carriers[1].default_initial_increment: 7200 is out of range 1..3600" in e
               for e in errors)


def test_partial_file_keeps_what_it_leaves_out(migrated_pg_url, tmp_path):
    provision(migrated_pg_url, EXAMPLE)
    summary = provision(migrated_pg_url, _write(tmp_path, '[[tenants]]\nname = "acme"\n'
                                                          'max_concurrent = 7\n'))
    assert summary.counts["tenants"]["updated"] == 1
    assert [c.fields for c in summary.changes] == [(("max_concurrent", 50, 7),)]
    with psycopg.connect(migrated_pg_url) as conn:
        acme = load_world(conn).tenants["acme"]
        assert len(load_world(conn).carriers) == 3          # not pruned
    assert acme.max_concurrent == 7
    assert acme.monthly_budget == Decimal("500.00")
    assert acme.blocked_prefixes == ("44900", "44871")
    assert acme.allowed_countries == ("GB", "US", "FR", "DE")


def test_empty_string_clears_an_optional_limit(migrated_pg_url, tmp_path):
    provision(migrated_pg_url, EXAMPLE)
    provision(migrated_pg_url, _write(tmp_path, '[[tenants]]\nname = "acme"\nmonthly_budget = ""\n'))
    with psycopg.connect(migrated_pg_url) as conn:
        assert load_world(conn).tenants["acme"].monthly_budget is None


def test_dry_run_prints_the_diff_and_writes_nothing(migrated_pg_url, tmp_path):
    provision(migrated_pg_url, EXAMPLE)
    before = _counts(migrated_pg_url)
    without_campaign = EXAMPLE.read_text().split("[[campaigns]]")[0]
    edited = (without_campaign.replace("monthly_budget = 500.00", "monthly_budget = 750.25")
              + '\n[[tenants]]\nname = "globex"\naccountcode = "globex"\n'
              + '\n[delete]\ncampaigns = ["acme-renewals"]\n')
    with psycopg.connect(migrated_pg_url, autocommit=True) as listener:
        listener.execute("LISTEN switchd_world")
        summary = provision(migrated_pg_url, _write(tmp_path, edited), dry_run=True)
        assert list(listener.notifies(timeout=0.3)) == []
    assert _counts(migrated_pg_url) == before
    diff = summary.diff().splitlines()
    assert "~ tenant acme" in diff and "    monthly_budget: 500.000000 -> 750.25" in diff
    assert "+ tenant globex" in diff and "    accountcode = globex" in diff
    assert "- campaign acme-renewals ([delete])" in diff
    assert str(summary).endswith("(dry run: nothing written)")
    with psycopg.connect(migrated_pg_url) as conn:
        assert load_world(conn).tenants["acme"].monthly_budget == Decimal("500.00")
    # The same file for real does what the dry run said.
    real = provision(migrated_pg_url, _write(tmp_path, edited))
    assert real.diff() == summary.diff()
    assert _counts(migrated_pg_url)["campaigns"] == 0


def test_prune_deletes_unlisted_objects_of_the_sections_present(migrated_pg_url, tmp_path):
    provision(migrated_pg_url, EXAMPLE)
    deck = tmp_path / "deck.csv"
    deck.write_text("prefix,rate_per_min\n44,0.01\n")
    import_rates(migrated_pg_url, deck, "charlie")
    only_two = """
[[carriers]]
name = "alpha"
  [[carriers.gateways]]
  name = "alpha-lon"
[[carriers]]
name = "bravo"
"""
    path = _write(tmp_path, only_two)
    dry = provision(migrated_pg_url, path, prune=True, dry_run=True)
    assert dry.diff().splitlines()[-2:] == [
        "- carrier charlie (--prune; with its 2 gateway(s) and 1 rate deck(s))",
        "- gateway alpha-ams (--prune)"]
    summary = provision(migrated_pg_url, path, prune=True)
    assert summary.counts["carriers"]["deleted"] == 1
    after = _counts(migrated_pg_url)
    assert (after["carriers"], after["gateways"], after["rate_decks"]) == (2, 2, 0)
    assert after["tenants"] == 1 and after["dids"] == 3      # sections not in the file: kept
    assert not provision(migrated_pg_url, path, prune=True).changed     # idempotent


def test_delete_refuses_to_orphan_and_can_delete_together(migrated_pg_url, tmp_path):
    provision(migrated_pg_url, EXAMPLE)
    errors = _errors(migrated_pg_url, _write(tmp_path, '[delete]\ntenants = ["acme"]\n'))
    assert errors == [f"{tmp_path / 'world.toml'}: cannot delete tenant 'acme': still used by "
                      "DID +442079460000, DID +442079460001, DID +442079460002, campaign "
                      "acme-renewals (delete those too, or move them to another tenant)"]
    assert _counts(migrated_pg_url)["tenants"] == 1
    together = _write(tmp_path, '[delete]\ntenants = ["acme"]\ncampaigns = ["acme-renewals"]\n'
                      'dids = ["+442079460000", "+442079460001", "+442079460002"]\n', "all.toml")
    with psycopg.connect(migrated_pg_url, autocommit=True) as listener:
        listener.execute("LISTEN switchd_world")
        provision(migrated_pg_url, together)
        assert len(list(listener.notifies(timeout=2, stop_after=1))) == 1
    counts = _counts(migrated_pg_url)
    assert (counts["tenants"], counts["dids"], counts["campaigns"]) == (0, 0, 0)
    assert not provision(migrated_pg_url, together).changed      # already gone: a no-op


def test_delete_refuses_a_carrier_a_tenant_still_allows(migrated_pg_url, tmp_path):
    provision(migrated_pg_url, EXAMPLE)
    provision(migrated_pg_url, _write(tmp_path, '[[tenants]]\nname = "acme"\n'
                                                'allowed_carriers = ["alpha", "bravo"]\n'))
    errors = _errors(migrated_pg_url, _write(tmp_path, '[delete]\ncarriers = ["bravo"]\n', "d.toml"))
    assert errors == [f"{tmp_path / 'd.toml'}: cannot delete carrier 'bravo': tenant(s) acme "
                      "list it in allowed_carriers (remove it there first)"]
    both = _write(tmp_path, '[[tenants]]\nname = "acme"\nallowed_carriers = ["alpha"]\n'
                            '[delete]\ncarriers = ["bravo"]\n', "both.toml")
    provision(migrated_pg_url, both)
    assert _counts(migrated_pg_url)["carriers"] == 2


def test_delete_and_list_the_same_object_is_refused(migrated_pg_url, tmp_path):
    errors = _errors(migrated_pg_url, _write(tmp_path, '[[carriers]]\nname = "x"\n'
                                                       '[delete]\ncarriers = ["x"]\nfoo = ["y"]\n'))
    assert any("delete.carriers: 'x' is also listed in the file" in e for e in errors)
    assert any("delete.foo: unknown key" in e for e in errors)


def test_bad_stored_rows_never_break_routing_for_others(migrated_pg_url, caplog):
    """Data written before the doors checked it (or by hand) is left out of the world with
    a warning, so one bad carrier cannot make every call fail."""
    provision(migrated_pg_url, EXAMPLE)
    with psycopg.connect(migrated_pg_url) as conn:
        conn.execute("INSERT INTO carriers (name) VALUES ('bad,carrier')")
        conn.execute("INSERT INTO gateways (carrier_id, name) SELECT id, 'gw|x' FROM carriers "
                     "WHERE name = 'alpha'")
        conn.execute("UPDATE dids SET destination = '1000|evil' WHERE number = '+442079460000'")
        conn.commit()
        with caplog.at_level(logging.WARNING, logger="switchd.adapters.db.store"):
            world = load_world(conn)
    assert sorted(world.carriers) == ["alpha", "bravo", "charlie"]
    assert [g.name for g in world.carriers["alpha"].gateways] == ["alpha-lon", "alpha-ams"]
    assert "+442079460000" not in world.dids and "+442079460001" in world.dids
    text = caplog.text
    assert "ignoring carrier 'bad,carrier'" in text and "ignoring did '+442079460000'" in text


def test_accountcode_taken_by_another_stored_tenant(migrated_pg_url, tmp_path):
    provision(migrated_pg_url, _write(tmp_path, '[[tenants]]\nname = "a"\naccountcode = "x"\n'
                                                '[[tenants]]\nname = "b"\naccountcode = "y"\n'))
    swap = _write(tmp_path, '[[tenants]]\nname = "a"\naccountcode = "y"\n'
                            '[[tenants]]\nname = "b"\naccountcode = "x"\n', "swap.toml")
    errors = _errors(migrated_pg_url, swap)
    assert f"{swap}: tenants[0].accountcode: 'y' already used by tenant 'b' in the database" in errors


def test_prune_with_an_empty_section_empties_it(migrated_pg_url, tmp_path):
    provision(migrated_pg_url, EXAMPLE)
    summary = provision(migrated_pg_url, _write(tmp_path, "dids = []\n"), prune=True)
    assert summary.counts["dids"]["deleted"] == 3
    after = _counts(migrated_pg_url)
    assert (after["dids"], after["tenants"], after["carriers"]) == (0, 1, 3)


def test_a_bad_stored_carrier_cannot_make_other_calls_fail(migrated_pg_url, tmp_path):
    """The field case: a carrier 'bad,carrier' (cheapest of all) written behind the doors'
    back made every outbound call answer 484. The world load leaves it out; calls route."""
    from switchd.routing.books import HealthBook, SpendBook
    from switchd.adapters.caps.local import LocalCaps
    from switchd.config import load_config
    from switchd.routing.deck_loader import load_deck
    from switchd.calls.policing import CapsGate
    from switchd.routing.router import Router
    provision(migrated_pg_url, EXAMPLE)
    with psycopg.connect(migrated_pg_url) as conn:
        conn.execute("INSERT INTO carriers (name) VALUES ('bad,carrier')")
        conn.execute("INSERT INTO gateways (carrier_id, name) SELECT id, 'bad-gw' FROM carriers "
                     "WHERE name = 'bad,carrier'")
        conn.commit()
    for carrier, rate in (("alpha", "0.02"), ("bad,carrier", "0.001")):
        deck = tmp_path / f"{rate}.csv"
        deck.write_text(f"prefix,rate_per_min\n44,{rate}\n")
        import_rates(migrated_pg_url, deck, carrier)
    with psycopg.connect(migrated_pg_url) as conn:
        world = load_world(conn)
        decks = {name: load_deck(conn, name) for name in ("alpha", "bad,carrier")}
    router = Router(world=lambda: world, decks=lambda: decks, health=HealthBook(),
                    caps=CapsGate(LocalCaps(), load_config(environ={})), spend=SpendBook({}),
                    settings={"tenant_from": "accountcode", "tenant_variable": "switchd_tenant",
                              "max_routes": 5, "health_cooldown": 60, "emergency_gateway": ""})
    decision = router.route({"Unique-ID": "u1", "Caller-Destination-Number": "02079460123",
                             "variable_accountcode": "acme", "Caller-Context": "default"})
    assert decision.result == "routed", decision.reason
    assert "sofia/gateway/alpha-lon/+442079460123" in decision.xml
    assert "bad" not in decision.xml


def test_delete_a_gateway_and_bad_names_under_delete(migrated_pg_url, tmp_path):
    provision(migrated_pg_url, EXAMPLE)
    errors = _errors(migrated_pg_url, _write(tmp_path, '[delete]\ndids = ["123"]\n'
                                                       'gateways = "alpha-ams"\n'))
    assert any(e.endswith("delete.dids[0]: '123' is not an E.164 number with '+' "
                          "(e.g. '+442079460000')") for e in errors)
    assert any(e.endswith("delete.gateways: must be a list") for e in errors)
    summary = provision(migrated_pg_url, _write(tmp_path, '[delete]\ngateways = ["alpha-ams"]\n',
                                                "gw.toml"))
    assert summary.diff() == "- gateway alpha-ams ([delete])"
    with psycopg.connect(migrated_pg_url) as conn:
        assert [g.name for g in load_world(conn).carriers["alpha"].gateways] == ["alpha-lon"]
