"""Rate decks from PostgreSQL into memory, and their hot reload on NOTIFY switchd_rates.

Loading a million-prefix deck must take about a second, not a minute, and must not pause
routing in a gevent daemon. Per-row Python is the cost to avoid, so PostgreSQL does the
per-row work: it encodes each prefix into the deck's integer key (see
dialplan.ratedeck.prefix_key) and aggregates a chunk of rows into one bytea of big-endian
int8 keys plus one text of tariff columns. Python turns those into arrays with C-speed
calls. Rows are read in chunks by leading digit, which bounds the transient memory and gives
the cooperative yield a place to happen. (A plain COPY TO STDOUT delivers one message per
row; iterating a million of them alone took 1.3 s.)

Routing reads `DeckCache.decks`, a dict replaced as a whole on every change (never mutated),
so a reader holding the old dict keeps a consistent view while a new deck is built.
"""
from __future__ import annotations

import logging
import queue
import random
import sys
import threading
from array import array
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from types import MappingProxyType
from typing import Callable, Iterable, Mapping

import psycopg

from dialplan.ratedeck import RateDeck, RateDeckBuilder
from switchd.adapters.db import green
from switchd.admin.rates_import import NOTIFY_CHANNEL

log = logging.getLogger(__name__)

# The key formula of dialplan.ratedeck.prefix_key, in SQL.
_KEY_SQL = "rpad(prefix, 16, '0')::bigint * 32 + length(prefix)"
_TARIFF_SQL = ("rate_per_min || E'\\t' || connect_fee || E'\\t' || initial_increment"
               " || E'\\t' || subsequent_increment")
_OPEN = "effective_from IS NULL AND effective_to IS NULL"


class DeckLoadError(RuntimeError):
    pass


@dataclass(frozen=True)
class DeckInfo:
    """Which stored deck is live for a carrier at a time, and when the next one starts."""
    carrier: str
    deck_id: int | None
    effective_from: datetime | None
    next_deck_id: int | None = None
    next_from: datetime | None = None


def cooperative_yield() -> Callable[[int], None] | None:
    """gevent.sleep(0) when this process runs under gevent's monkey patching, else None.
    Decided at call time: dialplan must not import gevent, and a plain script must not
    start a gevent hub just to load a deck."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("socket"):
        return None
    import gevent
    return lambda _done: gevent.sleep(0)


def deck_info(conn: psycopg.Connection, carrier_name: str, at: datetime | None = None) -> DeckInfo:
    at = at or datetime.now(timezone.utc)
    found = conn.execute("SELECT id FROM carriers WHERE name = %s", (carrier_name,)).fetchone()
    if found is None:
        raise DeckLoadError(f"unknown carrier {carrier_name!r}")
    # '-infinity' (the base deck's start) would not fit a Python datetime: report None.
    live = conn.execute(
        "SELECT id, NULLIF(effective_from, '-infinity') FROM rate_decks WHERE carrier_id = %s "
        "AND effective_from <= %s ORDER BY effective_from DESC LIMIT 1",
        (found[0], at)).fetchone()
    nxt = conn.execute(
        "SELECT id, effective_from FROM rate_decks WHERE carrier_id = %s "
        "AND effective_from > %s AND effective_from < 'infinity' "
        "ORDER BY effective_from LIMIT 1", (found[0], at)).fetchone()
    return DeckInfo(carrier_name, live[0] if live else None, live[1] if live else None,
                    nxt[0] if nxt else None, nxt[1] if nxt else None)


@contextmanager
def _snapshot(conn: psycopg.Connection):
    # One REPEATABLE READ snapshot for the whole load, so an import committing between
    # two chunk queries cannot mix two versions of a deck. Inside a caller's transaction
    # the caller's snapshot rules apply.
    idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with conn.transaction():
        if idle:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        yield


def load_deck(conn: psycopg.Connection, carrier_name: str, at: datetime | None = None, *,
              on_progress: Callable[[int], None] | None = None,
              with_descriptions: bool = False) -> RateDeck:
    """The carrier's deck live at `at` (default now): its deck with the greatest
    effective_from <= at. A carrier with no live deck gets an empty deck (routes nowhere).
    `on_progress` defaults to cooperative_yield()."""
    with _snapshot(conn):
        info = deck_info(conn, carrier_name, at)
        return load_deck_id(conn, info.deck_id, carrier_name, on_progress=on_progress,
                            with_descriptions=with_descriptions)


def load_deck_id(conn: psycopg.Connection, deck_id: int | None, carrier_name: str, *,
                 on_progress: Callable[[int], None] | None = None,
                 with_descriptions: bool = False) -> RateDeck:
    """One stored deck by rate_decks.id (None: an empty deck)."""
    tick = on_progress if on_progress is not None else cooperative_yield()
    builder = RateDeckBuilder(carrier=carrier_name, version=deck_id, on_progress=tick)
    if deck_id is None:
        return builder.build()
    tariff_sql = _TARIFF_SQL + (" || E'\\t' || coalesce(replace(description, E'\\n', ' '), '')"
                                if with_descriptions else "")
    tariff_ids: dict[bytes, int] = {}
    with _snapshot(conn):
        # The next chunk's query runs while this one is turned into arrays: the server's
        # half of the work (~1 s per million rows) overlaps the Python half.
        for raw_keys, raw_tariffs in _prefetched(_chunk_results(conn, deck_id, tariff_sql)):
            keys = array("Q")
            keys.frombytes(raw_keys)
            if sys.byteorder == "little":
                keys.byteswap()                      # int8send is big-endian
            lines = bytes(raw_tariffs).split(b"\n")
            for text in set(lines).difference(tariff_ids):
                tariff_ids[text] = _intern(builder, text)
            builder.add_encoded(keys, array("i", map(tariff_ids.__getitem__, lines)))
            del raw_keys, raw_tariffs, lines, keys
        cur = conn.cursor()
        # Rows with effective windows are rare; the ordinary path handles them.
        cur.execute("SELECT prefix, rate_per_min, connect_fee, initial_increment, "
                    "subsequent_increment, effective_from, effective_to, description "
                    f"FROM rates WHERE deck_id = %s AND NOT ({_OPEN})", (deck_id,))
        for prefix, rate, fee, initial, subsequent, start, end, desc in cur:
            builder.add(prefix, rate, fee, initial, subsequent, start, end,
                        desc if with_descriptions else None)
        cur.close()
    return builder.build()


def _chunk_results(conn: psycopg.Connection, deck_id: int, tariff_sql: str):
    with conn.cursor(binary=True) as cur:
        for low, high in _chunks():
            cur.execute(
                f"SELECT string_agg(int8send({_KEY_SQL}), ''::bytea), "
                f"string_agg(convert_to({tariff_sql}, 'UTF8'), '\\x0a'::bytea) "
                f"FROM (SELECT * FROM rates WHERE deck_id = %s AND {_OPEN} "
                f"AND prefix >= %s {'AND prefix < %s' if high else ''} "
                f"ORDER BY prefix) s",
                (deck_id, low, high) if high else (deck_id, low))
            row = cur.fetchone()
            if row[0] is not None:
                yield row


_DONE = object()


def _prefetched(items: Iterable, depth: int = 2) -> Iterable:
    """Iterate `items` in a helper thread (a greenlet under gevent), `depth` ahead."""
    box: queue.Queue = queue.Queue(depth)

    def produce():
        try:
            for item in items:
                box.put(item)
            box.put(_DONE)
        except BaseException as exc:          # handed to the consumer, re-raised there
            box.put(exc)

    worker = threading.Thread(target=produce, name="deck-prefetch", daemon=True)
    worker.start()
    try:
        while (item := box.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        # The connection is shared: let the producer finish before anyone reuses it.
        while worker.is_alive():
            try:
                box.get(timeout=0.1)
            except queue.Empty:
                pass
        worker.join()


def _chunks() -> Iterable[tuple[str, str | None]]:
    # Ranges by leading digit; the upper bound is exclusive, text order of digit strings.
    for d in range(10):
        yield str(d), (str(d + 1) if d < 9 else None)


def _intern(builder: RateDeckBuilder, text: bytes) -> int:
    parts = text.decode("utf-8").split("\t", 4)
    rate, fee, initial, subsequent = parts[:4]
    desc = parts[4] if len(parts) > 4 and parts[4] else None
    return builder.intern_tariff(Decimal(rate), Decimal(fee), int(initial), int(subsequent), desc)


def load_all_decks(conn: psycopg.Connection, at: datetime | None = None, *,
                   on_progress: Callable[[int], None] | None = None) -> dict[str, RateDeck]:
    """Every carrier's live deck (carriers without one get an empty deck)."""
    names = [r[0] for r in conn.execute("SELECT name FROM carriers ORDER BY name")]
    return {name: load_deck(conn, name, at, on_progress=on_progress) for name in names}


class DeckCache:
    """The decks routing uses. `decks` is a read-only mapping replaced as a whole on every
    change: a routing decision that took it keeps one consistent set of decks, and readers
    never lock. Writers (the reloader, a SIGHUP reload) serialise on a lock."""

    def __init__(self, decks: dict[str, RateDeck] | None = None):
        self._lock = threading.Lock()
        self._decks: Mapping[str, RateDeck] = MappingProxyType(dict(decks or {}))
        # carrier -> (start, deck or None): the next deck, swapped in at its start.
        self._staged: dict[str, tuple[datetime, RateDeck | None]] = {}

    @property
    def decks(self) -> Mapping[str, RateDeck]:
        return self._decks

    def replace_all(self, decks: dict[str, RateDeck]) -> None:
        with self._lock:
            self._decks = MappingProxyType(dict(decks))

    def swap(self, carrier: str, deck: RateDeck | None) -> None:
        """Install (or, with None, drop) one carrier's deck."""
        with self._lock:
            new = dict(self._decks)
            if deck is None:
                new.pop(carrier, None)
            else:
                new[carrier] = deck
            self._decks = MappingProxyType(new)

    def stage(self, carrier: str, start: datetime | None, deck: RateDeck | None = None) -> None:
        """Remember the carrier's next deck (`deck` None: not preloaded, reload when due)."""
        with self._lock:
            if start is None:
                self._staged.pop(carrier, None)
            else:
                self._staged[carrier] = (start, deck)

    def staged(self) -> dict[str, tuple[datetime, RateDeck | None]]:
        return dict(self._staged)

    def promote_due(self, now: datetime) -> tuple[list[str], list[str]]:
        """Swap in staged decks whose start has come. Returns (promoted, due but not
        preloaded — the caller must load them)."""
        promoted, to_load = [], []
        for carrier, (start, deck) in self.staged().items():
            if start > now:
                continue
            with self._lock:
                if self._staged.get(carrier, (None,))[0] != start:
                    continue                      # restaged meanwhile
                del self._staged[carrier]
            if deck is None:
                to_load.append(carrier)
            else:
                self.swap(carrier, deck)
                promoted.append(carrier)
        return promoted, to_load


class DeckReloader:
    """Keeps a DeckCache current: LISTEN switchd_rates, reload the named carrier's deck on
    NOTIFY (payload = carrier name; empty or '*' = all), swap in future decks at their
    start. `run()` is meant for its own (supervised) greenlet: the LISTEN connection waits
    with a timeout so the loop stays responsive to stop() and to deck start times, and deck
    builds yield through `on_progress`. It reconnects forever with jittered backoff and
    reloads everything after a reconnect (notifications sent meanwhile are lost)."""

    def __init__(self, url: str, cache: DeckCache, *, poll_timeout: float = 1.0,
                 preload_future: bool = True,
                 on_progress: Callable[[int], None] | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 max_backoff: float = 30.0):
        self.url = url
        self.cache = cache
        self.poll_timeout = poll_timeout
        self.preload_future = preload_future
        self.on_progress = on_progress
        self.clock = clock
        self.max_backoff = max_backoff
        self._stop = threading.Event()
        self.loaded = threading.Event()   # set once the first full load after LISTEN is done
        self._conn: psycopg.Connection | None = None
        self.imported_at: dict[str, datetime | None] = {}   # carrier -> its live deck's import
        self.reloads = 0                  # successful carrier reloads (tests, diagnostics)
        self.failures = 0

    # --- what a NOTIFY does ------------------------------------------------------------
    def handle_notify(self, payload: str) -> None:
        """Reload what the payload names; a failed reload keeps the old deck."""
        try:
            if payload in ("", "*"):
                self.reload_all()
            else:
                self.reload(payload)
        except (psycopg.Error, DeckLoadError, ValueError) as exc:
            self.failures += 1
            log.error("rate deck reload for %r failed, keeping the current deck: %s",
                      payload or "*", exc)

    def reload(self, carrier: str) -> RateDeck | None:
        conn = self._query_conn()
        try:
            with _snapshot(conn):
                info = deck_info(conn, carrier, self.clock())
                deck = load_deck_id(conn, info.deck_id, carrier, on_progress=self.on_progress)
                imported = None if info.deck_id is None else conn.execute(
                    "SELECT imported_at FROM rate_decks WHERE id = %s", (info.deck_id,)).fetchone()
                nxt = None
                if info.next_deck_id is not None and self.preload_future:
                    nxt = load_deck_id(conn, info.next_deck_id, carrier,
                                       on_progress=self.on_progress)
        except DeckLoadError:
            self.cache.swap(carrier, None)        # the carrier was deleted
            self.cache.stage(carrier, None)
            self.imported_at.pop(carrier, None)
            raise
        self.cache.swap(carrier, deck)
        self.imported_at[carrier] = imported[0] if imported else None
        self.cache.stage(carrier, info.next_from, nxt)
        self.reloads += 1
        log.info("rate deck of %s reloaded: deck %s, %d prefixes%s", carrier, info.deck_id,
                 len(deck), f"; next deck starts {info.next_from}" if info.next_from else "")
        return deck

    def reload_all(self) -> None:
        conn = self._query_conn()
        names = [r[0] for r in conn.execute("SELECT name FROM carriers ORDER BY name")]
        conn.commit()
        for gone in set(self.cache.decks) - set(names):
            self.cache.swap(gone, None)
            self.cache.stage(gone, None)
            self.imported_at.pop(gone, None)
        for name in names:
            self.reload(name)

    def promote_due(self) -> list[str]:
        promoted, to_load = self.cache.promote_due(self.clock())
        for carrier in promoted:
            log.info("rate deck of %s: next deck started", carrier)
        # After a swap, load (or restage) what comes next.
        for carrier in promoted + to_load:
            self.handle_notify(carrier)
        return promoted + to_load

    # --- the loop ----------------------------------------------------------------------
    def run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                with green.connect(self.url, autocommit=True) as listen:
                    listen.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.reload_all()
                    self.loaded.set()
                    backoff = 0.5
                    while not self._stop.is_set():
                        self.poll_once(listen)
            except psycopg.OperationalError as exc:
                self._close_query_conn()
                log.warning("rate deck listener lost the database (%s); retrying in %.1fs",
                            exc, backoff)
                self._stop.wait(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, self.max_backoff)
        self._close_query_conn()

    def poll_once(self, listen: psycopg.Connection) -> set[str]:
        """Wait up to poll_timeout for notifications; reload what they name."""
        pending: set[str] = set()
        for note in listen.notifies(timeout=self.poll_timeout, stop_after=1):
            pending.add(note.payload)
        if pending:
            # Coalesce a burst (several imports in a row) into one reload per carrier.
            for note in listen.notifies(timeout=0.05):
                pending.add(note.payload)
        for payload in sorted(pending):
            self.handle_notify(payload)
        self.promote_due()
        return pending

    def stop(self) -> None:
        self._stop.set()

    def _query_conn(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = green.connect(self.url)
        return self._conn

    def _close_query_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
