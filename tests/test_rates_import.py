"""switchd.admin.rates_import against a real PostgreSQL: all or nothing, line-numbered errors."""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import psycopg
import pytest

from switchd.admin.rates_import import RatesImportError, import_rates
from switchd.routing.deck_loader import load_deck

HEADER = "prefix,rate_per_min,connect_fee,initial_increment,subsequent_increment," \
         "effective_from,effective_to,description\n"


@pytest.fixture
def db(migrated_pg_url):
    with psycopg.connect(migrated_pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO carriers (name, default_initial_increment, "
                     "default_subsequent_increment) VALUES ('acme', 30, 6), ('other', 60, 60)")
    return migrated_pg_url


def write(tmp_path, text, name="deck.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def rates(url, carrier="acme"):
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT r.prefix, r.rate_per_min, r.connect_fee, r.initial_increment, "
            "r.subsequent_increment, r.effective_from, r.effective_to, r.description "
            "FROM rates r JOIN rate_decks d ON d.id = r.deck_id JOIN carriers c "
            "ON c.id = d.carrier_id WHERE c.name = %s ORDER BY r.prefix, r.effective_from",
            (carrier,)).fetchall()


def test_import_with_defaults_windows_and_unknown_columns(db, tmp_path):
    path = write(tmp_path, "\ufeffPrefix,rate_per_min,notes,connect_fee,description,"
                 "effective_from,effective_to,initial_increment\n"
                 "+44,0.0200,x,,United Kingdom,,,\n"
                 "4420,0.010000,y,0.05,\"London, \tcentral\",2026-01-01T00:00:00Z,"
                 "2026-02-01,1\n"
                 "\n"
                 "1,0.005,z,0,,,,60\n")
    seen = []
    summary = import_rates(db, path, "acme", progress=seen.append, progress_every=2)
    assert (summary.rows, summary.prefixes) == (3, 3)
    assert (summary.min_rate, summary.max_rate) == (Decimal("0.005"), Decimal("0.0200"))
    assert seen == [2, 3]
    got = rates(db)
    assert got[0][:5] == ("1", Decimal("0.005"), Decimal(0), 60, 6)
    assert got[1] == ("44", Decimal("0.02"), Decimal(0), 30, 6, None, None, "United Kingdom")
    jan, feb = (datetime(2026, m, 1, tzinfo=timezone.utc) for m in (1, 2))
    assert got[2] == ("4420", Decimal("0.01"), Decimal("0.05"), 1, 6, jan, feb,
                      "London, \tcentral")


@pytest.mark.parametrize("row, reason", [
    ("44a,0.1", "prefix '44a' is not 1..16 digits"),
    ("12345678901234567,0.1", "not 1..16 digits"),
    (",0.1", "prefix '' is not"),
    ("44,-0.1", "rate_per_min -0.1 is negative"),
    ("44,abc", "rate_per_min 'abc' is not a number"),
    ("44,NaN", "is not a number"),
    ("44,", "rate_per_min is empty"),
    ("44,0.1234567", "more than 6 decimal places"),
    ("44,0.1,-1", "connect_fee -1 is negative"),
    ("44,0.1,0,0", "initial_increment '0' is not a whole number"),
    ("44,0.1,0,60,6.5", "subsequent_increment '6.5'"),
    ("44,0.1,0,60,6,yesterday", "effective_from 'yesterday' is not an ISO 8601"),
    ("44,0.1,0,60,6,2026-02-01,2026-01-01", "effective_to 2026-01-01 is not after"),
    ("44,0.1,0,60,6,2026-01-01,2026-01-01", "is not after"),
])
def test_bad_row_aborts_everything_with_line_and_reason(db, tmp_path, row, reason):
    import_rates(db, write(tmp_path, HEADER + "1,0.1\n", "v1.csv"), "acme")
    path = write(tmp_path, HEADER + "33,0.1\n" + row + "\n49,0.1\n")
    with pytest.raises(RatesImportError) as err:
        import_rates(db, path, "acme")
    assert f"{path}:3: " in str(err.value) and reason in str(err.value)
    assert [r[0] for r in rates(db)] == ["1"]         # the old deck is untouched


def test_duplicate_prefix_names_both_lines(db, tmp_path):
    path = write(tmp_path, HEADER + "44,0.1\n33,0.2\n+44,0.3\n")
    with pytest.raises(RatesImportError, match=r"deck.csv:4: duplicate prefix 44 "
                                               r"\(first on line 2\)"):
        import_rates(db, path, "acme")
    assert rates(db) == []


def test_same_prefix_with_distinct_starts_is_fine(db, tmp_path):
    path = write(tmp_path, HEADER + "44,0.1\n44,0.05,,,,2026-01-01,2026-01-08\n")
    summary = import_rates(db, path, "acme")
    assert (summary.rows, summary.prefixes) == (2, 1)


def test_header_and_carrier_errors(db, tmp_path):
    with pytest.raises(RatesImportError, match="lacks required column.*rate_per_min"):
        import_rates(db, write(tmp_path, "prefix,rate\n44,0.1\n"), "acme")
    with pytest.raises(RatesImportError, match="empty file"):
        import_rates(db, write(tmp_path, ""), "acme")
    with pytest.raises(RatesImportError, match="no rate rows"):
        import_rates(db, write(tmp_path, HEADER), "acme")
    with pytest.raises(RatesImportError, match=r"unknown carrier 'nope' \(known: acme, other\)"):
        import_rates(db, write(tmp_path, HEADER + "44,1\n"), "nope")
    with pytest.raises(RatesImportError, match="cannot read"):
        import_rates(db, tmp_path / "missing.csv", "acme")


def test_reimport_replaces_same_start_and_keeps_other_decks(db, tmp_path):
    future = datetime(2030, 1, 1, tzinfo=timezone.utc)
    first = import_rates(db, write(tmp_path, HEADER + "44,0.1\n"), "acme")
    import_rates(db, write(tmp_path, HEADER + "44,0.3\n"), "acme", effective_from=future)
    again = import_rates(db, write(tmp_path, HEADER + "44,0.2\n45,0.2\n"), "acme")
    import_rates(db, write(tmp_path, HEADER + "1,0.2\n"), "other")
    with psycopg.connect(db) as conn:
        decks = conn.execute("SELECT d.id, NULLIF(d.effective_from, '-infinity'), d.row_count "
                             "FROM rate_decks d JOIN carriers c ON c.id = d.carrier_id "
                             "WHERE c.name = 'acme' ORDER BY 2 NULLS FIRST").fetchall()
    assert again.deck_id != first.deck_id
    assert [(d[1], d[2]) for d in decks] == [(None, 2), (future, 1)]


def test_notify_is_sent_at_commit_only(db, tmp_path):
    with psycopg.connect(db, autocommit=True) as listener:
        listener.execute("LISTEN switchd_rates")
        with pytest.raises(RatesImportError):
            import_rates(db, write(tmp_path, HEADER + "44,x\n"), "acme")
        assert list(listener.notifies(timeout=0.3)) == []
        import_rates(db, write(tmp_path, HEADER + "44,1\n"), "acme")
        notes = list(listener.notifies(timeout=2, stop_after=1))
    assert [n.payload for n in notes] == ["acme"]


def test_readers_see_old_deck_until_commit(db, tmp_path):
    import_rates(db, write(tmp_path, HEADER + "44,0.1\n", "v1.csv"), "acme")
    with psycopg.connect(db) as conn:
        with conn.transaction():
            import_rates(conn, write(tmp_path, HEADER + "44,0.2\n", "v2.csv"), "acme")
            assert [r[1] for r in rates(db)] == [Decimal("0.1")]   # other session: old deck
        assert [r[1] for r in rates(db)] == [Decimal("0.2")]


def test_an_increment_rating_cannot_bill_is_refused_at_the_door(db, tmp_path):
    """Increments beyond an hour are refused with the line, not stored to fail the deck's
    load for every call of the carrier."""
    path = write(tmp_path, HEADER + "1,0.01,0,60,60\n44,0.01,0,7200,60\n")
    with pytest.raises(RatesImportError, match=r"deck\.csv:3: initial_increment '7200' is not "
                                               r"a whole number of seconds 1\.\.3600"):
        import_rates(db, path, "acme")
    assert rates(db) == []
    path = write(tmp_path, HEADER + "44,0.01,0,3600,3600\n")
    import_rates(db, path, "acme")
    with psycopg.connect(db) as conn:
        deck = load_deck(conn, "acme")
    assert deck.lookup("4420", datetime.now(timezone.utc)).initial_increment == 3600
