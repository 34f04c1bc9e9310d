"""The demo's sample world: one tenant, three carriers with different decks, a few DIDs.

Decks are small but shaped like real ones (country codes, then longer, dearer or cheaper
mobile and city prefixes) so that the cheapest carrier differs by destination, and one
carrier covers what the others do not.
"""
from __future__ import annotations

import random
from pathlib import Path

# The currency of the decks below (switchd itself does not convert: a deck's numbers are
# in whatever currency its carrier bills in).
CURRENCY = "EUR"

WORLD_TOML = """\
[[tenants]]
name = "acme"
accountcode = "acme"
default_region = "GB"
max_call_seconds = 3600
max_concurrent = 200
monthly_budget = "5000.00"
blocked_prefixes = ["44900", "44909"]   # premium rate
max_rate_per_min = "1.50"

[[carriers]]
name = "budgetel"
priority = 30
max_channels = 100
default_initial_increment = 60
default_subsequent_increment = 60
  [[carriers.gateways]]
  name = "budgetel_gw1"
  position = 1
  leg_timeout = 20

[[carriers]]
name = "globex"
priority = 20
max_channels = 100
default_initial_increment = 6
default_subsequent_increment = 6
  [[carriers.gateways]]
  name = "globex_gw1"
  position = 1
  [[carriers.gateways]]
  name = "globex_gw2"
  position = 2

[[carriers]]
name = "primo"
priority = 10
max_channels = 100
default_initial_increment = 1
default_subsequent_increment = 1
  [[carriers.gateways]]
  name = "primo_gw1"
  position = 1

[[dids]]
number = "+442079460100"
tenant = "acme"
destination_type = "extension"
destination = "1000"

[[dids]]
number = "+442079460101"
tenant = "acme"
destination_type = "sip_uri"
destination = "sip:support@pbx.acme.example"
"""

# carrier -> rows (prefix, rate_per_min, connect_fee, initial, subsequent)
DECKS: dict[str, list[tuple[str, str, str, int, int]]] = {
    "budgetel": [   # cheapest for UK and US; no Germany mobile
        ("44", "0.0090", "0", 60, 60), ("447", "0.0250", "0", 60, 60),
        ("1", "0.0060", "0", 60, 60), ("33", "0.0150", "0", 60, 60),
        ("49", "0.0200", "0", 60, 60),
    ],
    "globex": [     # cheapest for Germany and France mobile
        ("44", "0.0110", "0.0010", 6, 6), ("447", "0.0210", "0", 6, 6),
        ("1", "0.0075", "0", 6, 6), ("33", "0.0120", "0", 6, 6), ("336", "0.0300", "0", 6, 6),
        ("49", "0.0100", "0", 6, 6), ("4915", "0.0400", "0", 6, 6),
        ("4917", "0.0400", "0", 6, 6),
    ],
    "primo": [      # dearest, but covers everything including Japan
        ("44", "0.0150", "0", 1, 1), ("447", "0.0300", "0", 1, 1),
        ("1", "0.0100", "0", 1, 1), ("33", "0.0180", "0", 1, 1), ("336", "0.0350", "0", 1, 1),
        ("49", "0.0160", "0", 1, 1), ("4915", "0.0450", "0", 1, 1), ("4917", "0.0450", "0", 1, 1),
        ("81", "0.0500", "0", 1, 1),
    ],
}

# Destinations the demo dials, in the tenant's (GB) dialling habits: national and
# international forms both appear, so normalisation is exercised too.
DESTINATIONS = [
    "02079460{:03d}",        # London, national form
    "07400{:06d}",           # UK mobile, national form
    "+1212555{:04d}",        # New York
    "0033142{:06d}",         # Paris via 00
    "+3361234{:04d}",        # France mobile
    "+49301234{:04d}",       # Berlin
    "+4915123{:06d}",        # Germany mobile
    "+81312345{:03d}",       # Tokyo: only primo covers it
]


def write_decks(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for carrier, rows in DECKS.items():
        path = directory / f"{carrier}.csv"
        lines = ["prefix,rate_per_min,connect_fee,initial_increment,subsequent_increment"]
        lines += [",".join(map(str, row)) for row in rows]
        path.write_text("\n".join(lines) + "\n")
        paths[carrier] = path
    return paths


def write_world(directory: Path) -> Path:
    path = directory / "world.toml"
    path.write_text(WORLD_TOML)
    return path


def pick_destination(rng: random.Random) -> str:
    pattern = rng.choice(DESTINATIONS)
    width = int(pattern.split(":")[1].rstrip("d}"))
    return pattern.format(rng.randrange(10 ** width))
