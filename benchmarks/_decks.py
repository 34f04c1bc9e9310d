"""Synthetic but realistic rate decks and dialled numbers for the LCR benchmarks.

Real decks are shaped by country codes: a few countries (NANP, UK, Germany, India …) carry
most prefixes, down to area-code and exchange level, while most countries have a handful.
Carriers overlap heavily but cut prefixes at different depths and price them differently.
Everything is seeded, so two runs measure the same decks.
"""
from __future__ import annotations

import random
from pathlib import Path

import phonenumbers

# Heavier weight = more prefixes and more traffic, roughly like a wholesale A-Z deck.
_BIG = {"1": 40, "44": 12, "49": 10, "91": 10, "33": 8, "39": 6, "34": 6, "86": 8,
        "55": 6, "52": 6, "7": 5, "81": 4, "61": 4, "234": 3, "62": 4, "63": 3, "20": 3}


def country_codes() -> list[tuple[str, int]]:
    """(calling code, weight) for every code phonenumbers knows (~215)."""
    codes = sorted(str(cc) for cc in phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
    return [(cc, _BIG.get(cc, 1)) for cc in codes]


def deck_prefixes(n: int, seed: int) -> list[str]:
    """`n` distinct prefixes of 1..10 digits, nested the way real decks are."""
    rng = random.Random(seed)
    codes = country_codes()
    ccs = [c for c, _ in codes]
    weights = [w for _, w in codes]
    out: set[str] = set(ccs)          # every deck covers each country at its code
    # Extension lengths: most rows sit at area-code and exchange depth (3..6 digits).
    ext_lengths = [1, 2, 3, 4, 5, 6, 7]
    ext_weights = [1, 3, 8, 12, 10, 6, 2]
    while len(out) < n:
        batch = rng.choices(ccs, weights, k=4096)
        lens = rng.choices(ext_lengths, ext_weights, k=4096)
        for cc, k in zip(batch, lens):
            k = min(k, 10 - len(cc))
            out.add(cc + str(rng.randrange(10 ** k)).zfill(k))
            if len(out) >= n:
                break
    return sorted(out)


def write_deck_csv(path: Path, n: int, seed: int) -> int:
    """Write one carrier's deck as a DESIGN §10 CSV; return the row count.

    Rates cluster per country (so the deck has thousands of distinct tariffs, like a real
    one) and differ per carrier through the seed. Amounts are integers of 1e-6 units,
    formatted as exact decimals (never through a float)."""
    rng = random.Random(seed * 7919 + 1)
    base: dict[str, int] = {}
    rows = 0
    with open(path, "w", encoding="utf-8") as out:
        out.write("prefix,rate_per_min,connect_fee,initial_increment,subsequent_increment,"
                  "description\n")
        buf = []
        for prefix in deck_prefixes(n, seed):
            cc = _country_of(prefix)
            if cc not in base:
                base[cc] = rng.randrange(200, 200000)          # 0.0002 .. 0.2 per minute
            # Mobile/premium ranges cost more: a per-prefix markup in 0.0001 steps.
            units = base[cc] + 100 * rng.randrange(0, 40)
            r = rng.random()
            fee = "0.01" if r < 0.1 else "0"
            inc = "60,60" if cc == "1" else ("1,1" if r < 0.55 else "60,6")
            buf.append(f"{prefix},{units // 1000000}.{units % 1000000:06d},{fee},{inc},"
                       f"Country {cc}\n")
            rows += 1
            if len(buf) >= 10000:
                out.write("".join(buf))
                buf.clear()
        out.write("".join(buf))
    return rows


_CODES_BY_LEN: list[set[str]] | None = None


def _country_of(prefix: str) -> str:
    global _CODES_BY_LEN
    if _CODES_BY_LEN is None:
        codes = [c for c, _ in country_codes()]
        _CODES_BY_LEN = [{c for c in codes if len(c) == k} for k in (3, 2, 1)]
    for group, k in zip(_CODES_BY_LEN, (3, 2, 1)):
        if prefix[:k] in group:
            return prefix[:k]
    return prefix[:1]


def random_numbers(count: int, seed: int) -> list[str]:
    """Dialled E.164 numbers (digits, no '+'), 11-12 digits, traffic weighted like decks."""
    rng = random.Random(seed)
    codes = country_codes()
    ccs = rng.choices([c for c, _ in codes], [w for _, w in codes], k=count)
    return [cc + str(rng.randrange(10 ** (11 - len(cc)), 10 ** (12 - len(cc) + 1) - 1))
            for cc in ccs]


def valid_destinations(count: int, seed: int) -> list[str]:
    """Dialled strings a GB tenant sends, all valid for phonenumbers (strict routing):
    half the demo's national and international patterns, half E.164 numbers around every
    region's example number (last digits varied) — so normalisation, policy and LCR all do
    their real work instead of refusing a malformed number early."""
    from switchd.demo_world import pick_destination
    rng = random.Random(seed)
    examples = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in (phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE):
            ex = phonenumbers.example_number_for_type(region, kind)
            if ex is not None:
                examples.append(phonenumbers.format_number(
                    ex, phonenumbers.PhoneNumberFormat.E164))
    out: list[str] = []
    while len(out) < count:
        if rng.random() < 0.5:
            out.append(pick_destination(rng))
            continue
        base = rng.choice(examples)
        cut = min(4, len(base) - 4)
        candidate = base[:-cut] + str(rng.randrange(10 ** cut)).zfill(cut)
        if phonenumbers.is_valid_number(phonenumbers.parse(candidate, None)):
            out.append(candidate)
    return out
