"""A carrier's rate deck in memory: longest-prefix match of a number at a point in time.

Sized for a million prefixes per carrier (DESIGN.md §8, §11). The deck holds no Python
object per prefix; three flat arrays describe it:

- `keys` (array 'Q'): each prefix encoded as `int(prefix right-padded with 0 to 16 digits)
  * 32 + len(prefix)`, sorted. Integer order is then the string order of the prefixes, with
  a prefix before its extensions ("4" < "40" < "400" < "41").
- `parents` (array 'i'): index of the longest deck prefix that is a proper prefix of this
  one, -1 if none.
- `slots` (array 'i'): index into the small table of distinct tariffs (rate, fee,
  increments), or -1 when the prefix has effective windows (kept in a side dict, rare).

Lookup = one bisect for the number's key + a short walk up `parents`. Why that is enough:
let p be the greatest key <= the number's key. Any deck prefix d of the number sorts at or
before p, and everything between d and the number in string order starts with d, so d is a
prefix of p: the deck prefixes of the number are exactly the ancestors of p (p included)
that are also prefixes of the number, and the walk meets them longest first.

16 bytes per prefix; the tariffs are shared (a real deck has a few thousand distinct ones).
"""
from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from itertools import islice
from operator import lt
from typing import Callable, Iterable

from .rating import billed_seconds

MAX_DIGITS = 16                       # longest prefix (and number) the deck keys encode
_LEN_BITS = 5                         # len(prefix) in 1..16 fits in 5 bits
_LEN_MASK = (1 << _LEN_BITS) - 1
# _DIV[L]: divides a 16-digit padded value down to its first L digits.
_DIV = tuple(10 ** (MAX_DIGITS - n) for n in range(MAX_DIGITS + 1))
_UTC = timezone.utc
# A first-level index on the leading digits narrows the bisect to a few entries: the deck's
# arrays are megabytes and each probe of a full-width bisect is a likely cache miss. Small
# decks get a small index (5 digits = 400 kB would dwarf them).
_BIG_DECK = 1 << 16


@dataclass(frozen=True)
class Tariff:
    """One distinct (rate, connect fee, increments, description) of a deck, interned once
    when the deck is built, with what routing and the dial string derive from it computed
    then rather than per call: `order` (the LCR cost keys: what a one-minute call costs,
    then the rate) and the texts of the channel variables of a carrier leg."""
    rate_per_min: Decimal
    connect_fee: Decimal
    initial_increment: int
    subsequent_increment: int
    description: str | None
    order: tuple[Decimal, Decimal]
    rate_text: str                # switchd_rate
    fee_text: str                 # switchd_connect_fee
    increments_text: str          # switchd_increments, "initial/subsequent"

    @classmethod
    def of(cls, rate_per_min: Decimal, connect_fee: Decimal, initial_increment: int,
           subsequent_increment: int, description: str | None = None) -> "Tariff":
        billed = billed_seconds(60, initial_increment, subsequent_increment)
        return cls(rate_per_min, connect_fee, initial_increment, subsequent_increment,
                   description, (connect_fee + rate_per_min * billed / 60, rate_per_min),
                   format(rate_per_min, "f"), format(connect_fee, "f"),
                   f"{initial_increment}/{subsequent_increment}")


@dataclass(frozen=True)
class Rate:
    """One deck row as routing and rating see it. Money is Decimal, per minute. `tariff`
    is the deck's interned Tariff of the row (None for a Rate built by hand)."""
    prefix: str
    rate_per_min: Decimal
    connect_fee: Decimal
    initial_increment: int
    subsequent_increment: int
    effective_from: datetime | None
    effective_to: datetime | None
    description: str | None = None
    tariff: Tariff | None = field(default=None, compare=False, repr=False)

    def effective_at(self, at: datetime) -> bool:
        return _covers(self.effective_from, self.effective_to, _aware(at))


def _rate(t: Tariff, prefix: str, start: datetime | None = None,
          end: datetime | None = None) -> Rate:
    return Rate(prefix, t.rate_per_min, t.connect_fee, t.initial_increment,
                t.subsequent_increment, start, end, t.description, t)


def _aware(at: datetime) -> datetime:
    # Naive datetimes are taken as UTC (the daemon's clock is UTC; PostgreSQL hands back
    # aware timestamps) so that comparing the two never raises.
    return at if at.tzinfo is not None else at.replace(tzinfo=_UTC)


def _covers(start: datetime | None, end: datetime | None, at: datetime) -> bool:
    # The window is half-open [start, end); None is open on that side — an open end never
    # expires (mod_lcr's sample schema wrote 2030-12-31 instead; DESIGN §11).
    return (start is None or start <= at) and (end is None or at < end)


def prefix_key(prefix: str | bytes) -> int:
    """The sort key of a prefix (1..16 ASCII digits, caller-validated)."""
    return int(prefix.ljust(MAX_DIGITS, b"0" if isinstance(prefix, bytes) else "0")) \
        * (_LEN_MASK + 1) + len(prefix)


def _check_prefix(prefix: str) -> None:
    if not (0 < len(prefix) <= MAX_DIGITS and prefix.isascii() and prefix.isdigit()):
        raise ValueError(f"prefix must be 1..{MAX_DIGITS} digits, got {prefix!r}")


def _parse_number(digits: str) -> tuple[str, int]:
    """(digits cut to 16, the number's padded value); ValueError unless ASCII digits."""
    if not (digits and digits.isascii() and digits.isdigit()):
        raise ValueError(f"number must be ASCII digits, got {digits!r}")
    # E.164 numbers have at most 15 digits; a longer string can only match on its first 16.
    digits = digits[:MAX_DIGITS]
    return digits, int(digits.ljust(MAX_DIGITS, "0"))


def lookup_all(decks: Iterable["RateDeck"], digits: str, at: datetime) -> list[Rate | None]:
    """deck.lookup(digits, at) for each deck, parsing the number once (the LCR hot path).

    The match is inlined over each deck's `_hot` tuple rather than calling deck._match:
    three method calls and their attribute loads were ~15% of an LCR lookup. A match is
    a Rate of the row's interned Tariff: nothing about the tariff is computed here."""
    if not (digits and digits.isascii() and digits.isdigit()):
        raise ValueError(f"number must be ASCII digits, got {digits!r}")
    digits = digits[:MAX_DIGITS]
    value = int(digits.ljust(MAX_DIGITS, "0"))
    probe = value * (_LEN_MASK + 1) + len(digits)
    div = _DIV
    out = []
    for keys, parents, slots, tariffs, heads, head_div, windows in [d._hot for d in decks]:
        head = value // head_div
        i = bisect_right(keys, probe, heads[head], heads[head + 1]) - 1
        rate = None
        while i >= 0:
            key = keys[i]
            length = key & _LEN_MASK
            # See RateDeck._match: a deck key up to i is a prefix of the number iff the
            # number lies in [padded, padded + 10**(16-len)).
            if value - (key >> _LEN_BITS) < div[length]:
                tariff = slots[i]
                if tariff >= 0:
                    rate = _rate(tariffs[tariff], digits[:length])
                    break
                rate = _window_rate(windows, tariffs, i, digits[:length], at)
                if rate is not None:
                    break
            i = parents[i]
        out.append(rate)
    return out


class RateDeck:
    """Immutable; build with RateDeckBuilder. Safe to share between greenlets."""

    __slots__ = ("carrier", "version", "_keys", "_parents", "_slots", "_templates",
                 "_windows", "_rows", "_heads", "_head_div", "_hot")

    def __init__(self, keys: array, parents: array, slots: array, templates: list[Tariff],
                 windows: dict[int, tuple], rows: int, carrier: str | None, version: object):
        self.carrier = carrier        # informational: which carrier's deck this is
        self.version = version        # informational: e.g. the rate_decks.id it came from
        self._keys = keys
        self._parents = parents
        self._slots = slots
        self._templates = templates
        self._windows = windows       # index -> ((from, to, tariff), ...), latest start first
        self._rows = rows
        # _heads[h] = first index whose key's leading `digits` digits are >= h.
        digits = 5 if len(keys) >= _BIG_DECK else 2
        self._head_div = 10 ** (MAX_DIGITS - digits)
        shift = self._head_div * (_LEN_MASK + 1)
        self._heads = array("i", [bisect_left(keys, h * shift) for h in range(10 ** digits + 1)])
        # Everything a match reads, in one tuple: one attribute load instead of seven.
        self._hot = (keys, parents, slots, templates, self._heads, self._head_div, windows)

    def __len__(self) -> int:
        """Number of distinct prefixes."""
        return len(self._keys)

    @property
    def rows(self) -> int:
        """Number of rows added (a prefix with several effective windows counts each)."""
        return self._rows

    @property
    def tariff_count(self) -> int:
        return len(self._templates)

    def nbytes(self) -> int:
        """Approximate memory held by the per-prefix arrays."""
        return sum(a.itemsize * len(a)
                   for a in (self._keys, self._parents, self._slots, self._heads))

    def lookup(self, digits: str, at: datetime) -> Rate | None:
        """The rate of the longest prefix of `digits` (E.164 digits, no '+') effective at `at`.

        A prefix whose windows all miss `at` is skipped for the next shorter prefix."""
        return lookup_all((self,), digits, at)[0]

    def _match(self, digits: str, value: int, at: datetime) -> Rate | None:
        keys, parents, slots, heads = self._keys, self._parents, self._slots, self._heads
        head = value // self._head_div
        i = bisect_right(keys, value * (_LEN_MASK + 1) + len(digits), heads[head],
                         heads[head + 1]) - 1
        while i >= 0:
            key = keys[i]
            length = key & _LEN_MASK
            # Every key up to i has a padded value <= the number's, so the prefix is a
            # prefix of the number iff the number lies in [padded, padded + 10**(16-len)).
            # Longer keys with those digits sort after the number's key and were excluded
            # by the bisect, so no separate length check is needed.
            if value - (key >> _LEN_BITS) < _DIV[length]:
                tariff = slots[i]
                if tariff >= 0:
                    return _rate(self._templates[tariff], digits[:length])
                rate = self._window_rate(i, digits[:length], at)
                if rate is not None:
                    return rate
            i = parents[i]
        return None

    def _window_rate(self, i: int, prefix: str, at: datetime) -> Rate | None:
        return _window_rate(self._windows, self._templates, i, prefix, at)

    def prefixes(self) -> Iterable[str]:
        """Every prefix in string order (for tests and diagnostics; slow on big decks)."""
        for key in self._keys:
            length = key & _LEN_MASK
            yield str((key >> _LEN_BITS) // _DIV[length]).zfill(length)


def _window_rate(windows: dict, tariffs: list, i: int, prefix: str,
                 at: datetime) -> Rate | None:
    at = _aware(at)
    # Latest start first: a dated promotion inside an open base rate wins while it runs.
    for start, end, tariff in windows[i]:
        if _covers(start, end, at):
            return _rate(tariffs[tariff], prefix, start, end)
    return None


class RateDeckBuilder:
    """Collects rows in any order; `build()` sorts them once. Rows already in prefix order
    (as the loader reads them) skip the sort.

    `on_progress(rows_done)` is called every `progress_every` rows of the CPU-heavy build
    passes: the daemon passes a cooperative yield (gevent.sleep(0)) so that building a
    million-prefix deck never pauses routing for long. dialplan cannot import gevent itself.
    """

    def __init__(self, *, carrier: str | None = None, version: object = None,
                 on_progress: Callable[[int], None] | None = None,
                 progress_every: int = 50_000):
        self.carrier = carrier
        self.version = version
        self._on_progress = on_progress
        self._every = progress_every
        self._keys = array("Q")
        self._slots = array("i")
        self._parents = array("i")   # computed as sorted rows arrive (see _advance_parents)
        self._sorted = True
        self._last = -1
        self._templates: list[Tariff] = []
        self._tariff_ids: dict[tuple, int] = {}
        self._windowed: dict[int, list[tuple]] = {}   # key -> [(from, to, tariff)]
        self._rows = 0

    def __len__(self) -> int:
        return self._rows

    def intern_tariff(self, rate_per_min: Decimal, connect_fee: Decimal = Decimal(0),
                      initial_increment: int = 60, subsequent_increment: int = 60,
                      description: str | None = None) -> int:
        """Index of this tariff in the deck's shared table, adding it when new."""
        ident = (rate_per_min, connect_fee, initial_increment, subsequent_increment,
                 description)
        found = self._tariff_ids.get(ident)
        if found is not None:
            return found
        if not (isinstance(rate_per_min, Decimal) and isinstance(connect_fee, Decimal)):
            raise TypeError("rate_per_min and connect_fee must be Decimal")
        if not (rate_per_min.is_finite() and rate_per_min >= 0
                and connect_fee.is_finite() and connect_fee >= 0):
            raise ValueError(f"rates must be finite and >= 0: {rate_per_min}, {connect_fee}")
        if initial_increment <= 0 or subsequent_increment <= 0:
            raise ValueError("billing increments must be > 0")
        self._templates.append(Tariff.of(rate_per_min, connect_fee, int(initial_increment),
                                         int(subsequent_increment), description))
        self._tariff_ids[ident] = len(self._templates) - 1
        return len(self._templates) - 1

    def add_prefix(self, prefix: str | bytes, tariff: int) -> None:
        """Fast path for a row with no effective window; `prefix` must be pre-validated
        digits (the loader reads them from a CHECKed column)."""
        key = int(prefix.ljust(MAX_DIGITS, b"0" if isinstance(prefix, bytes) else "0")) \
            * (_LEN_MASK + 1) + len(prefix)
        if key <= self._last:
            self._sorted = False
        self._last = key
        self._keys.append(key)
        self._slots.append(tariff)
        self._rows += 1

    def add_encoded(self, keys: array, tariffs: array) -> None:
        """Bulk fast path for the loader: `keys` already encoded as prefix_key() does
        (array 'Q'), `tariffs` from intern_tariff() (array 'i'), rows with no window."""
        if len(keys) != len(tariffs):
            raise ValueError("keys and tariffs differ in length")
        if not keys:
            return
        # C-speed order check: the database hands rows in prefix order, but nothing
        # guarantees it, so unordered input falls back to a sort in build().
        if keys[0] <= self._last or not all(map(lt, keys, islice(keys, 1, None))):
            self._sorted = False
        self._last = keys[-1]
        self._keys.extend(keys)
        self._slots.extend(tariffs)
        self._rows += len(keys)
        if self._sorted:
            # Done per chunk so that the loader overlaps it with the database's next chunk.
            _advance_parents(self._keys, self._parents, self._every, self._tick)
        self._tick(self._rows)

    def add(self, prefix: str, rate_per_min: Decimal, connect_fee: Decimal = Decimal(0),
            initial_increment: int = 60, subsequent_increment: int = 60,
            effective_from: datetime | None = None, effective_to: datetime | None = None,
            description: str | None = None) -> "RateDeckBuilder":
        _check_prefix(prefix)
        tariff = self.intern_tariff(rate_per_min, connect_fee, initial_increment,
                                    subsequent_increment, description)
        if effective_from is None and effective_to is None:
            self.add_prefix(prefix, tariff)
            return self
        start = None if effective_from is None else _aware(effective_from)
        end = None if effective_to is None else _aware(effective_to)
        if start is not None and end is not None and end <= start:
            raise ValueError(f"prefix {prefix}: effective_to {end} is not after {start}")
        self._windowed.setdefault(prefix_key(prefix), []).append((start, end, tariff))
        self._rows += 1
        return self

    def build(self) -> RateDeck:
        keys, slots, parents = self._keys, self._slots, self._parents
        if not self._sorted:
            keys, slots = self._sort(keys, slots)
            parents = array("i")
        self._check_unique(keys)
        windows: dict[int, tuple] = {}
        if self._windowed:
            count = len(keys)
            keys, slots, windows = self._merge_windows(keys, slots)
            if len(keys) != count:           # spliced-in prefixes shift every index after
                parents = array("i")
        _advance_parents(keys, parents, self._every, self._tick)
        deck = RateDeck(keys, parents, slots, self._templates, windows, self._rows,
                        self.carrier, self.version)
        self._keys, self._slots = array("Q"), array("i")    # the builder is spent
        return deck

    def _tick(self, done: int) -> None:
        if self._on_progress is not None:
            self._on_progress(done)

    def _sort(self, keys: array, slots: array) -> tuple[array, array]:
        order = sorted(range(len(keys)), key=keys.__getitem__)
        self._tick(len(keys))
        return array("Q", [keys[j] for j in order]), array("i", [slots[j] for j in order])

    def _check_unique(self, keys: array) -> None:
        # add_prefix marks the input unsorted on any key <= the previous one, so sorted
        # input has no repeats; after a sort a repeated open-ended prefix sits by its twin.
        if self._sorted:
            return
        for i in range(1, len(keys)):
            if keys[i] == keys[i - 1]:
                raise ValueError(f"prefix {self._prefix_of(keys[i])} has two open-ended rates")

    def _merge_windows(self, keys: array, slots: array) -> tuple[array, array, dict]:
        # Windowed prefixes are rare: splice the missing ones in with C-speed slices.
        new_keys = sorted(k for k in self._windowed if _find(keys, k) < 0)
        if new_keys:
            out_k, out_s, start = array("Q"), array("i"), 0
            for k in new_keys:
                pos = bisect_left(keys, k)
                out_k.extend(keys[start:pos])
                out_s.extend(slots[start:pos])
                out_k.append(k)
                out_s.append(-1)
                start = pos
            out_k.extend(keys[start:])
            out_s.extend(slots[start:])
            keys, slots = out_k, out_s
        windows = {}
        for k, rows in self._windowed.items():
            i = _find(keys, k)
            if slots[i] >= 0:              # the open-ended row becomes the fallback window
                rows = rows + [(None, None, slots[i])]
            starts = [r[0] for r in rows]
            if len(set(starts)) != len(starts):
                raise ValueError(f"prefix {self._prefix_of(k)} has two rates starting "
                                 "at the same effective_from")
            # Latest start first; None (open start) is the earliest.
            rows.sort(key=lambda r: (r[0] is not None, r[0] or datetime.min), reverse=True)
            windows[i] = tuple(rows)
            slots[i] = -1
        return keys, slots, windows

    @staticmethod
    def _prefix_of(key: int) -> str:
        length = key & _LEN_MASK
        return str((key >> _LEN_BITS) // _DIV[length]).zfill(length)


def _advance_parents(keys: array, parents: array, every: int,
                     tick: Callable[[int], None]) -> None:
    """Extend `parents` to cover all of `keys` (sorted, unique).

    The parent of entry i is the longest deck prefix that is a proper prefix of it: the
    nearest one among the ancestors of entry i-1 (i-1 itself included), so the walk starts
    there. Sorted keys guarantee padded(j) <= padded(i) for j < i, so "j is a prefix of i"
    is one subtraction and one comparison; a proper-prefix check needs no length test
    because an extension of i by zeros would sort after i."""
    div = _DIV
    start = len(parents)
    parents.frombytes(bytes(parents.itemsize * (len(keys) - start)))
    prev = keys[start - 1] if start else 0
    for i in range(start, len(keys)):
        key = keys[i]
        value = key >> _LEN_BITS
        j, kj = i - 1, prev
        while j >= 0:
            if value - (kj >> _LEN_BITS) < div[kj & _LEN_MASK]:
                break
            j = parents[j]
            kj = keys[j]
        parents[i] = j
        prev = key
        if i % every == 0 and i:
            tick(i)


def _find(keys: array, key: int) -> int:
    i = bisect_left(keys, key)
    return i if i < len(keys) and keys[i] == key else -1
