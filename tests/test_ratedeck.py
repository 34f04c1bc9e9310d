"""dialplan.ratedeck: longest-prefix match at a time, against a naive reference."""
from __future__ import annotations

import ast
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from dialplan.ratedeck import Rate, RateDeck, RateDeckBuilder, prefix_key

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
D = Decimal


def deck_of(*rows) -> RateDeck:
    b = RateDeckBuilder()
    for row in rows:
        b.add(*row)
    return b.build()


def test_longest_prefix_wins_and_carries_its_tariff():
    deck = deck_of(("4", D("0.5"), D("0"), 60, 60),
                   ("44", D("0.02"), D("0.01"), 60, 6),
                   ("4420", D("0.01"), D("0"), 1, 1))
    rate = deck.lookup("442079460000", T0)
    assert rate == Rate("4420", D("0.01"), D("0"), 1, 1, None, None)
    assert deck.lookup("441612000000", T0).prefix == "44"
    assert deck.lookup("4930", T0).rate_per_min == D("0.5")
    assert deck.lookup("3312345", T0) is None
    assert len(deck) == 3


def test_sibling_before_the_number_is_skipped():
    # The greatest key <= the number is 44199 (not a prefix): the walk goes up to 44.
    deck = deck_of(("44", D("1"), D("0"), 60, 60), ("44199", D("2"), D("0"), 60, 60),
                   ("442", D("3"), D("0"), 60, 60))
    assert deck.lookup("44200", T0).prefix == "442"
    assert deck.lookup("4419", T0).prefix == "44"
    assert deck.lookup("4", T0) is None


def test_trailing_zero_prefixes_are_distinct():
    deck = deck_of(("1", D("1"), D("0"), 60, 60), ("10", D("2"), D("0"), 60, 60),
                   ("100", D("3"), D("0"), 60, 60))
    assert deck.lookup("1", T0).prefix == "1"
    assert deck.lookup("10", T0).prefix == "10"
    assert deck.lookup("1000", T0).prefix == "100"
    assert deck.lookup("1010", T0).prefix == "10"


def test_open_end_means_open_and_windows_are_half_open():
    far = datetime(9000, 1, 1, tzinfo=timezone.utc)
    deck = deck_of(("44", D("0.02"), D("0"), 60, 60, T0, None),
                   ("4420", D("0.01"), D("0"), 60, 60, T0, T0 + timedelta(days=1)))
    assert deck.lookup("442079", far).prefix == "44"            # never expires
    assert deck.lookup("442079", T0).prefix == "4420"           # start is inclusive
    assert deck.lookup("442079", T0 + timedelta(days=1)).prefix == "44"   # end exclusive
    assert deck.lookup("442079", T0 - timedelta(seconds=1)) is None
    assert deck.lookup("442079", T0).effective_to == T0 + timedelta(days=1)


def test_dated_promotion_overrides_open_base_rate_while_it_runs():
    deck = deck_of(("44", D("0.02"), D("0"), 60, 60),
                   ("44", D("0.01"), D("0"), 60, 60, T0, T0 + timedelta(days=7)))
    assert deck.lookup("4420", T0 + timedelta(days=1)).rate_per_min == D("0.01")
    assert deck.lookup("4420", T0 + timedelta(days=8)).rate_per_min == D("0.02")
    assert len(deck) == 1 and deck.rows == 2


def test_naive_at_is_utc():
    deck = deck_of(("44", D("1"), D("0"), 60, 60, T0, None))
    assert deck.lookup("44", datetime(2026, 1, 1)).prefix == "44"


def test_bad_input_is_refused():
    b = RateDeckBuilder()
    with pytest.raises(ValueError):
        b.add("+44", D("1"))
    with pytest.raises(ValueError):
        b.add("12345678901234567", D("1"))
    with pytest.raises(TypeError):
        b.add("44", 0.1)                         # floats are not money
    with pytest.raises(ValueError):
        b.add("44", D("-1"))
    with pytest.raises(ValueError):
        b.add("44", D("1"), D("0"), 60, 60, T0, T0)
    deck = deck_of(("44", D("1"), D("0"), 60, 60))
    for bad in ("", "44a", "+44", "４４"):
        with pytest.raises(ValueError):
            deck.lookup(bad, T0)


def test_duplicates_are_refused():
    with pytest.raises(ValueError, match="two open-ended"):
        deck_of(("45", D("1"), D("0"), 60, 60), ("44", D("1"), D("0"), 60, 60),
                ("44", D("2"), D("0"), 60, 60))
    with pytest.raises(ValueError, match="same effective_from"):
        deck_of(("44", D("1"), D("0"), 60, 60, T0, None),
                ("44", D("2"), D("0"), 60, 60, T0, T0 + timedelta(days=1)))


def test_tariffs_are_shared_and_unsorted_input_is_sorted():
    b = RateDeckBuilder()
    for p in ("9", "1", "55", "5", "19"):
        b.add(p, D("0.1"))
    deck = b.build()
    assert deck.tariff_count == 1
    assert list(deck.prefixes()) == ["1", "19", "5", "55", "9"]
    assert deck.lookup("1999", T0).prefix == "19"


def test_key_order_is_string_order():
    ps = ["4", "40", "400", "4000000000000000", "41", "5", "0", "09"]
    assert sorted(ps, key=prefix_key) == sorted(ps)


def test_big_deck_uses_head_index_correctly():
    b = RateDeckBuilder()
    for i in range(70_000):                       # over the 5-digit head index threshold
        b.add(str(i * 7 + 100000), D(i % 50) / 100)
    b.add("1", D("9"))
    deck = b.build()
    assert deck.lookup("10000045", T0).prefix == "100000"
    assert deck.lookup("1000144", T0).prefix == "100014"
    assert deck.lookup("1999", T0).prefix == "1"
    assert deck.lookup(str(7 * 69_999 + 100000) + "1", T0).prefix == str(7 * 69_999 + 100000)


def test_dialplan_ratedeck_imports_no_runtime():
    tree = ast.parse(Path(__file__).parents[1].joinpath("dialplan/ratedeck.py").read_text())
    names = {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    names |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
              for a in n.names}
    assert not names & {"switchd", "gevent", "psycopg", "redis"}


# --- property tests against a naive reference ---------------------------------------------

def reference(rows, number, at):
    """Longest prefix first; among its rows covering `at`, the latest start."""
    for length in range(len(number), 0, -1):
        p = number[:length]
        live = [r for r in rows if r[0] == p
                and (r[2] is None or r[2] <= at) and (r[3] is None or at < r[3])]
        if live:
            best = max(live, key=lambda r: (r[2] is not None, r[2] or T0))
            return p, best[1], best[2], best[3]
    return None


prefixes = st.text("0129", min_size=1, max_size=6)
hours = st.integers(0, 48)


@st.composite
def decks(draw):
    rows, seen = [], set()
    for p in draw(st.lists(prefixes, max_size=40)):
        windowed = draw(st.booleans()) and draw(st.integers(0, 3)) == 0
        start = end = None
        if windowed:
            start = None if draw(st.booleans()) else T0 + timedelta(hours=draw(hours))
            end = None if draw(st.booleans()) else (start or T0) + timedelta(
                hours=draw(st.integers(1, 24)))
        if (p, start) in seen or (start is None and end is None and (p, "open") in seen):
            continue
        seen.add((p, start))
        if start is None and end is None:
            seen.add((p, "open"))
        rows.append((p, D(draw(st.integers(0, 999))) / 1000, start, end))
    return rows


@settings(max_examples=300, deadline=None)
@given(decks(), st.lists(st.text("0129", min_size=1, max_size=9), min_size=1, max_size=20),
       st.integers(-2, 80))
def test_lookup_matches_reference(rows, numbers, hour):
    b = RateDeckBuilder()
    for p, rate, start, end in rows:
        b.add(p, rate, D(0), 60, 60, start, end)
    deck = b.build()
    at = T0 + timedelta(hours=hour)
    for number in numbers:
        got = deck.lookup(number, at)
        want = reference(rows, number, at)
        if want is None:
            assert got is None, number
        else:
            assert got is not None, number
            assert (got.prefix, got.rate_per_min, got.effective_from, got.effective_to) == want
