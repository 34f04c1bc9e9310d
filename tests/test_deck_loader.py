"""switchd.routing.deck_loader against a real PostgreSQL: load, NOTIFY, atomic swap, future decks."""
from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import psycopg
import pytest

from switchd.routing.deck_loader import (DeckCache, DeckLoadError, DeckReloader, load_all_decks,
                                 load_deck)
from switchd.admin.rates_import import import_rates

HEADER = "prefix,rate_per_min,connect_fee,initial_increment,subsequent_increment," \
         "effective_from,effective_to\n"
NOW = datetime.now(timezone.utc)       # for decks imported "now" by the tests below
# A pinned instant inside the windowed row's validity: the lookup is pure, so the test
# must not depend on the day it runs (before 2026-01-01 `NOW` fell outside the window).
AT = datetime(2026, 6, 1, tzinfo=timezone.utc)


@pytest.fixture
def db(migrated_pg_url):
    with psycopg.connect(migrated_pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO carriers (name) VALUES ('acme'), ('beta'), ('empty')")
    return migrated_pg_url


def deck_csv(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text(HEADER + "".join(r + "\n" for r in rows))
    return path


def test_load_deck_matches_rows_across_chunks(db, tmp_path):
    rows = [f"{p},0.{i % 7 + 1}" for i, p in enumerate(
        ["1", "1212", "2", "20", "33", "4", "44", "4420", "5", "6", "7", "8", "9", "99"])]
    rows.append("44,0.05,0,1,1,2026-01-01T00:00:00Z,2999-01-01T00:00:00Z")   # windowed
    import_rates(db, deck_csv(tmp_path, "a.csv", rows), "acme")
    with psycopg.connect(db) as conn:
        deck = load_deck(conn, "acme")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert len(deck) == 14 and deck.rows == 15
    assert deck.lookup("442079", AT).prefix == "4420"
    promo = deck.lookup("4412", AT)
    assert (promo.rate_per_min, promo.initial_increment) == (Decimal("0.05"), 1)
    assert deck.lookup("4412", datetime(2025, 1, 1, tzinfo=timezone.utc)).rate_per_min \
        == Decimal("0.7")
    assert deck.lookup("9912", AT).rate_per_min == Decimal("0.7")
    assert deck.lookup("0", AT) is None


def test_live_deck_is_greatest_start_not_after_at(db, tmp_path):
    start = NOW + timedelta(days=1)
    import_rates(db, deck_csv(tmp_path, "a.csv", ["44,0.1"]), "acme")
    import_rates(db, deck_csv(tmp_path, "b.csv", ["44,0.2"]), "acme", effective_from=start)
    with psycopg.connect(db) as conn:
        assert load_deck(conn, "acme").lookup("44", NOW).rate_per_min == Decimal("0.1")
        later = load_deck(conn, "acme", at=start)
        assert later.lookup("44", start).rate_per_min == Decimal("0.2")
        decks = load_all_decks(conn)
        assert sorted(decks) == ["acme", "beta", "empty"] and len(decks["empty"]) == 0
        with pytest.raises(DeckLoadError):
            load_deck(conn, "nope")


def test_notify_reload_swaps_cache_while_lookups_keep_working(db, tmp_path):
    import_rates(db, deck_csv(tmp_path, "v1.csv", ["44,0.1", "1,0.01"]), "acme")
    import_rates(db, deck_csv(tmp_path, "b.csv", ["44,0.3"]), "beta")
    with psycopg.connect(db) as conn:
        cache = DeckCache(load_all_decks(conn))
    reloader = DeckReloader(db, cache)
    before = cache.decks                       # a decision in flight holds this mapping
    stop = threading.Event()
    errors = []

    def route():                               # lookups keep answering during the swap
        while not stop.is_set():
            rate = cache.decks["acme"].lookup("4420", NOW)
            if rate is None or rate.rate_per_min not in (Decimal("0.1"), Decimal("0.2")):
                errors.append(rate)

    router = threading.Thread(target=route)
    router.start()
    try:
        with psycopg.connect(db, autocommit=True) as listen:
            listen.execute("LISTEN switchd_rates")
            import_rates(db, deck_csv(tmp_path, "v2.csv", ["44,0.2", "1,0.02"]), "acme")
            assert reloader.poll_once(listen) == {"acme"}
    finally:
        stop.set()
        router.join()
        reloader._close_query_conn()
    assert errors == []
    assert cache.decks["acme"].lookup("4420", NOW).rate_per_min == Decimal("0.2")
    assert before["acme"].lookup("4420", NOW).rate_per_min == Decimal("0.1")
    assert cache.decks["beta"] is before["beta"]          # untouched carriers are shared
    with pytest.raises(TypeError):
        cache.decks["acme"] = None                        # read-only to routing


def test_reloader_run_loop_listens_and_stops(db, tmp_path):
    import_rates(db, deck_csv(tmp_path, "v1.csv", ["44,0.1"]), "acme")
    cache = DeckCache()
    reloader = DeckReloader(db, cache, poll_timeout=0.1)
    runner = threading.Thread(target=reloader.run)
    runner.start()
    try:
        _wait(lambda: "acme" in cache.decks)
        assert cache.decks["acme"].lookup("44", NOW).rate_per_min == Decimal("0.1")
        import_rates(db, deck_csv(tmp_path, "v2.csv", ["44,0.2"]), "acme")
        _wait(lambda: cache.decks["acme"].lookup("44", NOW).rate_per_min == Decimal("0.2"))
    finally:
        reloader.stop()
        runner.join(timeout=10)
    assert not runner.is_alive()


def test_future_deck_is_preloaded_and_swapped_at_its_start(db, tmp_path):
    start = NOW + timedelta(hours=1)
    clock = [NOW]
    import_rates(db, deck_csv(tmp_path, "a.csv", ["44,0.1"]), "acme")
    import_rates(db, deck_csv(tmp_path, "b.csv", ["44,0.2"]), "acme", effective_from=start)
    cache = DeckCache()
    reloader = DeckReloader(db, cache, clock=lambda: clock[0])
    try:
        reloader.reload("acme")
        assert cache.staged()["acme"][0] == start and cache.staged()["acme"][1] is not None
        assert reloader.promote_due() == []
        clock[0] = start
        assert reloader.promote_due() == ["acme"]
        assert cache.decks["acme"].lookup("44", start).rate_per_min == Decimal("0.2")
        assert "acme" not in cache.staged()
    finally:
        reloader._close_query_conn()


def test_failed_reload_keeps_the_old_deck(db, tmp_path):
    import_rates(db, deck_csv(tmp_path, "a.csv", ["44,0.1"]), "acme")
    with psycopg.connect(db) as conn:
        cache = DeckCache(load_all_decks(conn))
    reloader = DeckReloader(db, cache)
    try:
        reloader.handle_notify("nope")                     # unknown carrier: logged
        assert reloader.failures == 1 and "acme" in cache.decks
    finally:
        reloader._close_query_conn()


def _wait(predicate, timeout=10.0):
    deadline = datetime.now() + timedelta(seconds=timeout)
    while not predicate():
        assert datetime.now() < deadline, "timed out"
        threading.Event().wait(0.02)
